"""Continued pretraining: a SimMIM model started from earlier weights (`pretrained=`), and when that
is allowed.

`load_pretrained_simmim` fills a freshly built SimMIM model from our pretraining runs and
checkpoints, transformers `Swinv2ForMaskedImageModeling` directories or official SimMIM checkpoints
— the encoder and the decoder — and from any other encoder we read (a transformers `Swinv2Model`, an
official or timm SwinV2, a fine-tuned classifier of ours), whose decoder then starts fresh. The
optimizer and the schedule always start fresh: this is a new run, unlike `resume`.

`pretrained_start` is the rule between the two: a run directory that holds a resumable checkpoint is
resumed, not restarted from `pretrained=`, unless the user says which.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info
from omegaconf import OmegaConf

from .. import ConfigError
from ..models import SimMIM
from ..weights import decoder_state_dict, find_resume_checkpoint, load_pretrained_encoder


def load_pretrained_simmim(model: SimMIM, source: str | Path) -> dict:
    """Load `source`'s encoder (and decoder, when it has one) into `model`; report what did not fit.

    The encoder goes through `weights.load_pretrained_encoder`: window-dependent buffers (position
    index, the continuous position bias' coordinate tables, shift masks) are rebuilt for `model`'s
    windows, so pretraining on at a new window size works when `model.pretrained_window_sizes` names
    the old one; tensors of another shape stay at their initialisation and are listed. The mask
    token is kept when the source has one (a pretraining run), else it is listed as missing. Returns
    `{"missing", "unexpected", "shape_mismatch", "decoder"}` (`decoder`: "loaded" or "fresh"); the
    summary is printed."""
    if not isinstance(model, SimMIM):
        raise TypeError(
            f"load_pretrained_simmim fills a SimMIM model, not a {type(model).__name__}"
        )
    report = load_pretrained_encoder(model.encoder, source)
    decoder = decoder_state_dict(source)
    own = model.decoder.state_dict()
    if decoder is None:
        report["decoder"] = "fresh"
        print(
            f"pretrained: {source} has no SimMIM decoder; the decoder starts from its "
            "initialisation"
        )
        return report
    mismatch = [k for k, v in decoder.items() if k in own and own[k].shape != v.shape]
    if mismatch:
        report["shape_mismatch"] = [*report["shape_mismatch"], *(f"decoder.{k}" for k in mismatch)]
        report["decoder"] = "fresh"
        shapes = ", ".join(
            f"{k} {tuple(decoder[k].shape)} vs {tuple(own[k].shape)}" for k in mismatch
        )
        print(
            f"pretrained: the decoder of {source} does not fit ({shapes}); it starts from its "
            "initialisation"
        )
        return report
    result = model.decoder.load_state_dict(decoder, strict=False)
    report["missing"] = [*report["missing"], *(f"decoder.{k}" for k in result.missing_keys)]
    report["unexpected"] = [
        *report["unexpected"],
        *(f"decoder.{k}" for k in result.unexpected_keys),
    ]
    report["decoder"] = "loaded"
    print(f"pretrained: decoder loaded from {source} ({len(decoder)} tensors)")
    return report


def _recorded_pretrained(run_dir: Path) -> str | None:
    """The `pretrained=` the run directory's last start recorded in its `config.yaml`, if any."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        return None
    value = OmegaConf.load(config).get("pretrained")
    return None if value is None else str(value)


def _same(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def pretrained_start(pretrained: str | None, resume: str, run_dir: str | Path) -> bool:
    """Whether this run starts from `pretrained` (loaded into the fresh model; new optimizer and
    schedule) — True — or not: no `pretrained=`, or a run started from it that is now resumed (a
    requeued job runs the same command, and its own checkpoint holds the weights since). Call it
    before the run's `config.yaml` is rewritten.

    Refused, naming both ways out: `pretrained=` with `resume=auto` and a run directory whose
    checkpoint was not started from that same `pretrained=` (which should win is the user's call),
    and `pretrained=` with an explicit `resume=PATH` (the checkpoint would overwrite the
    weights)."""
    if not pretrained:
        return False
    if resume == "never":
        return True
    if resume != "auto":
        raise ConfigError(
            f"pretrained={pretrained} and resume={resume} both name the weights to start from, "
            f"and resuming restores the model from {resume}. Give one: `resume=never "
            f"pretrained={pretrained}` to start a new run from the weights, or drop `pretrained=` "
            "to resume the checkpoint"
        )
    run_dir = Path(run_dir)
    ckpt = find_resume_checkpoint(run_dir)
    if ckpt is None:
        return True
    recorded = _recorded_pretrained(run_dir)
    if recorded is not None and _same(recorded, str(pretrained)):
        rank_zero_info(
            f"pretrained={pretrained}: this run started from it and has a checkpoint since; "
            f"resuming from {ckpt} (resume=never restarts from the weights)"
        )
        return False
    raise ConfigError(
        f"the run directory {run_dir} holds a resumable checkpoint ({ckpt.name}) and "
        f"pretrained={pretrained} was given. Say which: `resume=never pretrained={pretrained}` "
        "starts a new run from those weights (fresh optimizer and schedule; better in a new "
        "hydra.run.dir, since this one's checkpoints get replaced), or drop `pretrained=` to "
        f"resume the run from {ckpt}"
    )


__all__ = ["load_pretrained_simmim", "pretrained_start"]
