"""Our own weight files, read and written: a Lightning `.ckpt`, a ZeRO `*.ckpt/` directory (through
`distributed.zero`), and our safetensors export (`<name>.safetensors` + `<name>.json`,
`save_model`). Each reader returns the state dict in our module names (`encoder.…`, `decoder.…` /
`head.…`, or a bare encoder's) and the `ModelMeta` saved with it (None for a Lightning checkpoint
not written by our tasks). Which reader a path needs is `load.identify`'s to decide."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..distributed.zero import zero_state_dict
from .meta import BUFFERS, CHECKPOINT_KEY, Model, ModelMeta

Read = tuple[dict[str, torch.Tensor], ModelMeta | None]


def _meta(d: dict | None, source: Path) -> ModelMeta | None:
    return None if d is None else ModelMeta.from_dict(d, f"{source} (model description)")


def read_lightning(path: Path) -> Read:
    """A Lightning `.ckpt` (read with `weights_only=True`); our tasks hold the network as
    `model.`."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sd = ckpt.get("state_dict", ckpt)
    if any(k.startswith("model.") for k in sd):
        sd = {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
    return sd, _meta(ckpt.get(CHECKPOINT_KEY), path)


def read_zero(path: Path) -> Read:
    """A ZeRO checkpoint directory, consolidated in memory (the fp32 master weights,
    `distributed.zero`)."""
    sd, meta = zero_state_dict(path)
    return sd, _meta(meta, path)


def read_safetensors(path: Path) -> Read:
    """`save_model`'s export: the safetensors and the `.json` beside it."""
    meta_file = path.with_suffix(".json")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"cannot read {meta_file}, the model description of {path} ({err})"
        ) from err
    return load_file(str(path)), _meta(meta, meta_file)


READERS = {"lightning": read_lightning, "zero": read_zero, "safetensors": read_safetensors}


def save_model(model: Model, path: str | Path) -> None:
    """Our own export; `load_model(path)` is its inverse.

    Args:
        model: a `SwinV2Encoder`, `SimMIM` or `SwinV2Classifier`.
        path: the `.safetensors` file to write (its folder is created): the model's state dict,
            rebuilt buffers left out; its `ModelMeta` goes beside it, `<name>.json`.
    """
    path = Path(path)
    meta = ModelMeta.of(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {
        k: v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not k.endswith(BUFFERS)
    }
    save_file(sd, str(path), metadata={"format": "pt"})
    path.with_suffix(".json").write_text(json.dumps(meta.to_dict(), indent=2, default=list) + "\n")
