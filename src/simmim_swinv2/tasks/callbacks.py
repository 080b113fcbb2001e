"""Callbacks: SimMIM reconstruction pictures, RNG state carried in checkpoints, and preemption (save, requeue,
exit) that is safe with many ranks."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchvision.utils import make_grid, save_image

from ..data import IMAGENET_MEAN, IMAGENET_STD


class ReconstructionImages(L.Callback):
    """Every `every_n_steps` optimizer steps, and when training ends, a picture of a fixed set of training
    images (the first batch's first `num_images`), one row each: original | masked input | reconstruction |
    reconstruction pasted into the visible pixels. Saved as `<run_dir>/<dirname>/step_XXXXXXX.png` and sent to
    the loggers that take images (wandb, TensorBoard). With SimMIM's normalised target the reconstruction is
    of the locally standardised image, shown min-max scaled."""

    def __init__(self, every_n_steps: int = 100, num_images: int = 8, dirname: str = "reconstructions") -> None:
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.dirname = dirname
        self.fixed: tuple[torch.Tensor, torch.Tensor] | None = None
        self._last_step = -1
        self.saved: list[Path] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.fixed is None:
            self.fixed = (batch[0][: self.num_images].detach().clone(), batch[1][: self.num_images].detach().clone())
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.render(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.fixed is not None and trainer.global_step != self._last_step:
            self.render(trainer, pl_module)

    @torch.no_grad()
    def render(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Runs on every rank (sharded models need all of them for a forward); rank 0 writes."""
        self._last_step = step = trainer.global_step
        images, masks = self.fixed
        model = pl_module.model
        was_training = model.training
        model.eval()
        out = model(images, masks)
        model.train(was_training)
        if not trainer.is_global_zero:
            return None
        grid = self.grid(images.float().cpu(), masks.cpu(), out.reconstruction.float().cpu(),
                         model.encoder.cfg.patch_size, getattr(model, "norm_target", False))
        path = Path(trainer.default_root_dir) / self.dirname / f"step_{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        self.saved.append(path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # wandb
                logger.log_image(key="train/reconstructions", images=[str(path)], step=step)
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # tensorboard
                logger.experiment.add_image("train/reconstructions", grid, step)
        return path

    @staticmethod
    def grid(images: torch.Tensor, masks: torch.Tensor, reconstruction: torch.Tensor, patch_size: int,
             norm_target: bool = False) -> torch.Tensor:
        """`(N, 3, H, W)` normalised images, `(N, h, w)` masks → `(3, H', W')` picture in [0, 1]."""
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        original = (images * std + mean).clamp(0, 1)
        if norm_target:
            lo = reconstruction.amin(dim=(1, 2, 3), keepdim=True)
            hi = reconstruction.amax(dim=(1, 2, 3), keepdim=True)
            recon = (reconstruction - lo) / (hi - lo).clamp(min=1e-6)
        else:
            recon = (reconstruction * std + mean).clamp(0, 1)
        pixel_mask = masks.float().repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)
        masked = original * (1 - pixel_mask) + 0.5 * pixel_mask
        pasted = original * (1 - pixel_mask) + recon * pixel_mask
        tiles = torch.stack([original, masked, recon, pasted], dim=1).flatten(0, 1)
        return make_grid(tiles, nrow=4, padding=2, pad_value=1.0)


class RNGState(L.Callback):
    """Saves the Python, NumPy, torch and CUDA random states in each checkpoint and restores them on resume,
    so a resumed run draws the same numbers (dropout, drop path) as an uninterrupted one. Stored as tensors and
    plain Python values, so checkpoints still load with `torch.load(weights_only=True)`."""

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class Preempted(SystemExit):
    """Raised on every rank at the same step once a preemption checkpoint is saved: the run stops there (exit
    status 0), and `resume=auto` continues from the checkpoint."""


