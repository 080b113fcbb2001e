"""Checkpoints of our own runs: written atomically, and found again in a run directory (what `resume=auto`, the
exports and `pretrained=` read)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..distributed.zero import is_universal_checkpoint, is_zero_checkpoint


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
