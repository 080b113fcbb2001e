"""Checkpoints of our own runs: atomic writes, and finding the checkpoint to resume from.

(Weights from other systems — transformers, official, timm — are `convert.py`'s.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


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
    recently written `*.ckpt` (temporary files of an interrupted save are never picked)."""
    ckpt_dir = Path(run_dir) / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        return last
    candidates = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