class Preemption(L.Callback):
    """On `signals` (default SIGUSR1: what `sbatch --signal=SIGUSR1@120` sends 120 s before the time limit, or
    `kill -USR1`), save `<run dir>/hpc_ckpt_<n>.ckpt`, run `scontrol requeue $SLURM_JOB_ID` when under SLURM,
    and stop. The requeued job (same id, same run dir) resumes from the checkpoint with `resume=auto`.

    Unlike Lightning's `SLURMEnvironment(auto_requeue=True)`, which saves inside the signal handler, the handler
    here only raises a flag. Ranks get the signal at different moments — one inside the gradient all-reduce,
    another already past it — and a save, whose barrier is a collective, started from a handler then meets a
    different collective on the other rank and the job hangs until SLURM kills it, unsaved. Here all ranks
    agree after an optimizer step (`reduce_boolean_decision`, one scalar all-reduce every `check_every_n_steps`
    steps) and save together; the data loader then resumes at the next batch (`SimMIMDataModule`)."""

    def __init__(self, signals: tuple[str, ...] | list[str] = ("SIGUSR1",), requeue: bool | str = "auto",
                 check_every_n_steps: int = 1) -> None:
        if requeue not in (True, False, "auto"):
            raise ValueError(f"requeue={requeue!r}: use auto (requeue when under SLURM), true or false")
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps={check_every_n_steps} must be >= 1")
        try:
            self.signals = [signal.Signals[name] if isinstance(name, str) else signal.Signals(name)
                            for name in signals]
        except (KeyError, ValueError) as err:
            raise ValueError(f"signals={list(signals)}: unknown signal {err}; use names like SIGUSR1") from None
        self.requeue = requeue
        self.check_every_n_steps = check_every_n_steps
        self.received: signal.Signals | None = None
        self.saved: Path | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._last_step = -1
        self._stop = False

    def _handler(self, signum, frame) -> None:  # no I/O, no collectives: just the flag
        self.received = signal.Signals(signum)

    def on_train_start(self, trainer, pl_module) -> None:  # after Lightning's signal connector took its snapshot
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("Preemption: not in the main thread, signal handlers cannot be installed")
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handler)
        job = self._job()
        then = f"requeue SLURM job {job}" if job and self.requeue is not False else "stop"
        rank_zero_info(f"Preemption: on {', '.join(s.name for s in self.signals)}: save hpc_ckpt_<n>.ckpt, {then}")

    def teardown(self, trainer, pl_module, stage) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:  # Lightning skips teardown hooks then
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # the same on every rank
        if step == self._last_step or step % self.check_every_n_steps:
            return  # mid gradient accumulation (nothing to save that resumes exactly), or not this step
        self._last_step = step
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        name = self.received.name if self.received is not None else "a signal on another rank"
        path = trainer.strategy.broadcast(str(self._next_path(trainer)) if trainer.is_global_zero else None, src=0)
        rank_zero_info(f"Preemption: {name} received; saving {path} at step {trainer.global_step}")
        trainer.save_checkpoint(path)  # every rank: collectives inside, and ZeRO shards from each rank
        self.saved = Path(path)
        requeued = False
        if trainer.is_global_zero:
            self._remove_older(Path(path))
            requeued = self._requeue()
        trainer.strategy.barrier("Preemption")
        if trainer.is_global_zero and not requeued:
            rank_zero_info(f"Preemption: stopped at step {trainer.global_step}; run the same command again to "
                           "resume from the checkpoint (resume=auto)")
        self._stop = True  # once Lightning has logged this step's metrics: at the next hook below

    def _stop_now(self, *_) -> None:
        if self._stop:
            raise Preempted(0)

    # the first of these after the save, on every rank alike; before validation and the epoch-end checkpoint
    on_train_batch_start = on_validation_start = on_train_epoch_end = on_train_end = _stop_now

    @staticmethod
    def _numbered(root: Path) -> dict[int, Path]:
        return {int(m.group(1)): p for p in root.glob("hpc_ckpt_*.ckpt")
                if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))}

    def _next_path(self, trainer) -> Path:
        root = Path(trainer.default_root_dir)
        return root / f"hpc_ckpt_{max(self._numbered(root), default=0) + 1}.ckpt"

    def _remove_older(self, path: Path) -> None:
        """Earlier preemption checkpoints are superseded by this one (and at billions of parameters, large)."""
        for number, old in self._numbered(path.parent).items():
            if old != path and number < int(path.stem.rsplit("_", 1)[1]):
                shutil.rmtree(old) if old.is_dir() else old.unlink()

    @staticmethod
    def _job() -> str | None:
        if os.environ.get("SLURM_ARRAY_JOB_ID"):
            return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        return os.environ.get("SLURM_JOB_ID")

    def _requeue(self) -> bool:
        job = self._job()
        if self.requeue is False or (self.requeue == "auto" and not job):
            return False
        if not job:
            rank_zero_warn("Preemption: requeue=true but SLURM_JOB_ID is not set (not a SLURM job); not requeued")
            return False
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            rank_zero_warn(f"Preemption: `scontrol requeue {job}` failed ({err}); resubmit to resume")
            return False
        if result.returncode:
            rank_zero_warn(f"Preemption: `scontrol requeue {job}` failed: {(result.stderr or result.stdout).strip()} "
                           "(was the job submitted with --no-requeue?); resubmit with the same run dir to resume")
            return False
        rank_zero_info(f"Preemption: requeued SLURM job {job}")
        return True


def batch_size(batch) -> int:
    """Images in a batch `(images, …)`, for Lightning's ThroughputMonitor."""
    return int(batch[0].shape[0])
