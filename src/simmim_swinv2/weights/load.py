"""Model weights from anything we or the peers save: the one place that tells formats apart
(`identify`, and `weights_format` its short answer), one `load_model`, and the encoder of any of
them for `pretrained=` (`encoder_state_dict`, `load_pretrained_encoder`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..distributed.zero import is_universal_checkpoint, is_zero_checkpoint
from ..models import encoder_of
from . import interop
from .meta import BUFFERS, Model
from .ours import READERS
from .runs import find_resume_checkpoint

# --------------------------------------------------------------------------------- formats
# what a weights path may be, for messages
EXPECTED = (
    "a run directory of ours (checkpoints/*.ckpt), a Lightning .ckpt, a DeepSpeed ZeRO checkpoint "
    "directory (*.ckpt/ with a `latest` file), our .safetensors with its .json "
    "(convert.save_model), a transformers directory (config.json), or an official SwinV2 / SimMIM "
    "or timm state dict (.pth/.pt/.bin/.safetensors)"
)
FORMATS = ("ours", "transformers", "official", "timm")  # what `identify` tells apart
IMPORTERS = {
    "transformers": interop.from_transformers,
    "official": interop.from_official,
    "timm": interop.from_timm,
}


@dataclass(frozen=True)
class Source:
    """What a weights path is: `format` (one of `FORMATS`), `reader` (for ours: a key of
    `ours.READERS` — `lightning`, `zero`, `safetensors`; else the format), `path` (the file or ZeRO
    directory to read: a run directory's checkpoint) and `what` (for messages)."""

    format: str
    reader: str
    path: Path
    what: str


def identify(source: str | Path, format: str = "auto") -> Source:
    """Tell what a weights path is: the one place that tells formats apart.

    Ours are recognised first: a ZeRO checkpoint directory, a run directory (its newest
    checkpoint, `_run_checkpoint`), a Lightning `.ckpt`, `save_model`'s `.safetensors` + `.json`;
    then a transformers `save_pretrained` directory; then any other weights file, official or timm
    told apart by its key names (read with `weights_only=True`, tensors not loaded).

    Args:
        source: a file or directory.
        format: "auto", or one of `FORMATS`: a foreign one skips detection, "ours" insists on ours.

    Returns:
        A `Source` (`format`, `reader`, `path` to read, `what` for messages). Anything else is
        refused (`FileNotFoundError`, `ValueError`) with the list of what is expected
        (`EXPECTED`).
    """
    if format not in ("auto", *FORMATS):
        raise ValueError(f"format={format!r}: use auto or one of {FORMATS}")
    path = Path(source)
    if format in IMPORTERS:
        return Source(format, format, path, f"{format} weights")
    if is_zero_checkpoint(path):
        return Source("ours", "zero", path, "DeepSpeed ZeRO checkpoint (consolidated)")
    if path.is_dir():
        if format == "auto" and (path / "config.json").is_file():
            return Source("transformers", "transformers", path, "transformers directory")
        if find_resume_checkpoint(path) is not None:
            ckpt = _run_checkpoint(path)
            return Source(
                "ours", identify(ckpt, "ours").reader, ckpt, f"run directory ({ckpt.name})"
            )
        raise FileNotFoundError(
            f"{path} is a directory with neither checkpoints/*.ckpt (a run of ours), a `latest` "
            f"file (a ZeRO checkpoint) nor config.json (transformers); expected {EXPECTED}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected {EXPECTED}")
    if path.suffix == ".ckpt":
        return Source("ours", "lightning", path, "Lightning checkpoint")
    if path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
        return Source("ours", "safetensors", path, "safetensors")
    if format == "ours":
        raise ValueError(
            f"{path} is not a checkpoint of ours (a .ckpt, a ZeRO directory, a run directory, or a "
            ".safetensors with its .json); leave format=auto to read other weights"
        )
    try:
        keys = interop.weight_keys(path)
    except Exception as err:  # not a pickle / safetensors at all, or one that needs a full unpickle
        raise ValueError(
            f"cannot read {path} as weights ({type(err).__name__}: {err}); expected {EXPECTED}"
        ) from err
    # official: SimMIM's `encoder.` prefix, `rpe_mlp` names, patch merging at a stage's end; timm:
    # our names
    if any(k.startswith(("encoder.", "layers.0.downsample")) or "rpe_mlp" in k for k in keys):
        return Source("official", "official", path, "official checkpoint")
    if "patch_embed.proj.weight" in keys:
        return Source("timm", "timm", path, "timm state dict")
    raise ValueError(
        f"{path} holds no SwinV2 weights we know (no patch_embed.proj.weight, no SimMIM `encoder.` "
        f"keys; first keys: {keys[:5]}); expected {EXPECTED}"
    )


def weights_format(source: str | Path) -> str:
    """What a weights path is, in one word.

    Args:
        source: a file or directory, as `identify` takes it.

    Returns:
        One of `FORMATS` (`identify(source).format`).
    """
    return identify(source).format


def _run_checkpoint(run_dir: Path) -> Path:
    """The checkpoint of a run directory to read weights from: the newest
    (`find_resume_checkpoint`), but for a resharded universal copy (`simmim_swinv2.reshard`) the
    checkpoint it was made from, which holds the same weights in a form `load_model` reads."""
    found = find_resume_checkpoint(run_dir)
    if found is not None and is_universal_checkpoint(found):
        plain = [
            p for p in run_dir.glob("checkpoints/*.ckpt") if p.is_file() or is_zero_checkpoint(p)
        ]
        found = max(plain, key=lambda p: p.stat().st_mtime) if plain else None
    if found is None:
        raise FileNotFoundError(f"no checkpoints/*.ckpt in run directory {run_dir}")
    return found


# --------------------------------------------------------------------------------- loading
def load_model(source: str | Path, format: str = "auto", **config_overrides) -> Model:
    """A whole model (classifier, SimMIM or encoder) from anything `identify` accepts.

    Ours — a run directory (its newest checkpoint), a Lightning `.ckpt`, a ZeRO `.ckpt/`
    directory, `save_model`'s safetensors — are rebuilt from the `ModelMeta` saved in them;
    transformers directories, official and timm checkpoints go through `convert.from_*`.

    Args:
        source: the file or directory.
        format: "auto" (detect), or one of `FORMATS` to name it.
        **config_overrides: `SwinV2Config` fields for what foreign files do not record (e.g.
            `window_size`, `img_size`); refused for ours, which record their own config.

    Returns:
        The model with its weights loaded strictly, on the CPU.
    """
    src = identify(source, format)
    if src.format in IMPORTERS:
        return IMPORTERS[src.format](src.path, **config_overrides)
    if config_overrides:
        raise ValueError(
            f"{src.path} is a checkpoint of ours and records its own config; "
            f"{sorted(config_overrides)} apply to official / timm / transformers weights only"
        )
    sd, meta = READERS[src.reader](src.path)
    if meta is None:
        raise ValueError(
            f"{src.path} carries no model description (not written by simmim_swinv2's tasks); "
            "for other weights use simmim_swinv2.convert"
        )
    return meta.load(sd, f"{src.path} ({src.what})")


def encoder_state_dict(source: str | Path) -> tuple[dict, str]:
    """The encoder weights of anything `identify` accepts.

    Args:
        source: a run directory of ours (its newest checkpoint), a Lightning `.ckpt` or ZeRO
            directory (pretraining or fine-tuning), our `.safetensors`, a transformers directory,
            an official SimMIM / Swin-Transformer checkpoint or a timm state dict; pickles load
            with `weights_only=True`.

    Returns:
        `(state_dict, what)`: the encoder's weights in our module names, no prefix (decoder and
        head left out; official checkpoints keep their `relative_coords_table` buffers, which
        `load_pretrained_encoder` reads), and what the source was, for messages.
    """
    src = identify(source)
    if src.format == "transformers":
        return encoder_of(interop.from_transformers(src.path)).state_dict(), src.what
    if src.format == "official":
        return interop.official_to_ours(interop._read_any(src.path))[0], src.what
    if src.format == "timm":
        return interop.timm_to_ours(interop._read_any(src.path))[0], src.what
    sd = READERS[src.reader](src.path)[0]
    if any(k.startswith("encoder.") for k in sd):
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    return sd, src.what


def decoder_state_dict(source: str | Path) -> dict[str, torch.Tensor] | None:
    """The SimMIM decoder's weights of a source: official SimMIM checkpoints through their key
    map, ours and transformers directories through `load_model`.

    Args:
        source: anything `identify` accepts.

    Returns:
        `{"0.weight", "0.bias"}` (the 1x1 conv), or None when it has none (an encoder, a
        classifier, timm weights).
    """
    src = identify(source)
    if src.format == "timm":
        return None
    if src.format == "official":
        return interop.official_to_ours(interop._read_any(src.path))[2] or None
    model = load_model(source)
    decoder = getattr(model, "decoder", None)
    return decoder.state_dict() if decoder is not None else None


def _pretrained_window_note(encoder: torch.nn.Module, sd: dict) -> str | None:
    """A line for the load summary when the source's position tables (official checkpoints save
    them) were normalised for other windows than `encoder` normalises by (`pretrained_window_sizes`,
    else its own clamped windows): a new window size then changes the position bias unless the
    config names the old window."""
    from .keys import recorded_pretrained_windows

    cfg = getattr(encoder, "cfg", None)
    try:
        recorded = recorded_pretrained_windows(sd)
    except ValueError as err:  # the tables are rebuilt anyway: say so, do not stop the fine-tune
        return f"note: {err}"
    if cfg is None or not recorded:
        return None
    windows = list(cfg.stage_windows())
    ours = [p or w for p, w in zip(cfg.pretrained_window_sizes, windows)]
    if all(ours[s] == w for s, w in recorded.items() if s < len(ours)):
        return None
    suggest = [
        p if s not in recorded else 0 if recorded[s] == w else recorded[s]
        for s, (p, w) in enumerate(zip(cfg.pretrained_window_sizes, windows))
    ]
    return (
        "note: the source's position tables normalise offsets by windows "
        f"{[recorded.get(s, '-') for s in range(len(ours))]}, this model by {ours} "
        f"(pretrained_window_sizes={list(cfg.pretrained_window_sizes)}); to keep the source's "
        f"position bias set model.pretrained_window_sizes={suggest}"
    )


def load_pretrained_encoder(encoder: torch.nn.Module, source: str | Path) -> dict[str, list[str]]:
    """Load pretrained weights into an encoder, printing what did not fit.

    The mask token is pretraining-only; window-dependent buffers are rebuilt for this encoder's
    windows, so a new window size works as long as the config's `pretrained_window_sizes` names
    the pretraining window (the summary notes when an official source's tables say otherwise: the
    config decides, since a fine-tune at a new window sets it on purpose). Tensors of another
    shape stay at their initialisation.

    Args:
        encoder: the `SwinV2Encoder` to load into, in place.
        source: anything `identify` accepts (`encoder_state_dict`).

    Returns:
        `{"missing", "unexpected", "shape_mismatch"}`: lists of key names. No tensor that fits
        raises `ValueError`.
    """
    sd, kind = encoder_state_dict(source)
    note = _pretrained_window_note(encoder, sd)
    own = encoder.state_dict()
    skipped_shape = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    sd = {k: v for k, v in sd.items() if k not in skipped_shape and not k.endswith(BUFFERS)}
    if getattr(encoder, "mask_token", None) is None:
        sd.pop("mask_token", None)
    result = encoder.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(BUFFERS)]
    report = {
        "missing": missing,
        "unexpected": list(result.unexpected_keys),
        "shape_mismatch": skipped_shape,
    }
    loaded = len(sd) - len(result.unexpected_keys)
    if loaded == 0:
        raise ValueError(
            f"no encoder weights of {source} ({kind}) fit this model: is it a SwinV2 of the same "
            f"variant? unexpected keys: {list(result.unexpected_keys)[:5]}"
        )
    print(  # once, in a command's output and in a notebook alike
        f"pretrained: {loaded} tensors from {source} ({kind}); missing {len(missing)}, unexpected "
        f"{len(report['unexpected'])}, shape mismatch {len(skipped_shape)}"
        + (f"\n  missing: {missing}" if missing else "")
        + (f"\n  unexpected: {report['unexpected']}" if report["unexpected"] else "")
        + (f"\n  shape mismatch (left at init): {skipped_shape}" if skipped_shape else "")
        + (f"\n  {note}" if note else "")
    )
    return report
