"""Checkpoints of our own runs: atomic writes, and finding the checkpoint to resume from.

(Weights from other systems — transformers, official, timm — are `convert`'s.)
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)
_REBUILT = ("relative_position_index", "relative_coords_table", "attn_mask", "k_bias")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<name>.tmp-<pid>` beside the target, fsyncs it, then renames it over the target: a kill
    mid-save leaves the previous checkpoint intact and no partial file under the real name. (Lightning's
    own save stages the file in /tmp and moves it, which is a copy, not a rename, when the run directory is on
    another file system, as on most clusters.) Remote URLs fall back to Lightning's save."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def is_zero_checkpoint(path: str | Path) -> bool:
    """A complete DeepSpeed (ZeRO) checkpoint directory: its `latest` file names a tag folder holding model and
    optimizer states (DeepSpeed writes `latest` last, so an interrupted save is never picked)."""
    path = Path(path)
    latest = path / "latest"
    if not (path.is_dir() and latest.is_file()):
        return False
    tag = path / latest.read_text().strip()
    return any(tag.glob("*model_states.pt")) and any(tag.glob("*optim_states.pt"))


def zero_checkpoint(source: str | Path) -> Path:
    """`source` if it is a ZeRO checkpoint directory, else the newest checkpoint of the run directory `source`
    when that is one."""
    source = Path(source)
    if is_zero_checkpoint(source):
        return source
    found = find_resume_checkpoint(source)
    if found is None or not is_zero_checkpoint(found):
        raise FileNotFoundError(f"{source}: neither a ZeRO checkpoint directory nor a run directory whose newest "
                                f"checkpoint is one (newest: {found})")
    return found


def zero_model_states(ckpt_dir: str | Path) -> dict:
    """The model-states file of a ZeRO checkpoint directory (every rank's copy holds Lightning's client state and
    DeepSpeed's config). DeepSpeed pickles non-tensor state into it (config objects, NumPy RNG): a full
    unpickle, memory-mapped — for checkpoints of one's own runs."""
    ckpt_dir = Path(ckpt_dir)
    tag = ckpt_dir / (ckpt_dir / "latest").read_text().strip()
    states = sorted(tag.glob("*model_states.pt"))[0]
    return torch.load(states, map_location="cpu", weights_only=False, mmap=True)


def is_universal_checkpoint(path: str | Path) -> bool:
    """A DeepSpeed universal checkpoint directory (`simmim_swinv2.reshard` writes them): `latest_universal` names
    a folder with the model states and one `zero/<parameter>/` folder per parameter; loads on any world size."""
    path = Path(path)
    latest = path / "latest_universal"
    if not (path.is_dir() and latest.is_file()):
        return False
    tag = path / latest.read_text().strip()
    return any(tag.glob("*model_states.pt")) and (tag / "zero").is_dir()


def zero_checkpoint_world_size(path: str | Path) -> int | None:
    """How many data-parallel processes wrote a ZeRO checkpoint directory (None for anything else)."""
    if not is_zero_checkpoint(path):
        return None
    tag = Path(path) / (Path(path) / "latest").read_text().strip()
    ranks = {int(m.group(1)) for f in tag.glob("*optim_states.pt")
             if (m := re.search(r"zero_pp_rank_(\d+)_", f.name))}
    return max(ranks) + 1 if ranks else None


def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory: `checkpoints/last.ckpt` if present, else the most
    recently written `checkpoints/*.ckpt` — unless a resharded universal copy (`simmim_swinv2.reshard`) in
    `checkpoints/`, or a preemption's `hpc_ckpt_<n>.ckpt` in the run directory itself, is newer. Temporary files
    of an interrupted save are never picked. A checkpoint is a file, or, under DeepSpeed, a directory
    (`is_zero_checkpoint`, `is_universal_checkpoint`)."""
    run_dir = Path(run_dir)

    def complete(p: Path) -> bool:
        return p.is_file() or is_zero_checkpoint(p) or is_universal_checkpoint(p)

    def written(p: Path) -> float:
        if p.is_dir():
            return max((p / n).stat().st_mtime for n in ("latest", "latest_universal") if (p / n).is_file())
        return p.stat().st_mtime

    last = run_dir / "checkpoints" / "last.ckpt"
    regular = [p for p in run_dir.glob("checkpoints/*.ckpt") if complete(p)]
    if complete(last):  # last.ckpt, unless a universal copy (simmim_swinv2.reshard) is newer
        regular = [last, *(p for p in regular if is_universal_checkpoint(p))]
    best = max(regular, key=written) if regular else None
    hpc = [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if complete(p)]
    if hpc and (best is None or max(map(written, hpc)) > written(best)):
        best = max(hpc, key=written)
    return best


# --------------------------------------------------------------------------------- pretrained weights
def _from_lightning(path: Path) -> dict:
    if path.is_dir():  # a ZeRO checkpoint: consolidated in memory
        from .consolidate import zero_state_dict

        return zero_state_dict(path)[0]
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt)
    return {k.removeprefix("model."): v for k, v in sd.items()}


def encoder_state_dict(source: str | Path) -> tuple[dict, str]:
    """Encoder weights (our module names, no prefix) from anything we or the peers save, and what it was:

    - a run directory of ours (its newest checkpoint) or a Lightning `.ckpt` (pretraining or fine-tuning);
    - our exported `.safetensors` (convert.save_model), or a bare encoder state dict in safetensors;
    - a transformers `save_pretrained` directory (Swinv2Model / ForMaskedImageModeling / ForImageClassification);
    - an official SimMIM / Swin-Transformer checkpoint or a timm state dict (`.pth`/`.pt`/`.bin`).

    Decoder and head weights are left out; pickles load with `weights_only=True`."""
    from . import convert

    path = Path(source)
    if is_zero_checkpoint(path):
        sd, kind = _from_lightning(path), "DeepSpeed ZeRO checkpoint (consolidated)"
    elif path.is_dir():
        if (path / "config.json").is_file():
            model = convert.from_transformers(path)
            encoder = model if isinstance(model, convert.SwinV2Encoder) else model.encoder
            return encoder.state_dict(), "transformers directory"
        ckpt = find_resume_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(f"{path} is a directory with neither config.json (transformers) nor "
                                    "checkpoints/*.ckpt (a run of ours)")
        sd, kind = _from_lightning(ckpt), f"run directory ({ckpt.name})"
    elif not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} not found")
    elif path.suffix == ".ckpt":
        sd, kind = _from_lightning(path), "Lightning checkpoint"
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd, kind = load_file(str(path)), "safetensors"
    else:
        raw = convert._read_any(path)
        if convert._guess_format(raw) == "official":
            return convert.official_to_ours(raw)[0], "official checkpoint"
        return convert.timm_to_ours(raw)[0], "timm state dict"
    if any(k.startswith("encoder.") for k in sd):
        sd = {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}
    return sd, kind


def load_pretrained_encoder(encoder: torch.nn.Module, source: str | Path) -> dict[str, list[str]]:
    """Load pretrained weights into `encoder`, reporting what did not fit. The mask token is pretraining-only;
    window-dependent buffers are rebuilt for this encoder's windows, so a new window size works as long as the
    config's `pretrained_window_sizes` names the old one."""
    sd, kind = encoder_state_dict(source)
    own = encoder.state_dict()
    skipped_shape = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    sd = {k: v for k, v in sd.items() if k not in skipped_shape and not k.endswith(_REBUILT)}
    if getattr(encoder, "mask_token", None) is None:
        sd.pop("mask_token", None)
    result = encoder.load_state_dict(sd, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(_REBUILT)]
    report = {"missing": missing, "unexpected": list(result.unexpected_keys), "shape_mismatch": skipped_shape}
    loaded = len(sd) - len(result.unexpected_keys)
    if loaded == 0:
        raise ValueError(f"no encoder weights of {source} ({kind}) fit this model: is it a SwinV2 of the same "
                         f"variant? unexpected keys: {list(result.unexpected_keys)[:5]}")
    log.info("loaded %d encoder tensors from %s (%s); missing %s, unexpected %s, shape mismatch %s",
             loaded, source, kind, missing, report["unexpected"], skipped_shape)
    print(f"pretrained: {loaded} tensors from {source} ({kind}); missing {len(missing)}, unexpected "
          f"{len(report['unexpected'])}, shape mismatch {len(skipped_shape)}"
          + (f"\n  missing: {missing}" if missing else "")
          + (f"\n  unexpected: {report['unexpected']}" if report["unexpected"] else "")
          + (f"\n  shape mismatch (left at init): {skipped_shape}" if skipped_shape else ""))
    return report


def load_model(source: str | Path):
    """A whole model (classifier, SimMIM or encoder) from a checkpoint of ours (Lightning `.ckpt` file, ZeRO
    `.ckpt` directory, or a run directory), our safetensors export, or a transformers directory."""
    from . import convert
    from .models import SimMIM, SwinV2Classifier, SwinV2Config, SwinV2Encoder

    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file():
        return convert.from_transformers(path)
    if path.suffix == ".safetensors":
        return convert.load_model(path)
    if path.is_dir() and not is_zero_checkpoint(path):
        found = find_resume_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoints/*.ckpt in run directory {path}")
        path = found
    if is_zero_checkpoint(path):
        from .consolidate import zero_state_dict

        sd, meta = zero_state_dict(path)
    elif not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = ckpt.get("simmim_swinv2")
        sd = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if meta is None:
        raise ValueError(f"{path} carries no model description (not written by simmim_swinv2's tasks); "
                         "for other weights use simmim_swinv2.convert")
    encoder = SwinV2Encoder(SwinV2Config.from_dict(meta["config"]))
    if meta["kind"] == "SwinV2Classifier":
        id2label = {int(k): v for k, v in meta["id2label"].items()}
        model = SwinV2Classifier(encoder, len(id2label), id2label=id2label)
    elif meta["kind"] == "SimMIM":
        model = SimMIM(encoder)
    else:
        model = encoder
    result = model.load_state_dict(sd, strict=False)
    bad = [k for k in result.missing_keys if not k.endswith(_REBUILT)] + list(result.unexpected_keys)
    if bad:
        raise ValueError(f"{path}: checkpoint does not match its own model description: {bad[:8]}")
    return model
