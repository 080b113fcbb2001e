"""The disk a run's checkpoints take: how many the checkpoint callbacks keep under their retention
(`conf/callbacks/default.yaml`) and the bytes of each, for the plan (`distributed.planning`)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3


def size_text(nbytes: float) -> str:
    """`nbytes` in GiB, or in MiB below one GiB."""
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / 2**20:.1f} MiB"


@dataclass(frozen=True)
class CheckpointPlan:
    """Disk taken by a run's checkpoints under the retention of `conf/callbacks/default.yaml`."""

    bytes_each: float
    bytes_per_param: int
    kept: tuple[tuple[str, int], ...]  # (what, how many) at the end of the run, at most

    @property
    def count(self) -> int:
        return sum(n for _, n in self.kept)

    @property
    def total_bytes(self) -> float:
        return self.count * self.bytes_each


def checkpoint_bytes_per_param(*, deepspeed: bool, half: bool) -> int:
    """Bytes per parameter of one checkpoint with AdamW. Lightning's (DDP, one device): the fp32
    weights (AMP keeps them fp32) + the two fp32 moments, 4 + 8 = 12 (half weights and moments under
    16-true / bf16-true: 2 + 4 = 6). DeepSpeed's: the half-precision module weights + the fp32
    master weights and moments, 2 + 4 + 8 = 14."""
    if deepspeed:
        return 14
    return 6 if half else 12


def checkpoint_plan(cfg, params: int, *, deepspeed: bool, half: bool) -> CheckpointPlan | None:
    """What the checkpoint callbacks of `cfg.callbacks` keep, at most, by the end of
    `trainer.max_epochs`, for `params` parameters saved by DeepSpeed or Lightning (`half`: a
    16-true / bf16-true run)."""
    callbacks = cfg.get("callbacks") or {}
    per_param = checkpoint_bytes_per_param(deepspeed=deepspeed, half=half)
    epochs = int(cfg.trainer.get("max_epochs") or 1)
    kept: list[tuple[str, int]] = []
    for name, node in callbacks.items():
        target = str((node or {}).get("_target_", ""))
        if not target.endswith(("ModelCheckpoint", "WallClockCheckpoint")):
            continue
        wall_clock = target.endswith("WallClockCheckpoint")  # last.ckpt only
        top_k, every = (
            int(node.get("save_top_k", 0 if wall_clock else 1)),
            node.get("every_n_epochs") or 0,
        )
        if top_k != 0 and every:
            n = epochs // int(every) if top_k < 0 else min(top_k, epochs // int(every))
            label = (
                f"every {every} epochs"
                if top_k < 0
                else f"best {top_k}"
                if node.get("monitor") not in (None, "step")
                else f"newest {top_k}"
            )
            if n:
                kept.append((f"{label} ({name})", n))
        if node.get("save_last", wall_clock) and not any(
            what.startswith("last.ckpt") for what, _ in kept
        ):
            kept.append(("last.ckpt", 1))
    if not kept:
        return None
    if callbacks.get("preemption") is not None:
        kept.append(("preemption save (hpc_ckpt)", 1))
    return CheckpointPlan(
        bytes_each=float(per_param * params), bytes_per_param=per_param, kept=tuple(kept)
    )


def short_of_disk(plan: CheckpointPlan | None, run_dir: str | Path) -> str | None:
    """Why the checkpoints of `plan` may not fit where the run writes them, or None: what the
    retention keeps at most, and one more while a save is written, against the free space of the
    run directory's file system plus what its checkpoints take now (a resumed run replaces them)."""
    if plan is None:
        return None
    run_dir = Path(run_dir)
    probe = run_dir
    while not probe.exists():  # a new run: its directory is not made yet
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    ours = [*run_dir.glob("hpc_ckpt_*"), *(run_dir / "checkpoints").rglob("*")]
    have = sum(f.stat().st_size for f in ours if f.is_file() and not f.is_symlink())
    need = plan.total_bytes + plan.bytes_each
    if need <= free + have:
        return None
    return (
        f"this run's checkpoints may take {size_text(need)} ({plan.count} kept at most x "
        f"{size_text(plan.bytes_each)}, + one while a save is written) but the file system of "
        f"{run_dir} has {size_text(free)} free (+ {size_text(have)} in its checkpoints now): "
        "a save will fail when it fills (the checkpoints before it stay intact). Keep fewer "
        "(callbacks.checkpoint.save_top_k=1, callbacks.checkpoint_keep=null) or give hydra.run.dir "
        "a larger disk; `python -m simmim_swinv2.plan <overrides>` lists what is kept."
    )
