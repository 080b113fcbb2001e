"""Progress as lines of text, for logs that are not a terminal: SLURM's output file, `nohup`, CI.

There the progress bar draws nothing until the run ends, so a week-long job's log would say nothing
between its start and its end. `ProgressLog` writes a line every `every_n_steps` optimizer steps
(the official SimMIM / Swin code prints one every `PRINT_FREQ` iterations) and one at every epoch's
end, with the validation metrics::

    epoch 3/799 | step 1200/24000 (5.0%) | loss 0.4312 | lr 1.20e-04 | 812 img/s | eta 3d 04:12 | peak mem 31.2 GiB
    epoch 3/799 done | step 1250/24000 (5.2%) | val/knn_top1 0.3120 val/loss 0.4102 | eta 3d 03:58

(epochs counted as the progress bar counts them: `3/799` is the 4th of 800.)
img/s counts every rank's images over the training time since the last line (validation left out);
the ETA is the remaining optimizer steps at this process's mean wall time per step so far
(validation, the kNN monitor and checkpoint saves included). Memory is the peak so far: of the
GPU's allocations, or of the process's resident memory on the CPU. The line of an epoch comes
after every other callback's end of epoch (`report_last`), so it has the kNN monitor's number.
"""  # noqa: E501 - the example lines are as printed

from __future__ import annotations

import math
import resource
import sys
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

WHEN = ("auto", "always", "never")


def duration(seconds: float) -> str:
    """`3d 04:12`, `04:12:09` or `12:09` (h:m:s, m:s)."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}:{minutes:02d}"
    return f"{hours:02d}:{minutes:02d}:{s:02d}" if hours else f"{minutes:02d}:{s:02d}"


class ProgressLog(L.Callback):
    """A line of text every `every_n_steps` optimizer steps and at each epoch's end (the module
    docstring), on rank 0. `training.build.build_trainer` puts it after the other callbacks.

    Args:
        every_n_steps: optimizer steps between lines (0: only at epoch ends).
        when: "auto": only where standard output is not a terminal or the progress bar is off;
            "always"; "never".
    """

    report_last = True  # reports what the other callbacks logged at the end of an epoch

    def __init__(self, every_n_steps: int = 100, when: str = "auto") -> None:
        if when not in WHEN:
            raise ValueError(f"ProgressLog when={when!r}: one of {', '.join(WHEN)}")
        if every_n_steps < 0:
            raise ValueError(f"ProgressLog every_n_steps={every_n_steps}: 0 or more")
        self.every_n_steps = every_n_steps
        self.when = when
        self.active = False
        self._total = 0  # optimizer steps of the whole run
        self._start = (0.0, 0)  # (wall clock, step) when this process began training
        self._train_s = 0.0  # training seconds so far in this process (validation left out)
        self._since: float | None = None  # when the training clock last resumed
        self._mark: tuple[float, int] = (0.0, 0)  # (training seconds, images) at the last line
        self._images = 0
        self._logged_step = -1

    def _is_active(self, trainer) -> bool:
        if self.when != "auto":
            return self.when == "always"
        return not sys.stdout.isatty() or trainer.progress_bar_callback is None

    @rank_zero_only
    def on_train_start(self, trainer, pl_module) -> None:
        self.active = self._is_active(trainer)
        total = trainer.estimated_stepping_batches  # inf: no max_steps, no max_epochs
        self._total = int(total) if math.isfinite(total) else 0
        self._start = (time.perf_counter(), trainer.global_step)
        self._logged_step = trainer.global_step
        self._resume_clock()

    def _resume_clock(self) -> None:
        self._since = time.perf_counter()

    def _pause_clock(self) -> None:
        if self._since is not None:
            self._train_s += time.perf_counter() - self._since
            self._since = None

    def _clock(self) -> float:
        running = 0.0 if self._since is None else time.perf_counter() - self._since
        return self._train_s + running

    @rank_zero_only
    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause_clock()

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._resume_clock()

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.active:
            return
        self._images += int(batch[0].shape[0]) * trainer.world_size
        step = trainer.global_step
        if self.every_n_steps and step != self._logged_step and step % self.every_n_steps == 0:
            self._logged_step = step
            rank_zero_info(self.step_line(trainer))

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.active:
            rank_zero_info(self.epoch_line(trainer))

    @staticmethod
    def _epoch(trainer) -> str:
        """As the progress bar counts: `epoch 3/799` is the 4th of 800."""
        last = trainer.max_epochs - 1 if (trainer.max_epochs or -1) > 0 else None
        return f"epoch {trainer.current_epoch}" + (f"/{last}" if last is not None else "")

    def _steps(self, step: int) -> str:
        if not self._total:
            return f"step {step}"
        return f"step {step}/{self._total} ({100 * step / self._total:.1f}%)"

    def _eta(self, step: int) -> str:
        done = step - self._start[1]
        if done <= 0 or not self._total:
            return "?"
        elapsed = time.perf_counter() - self._start[0]  # validation, kNN, saves included
        return duration(elapsed / done * max(self._total - step, 0))

    def step_line(self, trainer) -> str:
        """`epoch | step (%) | loss | lr | img/s | eta | peak mem`, and resets the rate's window."""
        step, now = trainer.global_step, self._clock()
        seconds, images = now - self._mark[0], self._images - self._mark[1]
        self._mark = (now, self._images)
        metrics = trainer.callback_metrics
        loss = metrics.get("train/loss_step")
        groups = trainer.optimizers[0].param_groups if trainer.optimizers else []
        parts = [
            self._epoch(trainer),
            self._steps(step),
            f"loss {float(loss):.4f}" if loss is not None else "loss ?",
            f"lr {max(g['lr'] for g in groups):.2e}" if groups else "lr ?",
            f"{images / seconds:.0f} img/s" if seconds > 0 else "? img/s",
            f"eta {self._eta(step)}",
            f"peak mem {self._peak_memory(trainer)}",
        ]
        return " | ".join(parts)

    def epoch_line(self, trainer) -> str:
        """`epoch done | step | the validation metrics | eta`."""
        metrics = trainer.callback_metrics
        val = " ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()) if k[:4] == "val/")
        parts = [
            f"{self._epoch(trainer)} done",
            self._steps(trainer.global_step),
            *([val] if val else []),
            f"eta {self._eta(trainer.global_step)}",
        ]
        return " | ".join(parts)

    @staticmethod
    def _peak_memory(trainer) -> str:
        device = trainer.strategy.root_device
        if device.type == "cuda":
            # the peak so far: not reset, which would blind whoever else reads it (gpu_check)
            return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return f"{kib / 2**20:.1f} GiB (process)"
