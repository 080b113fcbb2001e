"""The disk a run's checkpoints take: how many the checkpoint callbacks keep under their retention
(`conf/callbacks/default.yaml`) and the bytes of each, for the plan (`distributed.planning`)."""

from __future__ import annotations

from dataclasses import dataclass


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
