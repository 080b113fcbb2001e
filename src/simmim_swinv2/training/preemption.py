"""Preemption that is safe with many ranks: on SIGUSR1 / SIGTERM every rank saves the same
checkpoint after the current optimizer step, the SLURM job is requeued where that is asked for, and
the run exits."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class Preempted(SystemExit):
    """Raised on every rank at the same step once a preemption checkpoint is saved: the run stops
    there, and `resume=auto` continues from the checkpoint. Exit status 0 after a signal that asks
    for a requeue (SIGUSR1: the run goes on in the requeued job, or `kill -USR1` asked for a clean
    stop); 128 + the signal's number otherwise (SIGTERM: 143), so that whoever is ending the job — a
    Kubernetes Job, torchrun, a workflow engine — sees an unfinished run to restart, not a completed
    one."""


class Preemption(L.Callback):
    """On any of `signals`, save `<run dir>/hpc_ckpt_<n>.ckpt` after the current optimizer step,
    then stop; after a signal in `requeue_on` also run `scontrol requeue $SLURM_JOB_ID` when under
    SLURM. The next start (the requeued job, or the same command again: same run dir) resumes from
    the checkpoint with `resume=auto`, mid-epoch.

    - SIGUSR1 (`requeue_on` by default): what `sbatch --signal=SIGUSR1@120` sends 120 s before the
      time limit, or `kill -USR1`. The job is requeued; exit status 0.
    - SIGTERM: how SLURM preemption (`PreemptMode=REQUEUE`: SIGTERM, SIGKILL after `GraceTime`),
      `scancel`, a time limit without `--signal` (SIGKILL after `KillWait`) and Kubernetes (SIGKILL
      after `terminationGracePeriodSeconds`) stop a job. Saved, not requeued: requeueing is the
      scheduler's call (`PreemptMode=REQUEUE` requeues the job itself; `scancel` means stop). Exit
      status 143.

    Unlike Lightning's `SLURMEnvironment(auto_requeue=True)`, which saves inside the signal handler
    (and Lightning's SIGTERM handler, which broadcasts from inside it), the handler here only raises
    a flag. Ranks get the signal at different moments — one inside the gradient all-reduce, another
    already past it — and a save, whose barrier is a collective, started from a handler then meets a
    different collective on the other rank and the job hangs until it is killed, unsaved. Here all
    ranks agree after an optimizer step (one scalar all-reduce every `check_every_n_steps` steps)
    and save together; the data loader then resumes at the next batch (`SimMIMDataModule`). A signal
    that arrives during validation is acted on after the next training step."""

    def __init__(
        self,
        signals: tuple[str, ...] | list[str] = ("SIGUSR1", "SIGTERM"),
        requeue: bool | str = "auto",
        check_every_n_steps: int = 1,
        requeue_on: tuple[str, ...] | list[str] = ("SIGUSR1",),
    ) -> None:
        if requeue not in (True, False, "auto"):
            raise ValueError(
                f"requeue={requeue!r}: use auto (requeue when under SLURM), true or false"
            )
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps={check_every_n_steps} must be >= 1")
        self.signals = self._parse(signals, "signals")
        self.requeue_on = self._parse(requeue_on, "requeue_on")
        self.requeue = requeue
        self.check_every_n_steps = check_every_n_steps
        self.received: signal.Signals | None = None
        self.saved: Path | None = None
        self._previous: dict[signal.Signals, object] = {}
        self._last_step = -1
        self._stop: int | None = None  # the exit status, once saved
        self._start_step = 0
        self._superseded: list[Path] = []

    @staticmethod
    def _parse(names, what: str) -> list[signal.Signals]:
        try:
            return [signal.Signals[n] if isinstance(n, str) else signal.Signals(n) for n in names]
        except (KeyError, ValueError) as err:
            raise ValueError(
                f"{what}={list(names)}: unknown signal {err}; use names like SIGUSR1, SIGTERM"
            ) from None

    def _handler(self, signum, frame) -> None:  # no I/O, no collectives: just the flag
        self.received = signal.Signals(signum)

    # after Lightning's signal connector took its snapshot
    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn(
                "Preemption: not in the main thread, signal handlers cannot be installed"
            )
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handler)
        job = self._job()
        actions = []
        for sig in self.signals:
            then = (
                f"requeue SLURM job {job}"
                if sig in self.requeue_on and job and self.requeue is not False
                else "stop"
            )
            actions.append(f"{sig.name}: save hpc_ckpt_<n>.ckpt, {then}")
        rank_zero_info(f"Preemption: on {'; '.join(actions)}")
        self._start_step = trainer.global_step
        # a preemption save this run resumed from is superseded by the first regular checkpoint
        # written after it
        self._superseded = (
            list(self._numbered(Path(trainer.default_root_dir)).values())
            if trainer.is_global_zero
            else []
        )

    def teardown(self, trainer, pl_module, stage) -> None:
        self._restore()

    # Lightning skips teardown hooks then
    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def _agreed_signal(self, trainer) -> signal.Signals | None:
        """The signal every rank acts on: one scalar all-reduce (max), so a signal that reached any
        rank counts, and a terminating one (not in `requeue_on`) wins over a requeue request."""
        code = 0
        if self.received is not None:
            code = int(self.received) + (0 if self.received in self.requeue_on else 1000)
        if trainer.world_size > 1:
            tensor = torch.tensor(code, device=trainer.strategy.root_device)
            code = int(trainer.strategy.reduce(tensor, reduce_op="max"))
        return signal.Signals(code % 1000) if code else None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._superseded and any(
            getattr(cb, "_last_global_step_saved", 0) > self._start_step
            for cb in trainer.checkpoint_callbacks
        ):
            for old in self._superseded:  # rank 0 only (see on_train_start)
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(
                    missing_ok=True
                )
            self._superseded = []
        step = trainer.global_step  # the same on every rank
        if step == self._last_step or step % self.check_every_n_steps:
            # mid gradient accumulation (nothing to save that resumes exactly), or not this step
            return
        self._last_step = step
        sig = self._agreed_signal(trainer)
        if sig is None:
            return
        name = sig.name if sig == self.received else f"{sig.name} (on another rank)"
        path = trainer.strategy.broadcast(
            str(self._next_path(trainer)) if trainer.is_global_zero else None, src=0
        )
        rank_zero_info(f"Preemption: {name} received; saving {path} at step {trainer.global_step}")
        # every rank: collectives inside, and ZeRO shards from each rank
        trainer.save_checkpoint(path)
        self.saved = Path(path)
        requeued = False
        if trainer.is_global_zero:
            self._remove_older(Path(path))
            requeued = sig in self.requeue_on and self._requeue()
        trainer.strategy.barrier("Preemption")
        if trainer.is_global_zero and not requeued:
            rank_zero_info(
                f"Preemption: stopped at step {trainer.global_step} ({sig.name}); the same command "
                "resumes from the checkpoint (resume=auto)"
            )
        # at the next hook, once Lightning logged the step
        self._stop = 0 if sig in self.requeue_on else 128 + int(sig)

    def _stop_now(self, *_) -> None:
        if self._stop is not None:
            raise Preempted(self._stop)

    # the first of these after the save, on every rank alike; before validation and the epoch-end
    # checkpoint
    on_train_batch_start = on_validation_start = on_train_epoch_end = on_train_end = _stop_now

    @staticmethod
    def _numbered(root: Path) -> dict[int, Path]:
        return {
            int(m.group(1)): p
            for p in root.glob("hpc_ckpt_*.ckpt")
            if (m := re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name))
        }

    def _next_path(self, trainer) -> Path:
        root = Path(trainer.default_root_dir)
        return root / f"hpc_ckpt_{max(self._numbered(root), default=0) + 1}.ckpt"

    def _remove_older(self, path: Path) -> None:
        """Earlier preemption checkpoints are superseded by this one (and at billions of parameters,
        large)."""
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
            rank_zero_warn(
                "Preemption: requeue=true but SLURM_JOB_ID is not set (not a SLURM job); not "
                "requeued"
            )
            return False
        try:
            result = subprocess.run(
                ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            rank_zero_warn(
                f"Preemption: `scontrol requeue {job}` failed ({err}); resubmit to resume"
            )
            return False
        if result.returncode:
            rank_zero_warn(
                f"Preemption: `scontrol requeue {job}` failed: "
                f"{(result.stderr or result.stdout).strip()} (was the job submitted with "
                "--no-requeue?); resubmit with the same run dir to resume"
            )
            return False
        rank_zero_info(f"Preemption: requeued SLURM job {job}")
        return True
