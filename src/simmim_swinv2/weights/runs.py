"""Checkpoints of our own runs: written atomically, and found again in a run directory (what
`resume=auto`, the exports and `pretrained=` read)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..distributed.disk import size_text
from ..distributed.zero import is_universal_checkpoint, is_zero_checkpoint, zero_model_states

# What `training.stability.Stability` records in every checkpoint: `{"good": bool, ...}`; `good` is
# False for a checkpoint saved while a streak of skipped steps was running (its weights are the
# ones the streak could not use).
STABILITY_KEY = "stability"
LAST = Path("checkpoints") / "last.ckpt"  # in a run directory: what `resume=auto` looks at first


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes `<name>.tmp-<pid>` beside the target, fsyncs it, then renames it over the target: a
    kill mid-save leaves the previous checkpoint intact and no partial file under the real name.
    (Lightning's own save stages the file in /tmp and moves it, which is a copy, not a rename, when
    the run directory is on another file system, as on most clusters.) Remote URLs fall back to
    Lightning's save. Use it as a Trainer plugin (`plugins=[AtomicCheckpointIO()]`)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path, storage_options: Any | None = None
    ) -> None:
        """Write `checkpoint` (a dict for `torch.save`) to `path` atomically (see the class)."""
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
        except (OSError, RuntimeError) as err:
            # torch's zip writer may turn the write's OSError into a RuntimeError ("unexpected pos")
            full = _disk_full(err)
            if full is None:
                raise
            tmp.unlink(missing_ok=True)  # before the space left is read
            raise OSError(full, disk_full_message(path, checkpoint)) from err
        finally:
            tmp.unlink(missing_ok=True)


def _disk_full(err: BaseException | None) -> int | None:
    """ENOSPC or EDQUOT if `err`, or an exception it was raised from or during, is one."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def disk_full_message(path: Path, checkpoint: dict[str, Any]) -> str:
    """What a checkpoint save that ran out of disk (or quota) says: the file, its size, the space
    left, that nothing earlier was lost, the older checkpoints beside it that resuming does not
    need (a lower `save_top_k` only deletes them after the next save), and the fixes."""
    size = sum(
        t.numel() * t.element_size()
        for t in torch.utils._pytree.tree_leaves(checkpoint)
        if isinstance(t, torch.Tensor)
    )
    free = shutil.disk_usage(path.parent).free
    siblings = [p for p in path.parent.glob("*.ckpt") if p.is_file() and not p.is_symlink()]
    newest = max(siblings, key=lambda p: p.stat().st_mtime, default=None)
    spare = sorted(p.name for p in siblings if p != newest and p.name != path.name)
    older = (
        f" Resuming needs only the newest ({newest.name}); older ones here: {', '.join(spare)} "
        f"({size_text(sum((path.parent / n).stat().st_size for n in spare))})."
        if spare
        else ""
    )
    return (
        f"no space left (disk or quota) writing checkpoint {path} (~{size_text(size)}; "
        f"{size_text(free)} free there). The checkpoints written before it are intact.{older} "
        "Free space, then start the same command again (resume=auto continues from the newest). "
        "To keep fewer from now on: callbacks.checkpoint.save_top_k=1, "
        "callbacks.checkpoint_keep=null; `python -m simmim_swinv2.plan <overrides>` prints the "
        "disk a run's checkpoints take."
    )


