"""DeepSpeed ZeRO checkpoint directories: what they are, who wrote them, and their weights in one
process.

A ZeRO checkpoint is a directory (`*.ckpt/`) of per-rank shards: `latest` names a tag folder holding
`*model_states.pt` (Lightning's client state, DeepSpeed's config, the half-precision module) and
`*optim_states.pt` (fp32 master weights and Adam moments, partitioned). A *universal* one
(`python -m simmim_swinv2.reshard`) has `latest_universal` and one `zero/<parameter>/` folder per
parameter.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# Lightning wraps the LightningModule (`_forward_module.`), our tasks hold the network as `model.`.
_PREFIXES = ("_forward_module.", "module.", "model.")


def is_zero_checkpoint(path: str | Path) -> bool:
    """A complete DeepSpeed (ZeRO) checkpoint directory: its `latest` file names a tag folder
    holding model and optimizer states (DeepSpeed writes `latest` last, so an interrupted save is
    never picked)."""
    path = Path(path)
    latest = path / "latest"
    if not (path.is_dir() and latest.is_file()):
        return False
    tag = path / latest.read_text().strip()
    return any(tag.glob("*model_states.pt")) and any(tag.glob("*optim_states.pt"))


def zero_model_states(ckpt_dir: str | Path) -> dict:
    """The model-states file of a ZeRO checkpoint directory (every rank's copy holds Lightning's
    client state and DeepSpeed's config). DeepSpeed pickles non-tensor state into it (config
    objects, NumPy RNG): a full unpickle, memory-mapped — for checkpoints of one's own runs."""
    ckpt_dir = Path(ckpt_dir)
    tag = ckpt_dir / (ckpt_dir / "latest").read_text().strip()
    states = sorted(tag.glob("*model_states.pt"))[0]
    return torch.load(states, map_location="cpu", weights_only=False, mmap=True)


def is_universal_checkpoint(path: str | Path) -> bool:
    """A DeepSpeed universal checkpoint directory (`simmim_swinv2.reshard` writes them):
    `latest_universal` names a folder with the model states and one `zero/<parameter>/` folder per
    parameter; loads on any world size."""
    path = Path(path)
    latest = path / "latest_universal"
    if not (path.is_dir() and latest.is_file()):
        return False
    tag = path / latest.read_text().strip()
    return any(tag.glob("*model_states.pt")) and (tag / "zero").is_dir()


def zero_checkpoint_world_size(path: str | Path) -> int | None:
    """How many data-parallel processes wrote a ZeRO checkpoint directory (None for anything
    else)."""
    if not is_zero_checkpoint(path):
        return None
    tag = Path(path) / (Path(path) / "latest").read_text().strip()
    ranks = {
        int(m.group(1))
        for f in tag.glob("*optim_states.pt")
        if (m := re.search(r"zero_pp_rank_(\d+)_", f.name))
    }
    return max(ranks) + 1 if ranks else None


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    return key


def zero_state_dict(ckpt_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Consolidation: (fp32 state dict with our module names — `encoder.…`, `decoder.…`/`head.…` —,
    the `simmim_swinv2` model description the task saved) from a ZeRO checkpoint directory, on one
    CPU process whatever world size wrote it. The fp32 master weights are rebuilt from the optimizer
    shards (DeepSpeed's `get_fp32_state_dict_from_zero_checkpoint`), not from the bf16 module
    copies."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt_dir = Path(ckpt_dir)
    if not is_zero_checkpoint(ckpt_dir):
        raise FileNotFoundError(
            f"{ckpt_dir} is not a complete DeepSpeed checkpoint directory (no `latest` file "
            "naming a folder of *model_states.pt / *optim_states.pt)"
        )
    sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir))
    sd = {_strip(k): v.float() if v.is_floating_point() else v for k, v in sd.items()}
    return sd, zero_model_states(ckpt_dir).get("simmim_swinv2")
