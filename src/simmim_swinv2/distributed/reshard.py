"""Resharding: a ZeRO-1/2 checkpoint made into a DeepSpeed *universal* checkpoint (one file per
parameter for the fp32 weights and each optimizer state), which any world size loads. The command is
`python -m simmim_swinv2.reshard`.

From an end-of-epoch checkpoint the data go on exactly; from a mid-epoch one (a preemption's) the
new world skips as many batches per process as the old one trained, so until that epoch ends some
samples repeat and others are left out. DeepSpeed's own converter
(`deepspeed.checkpoint.ds_to_universal`) does the work; this lays its output out as Lightning loads
it (`latest_universal` naming the folder).
"""

from __future__ import annotations

import shutil
from argparse import Namespace
from pathlib import Path

from .zero import is_universal_checkpoint, is_zero_checkpoint, zero_model_states

# deepspeed/runtime/zero/stage3.py, load_hp_checkpoint_state_from_checkpoint_dir_stage3 (DeepSpeed
# 0.19.8)
STAGE3_PROBLEM = (
    "DeepSpeed's ZeRO-3 universal loader gives every optimizer parameter group the first group's "
    "hyperparameters, which would silently put weight decay on the no-decay group and flatten "
    "layer-wise LR decay; ZeRO-1 and ZeRO-2 checkpoints reshard correctly"
)


def zero_stage(ckpt_dir: str | Path) -> int:
    """The ZeRO stage a checkpoint directory was written with (from the DeepSpeed config it
    records)."""
    config = zero_model_states(ckpt_dir)["ds_config"]
    return int(config.get("zero_optimization", {}).get("stage", 0))


def to_universal(source: str | Path, out: str | Path | None = None, workers: int = 1) -> Path:
    """Convert the ZeRO checkpoint `source` (a `*.ckpt/` directory) into a
    universal checkpoint directory `out` (default: beside it, `<name>-universal.ckpt`). Returns
    `out`. `workers` > 1 forks that many processes for DeepSpeed's converter: from a fresh process
    only (the command line), as a fork of one already running torch threads can deadlock."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    source = Path(source)
    if not is_zero_checkpoint(source):  # (a universal checkpoint needs no resharding)
        raise FileNotFoundError(
            f"{source} is not a ZeRO checkpoint directory (*.ckpt/ with a `latest` file)"
        )
    stage = zero_stage(source)
    if stage == 3:
        raise ValueError(
            f"{source} is a ZeRO-3 checkpoint: {STAGE3_PROBLEM}. Resume it on its original number "
            "of processes, or consolidate it (python -m simmim_swinv2.consolidate) and start a "
            "new run from the weights"
        )
    out = Path(out) if out is not None else source.with_name(f"{source.stem}-universal.ckpt")
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or name another output directory")
    tag = (source / "latest").read_text().strip()
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    ds_to_universal(
        Namespace(
            input_folder=str(source / tag),
            output_folder=str(partial / tag),
            num_extract_workers=workers,
            num_merge_workers=workers,
            keep_temp_folder=False,
            strict=True,
            inject_missing_state=True,
        )
    )
    # what DeepSpeed's load_checkpoint reads with load_universal
    (partial / "latest_universal").write_text(tag)
    partial.rename(out)  # complete or absent
    assert is_universal_checkpoint(out)
    print(
        f"resharded {source} -> {out} (universal: loads on any number of processes; resume=auto "
        "picks it when it is the newest checkpoint of the run, or pass resume=" + str(out) + ")"
    )
    return out