def find_resume_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory: `checkpoints/last.ckpt` if present, else
    the most recently written `checkpoints/*.ckpt` — unless a resharded universal copy
    (`simmim_swinv2.reshard`) in `checkpoints/`, or a preemption's `hpc_ckpt_<n>.ckpt` in the run
    directory itself, is newer. Temporary files of an interrupted save are never picked. A
    checkpoint is a file, or, under DeepSpeed, a directory (`is_zero_checkpoint`,
    `is_universal_checkpoint`).

    Args:
        run_dir: the run directory (its `checkpoints/`, and `hpc_ckpt_*.ckpt` in it).

    Returns:
        The checkpoint's path, or None when the run has none.
    """
    run_dir = Path(run_dir)

    def complete(p: Path) -> bool:
        return p.is_file() or is_zero_checkpoint(p) or is_universal_checkpoint(p)

    def written(p: Path) -> float:
        if p.is_dir():
            return max(
                (p / n).stat().st_mtime for n in ("latest", "latest_universal") if (p / n).is_file()
            )
        return p.stat().st_mtime

    last = run_dir / LAST
    regular = [p for p in run_dir.glob("checkpoints/*.ckpt") if complete(p)]
    if complete(last):  # last.ckpt, unless a universal copy (simmim_swinv2.reshard) is newer
        regular = [last, *(p for p in regular if is_universal_checkpoint(p))]
    best = max(regular, key=written) if regular else None
    hpc = [p for p in run_dir.glob("hpc_ckpt_*.ckpt") if complete(p)]
    if hpc and (best is None or max(map(written, hpc)) > written(best)):
        best = max(hpc, key=written)
    return best


def zero_checkpoint(source: str | Path) -> Path:
    """The ZeRO checkpoint directory a path names.

    Args:
        source: a ZeRO checkpoint directory, or a run directory whose newest checkpoint is one.

    Returns:
        That directory; anything else raises `FileNotFoundError`.
    """
    source = Path(source)
    if is_zero_checkpoint(source):
        return source
    found = find_resume_checkpoint(source)
    if found is None or not is_zero_checkpoint(found):
        raise FileNotFoundError(
            f"{source}: neither a ZeRO checkpoint directory nor a run directory whose newest "
            f"checkpoint is one (newest: {found})"
        )
    return found


def checkpoint_record(path: str | Path) -> tuple[int, dict]:
    """`(global_step, stability record)` of one of our checkpoints (a file or a ZeRO directory),
    read memory-mapped: the tensors are not loaded. A checkpoint without a record (written without
    `callbacks.stability`) reads as `{"good": True}`."""
    path = Path(path)
    if is_zero_checkpoint(path):
        ckpt = zero_model_states(path)
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0)), dict(ckpt.get(STABILITY_KEY) or {"good": True})


def rollback_checkpoint(run_dir: str | Path, streak_start: int) -> tuple[Path, int] | None:
    """`(path, global_step)` of the newest checkpoint of a run saved before optimizer step
    `streak_start` ran (its `global_step <= streak_start`) at a good point (no streak of skipped
    steps running), or None. Looked for where the run writes them: `checkpoints/` (links resolved),
    `checkpoints/keep/` and the preemption saves."""
    run_dir = Path(run_dir)
    patterns = ("checkpoints/*.ckpt", "checkpoints/keep/*.ckpt", "hpc_ckpt_*.ckpt")
    paths = {
        p.resolve()
        for pattern in patterns
        for p in run_dir.glob(pattern)
        if p.is_file() or is_zero_checkpoint(p)
    }
    best = None
    for path in sorted(paths):
        step, record = checkpoint_record(path)
        if step <= streak_start and record.get("good", True) and (best is None or step > best[1]):
            best = (path, step)
    return best


def keep_rollback_save(run_dir: str | Path, path: str | Path) -> None:
    """After a rollback saved its state to `path` (`checkpoints/rollback-step*.ckpt`, a name no
    checkpoint callback tracks, so retention never deletes it): `last.ckpt` becomes a link to it
    (what `resume=auto` picks; the checkpoint callbacks replace the link with their next save, never
    the file) and older rollback saves, which it supersedes, are removed. File operations: one
    process calls it."""
    run_dir, path = Path(run_dir), Path(path)
    for old in path.parent.glob("rollback-step*.ckpt"):
        if old != path:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    last = run_dir / LAST
    if last.is_symlink() or last.is_file():
        last.unlink()
    elif last.is_dir():
        shutil.rmtree(last)
    last.symlink_to(path.name if path.parent == last.parent else path.resolve())
