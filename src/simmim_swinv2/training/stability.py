"""A long run survives its own numerics. A step whose loss is not finite on any rank, whose gradient
norm is not finite, or whose loss spikes is skipped on every rank; a streak of skipped steps rolls
the weights back to the last good checkpoint and skips the data in between; a run that still cannot
get past stops with a report. Drills make losses non-finite on purpose, to rehearse all of it on a
cluster before a long run.

The decision is taken on every rank from one all-reduce per batch (every rank's loss, summed with a
count of the non-finite ones), so the ranks skip together and their weights never part; how a step
is skipped under each strategy is `distributed.numerics`'. Skips, rollbacks and a stop are appended
to `<run dir>/stability.tsv`, with the step, the reason, each rank's loss, the gradient norm and the
samples of the batch.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..data.seeding import batch_sample_ids
from ..distributed import numerics
from ..weights.runs import STABILITY_KEY, keep_rollback_save, rollback_checkpoint
from .bad_samples import BadSampleMonitor, _loaders
from .spikes import SpikeDetector

HEADER = ["step", "epoch", "event", "rank", "loss", "grad_norm", "lr_scale", "reason", "samples"]


class Diverged(SystemExit):
    """The run could not get past a streak of skipped steps (more than `max_rollbacks` rollbacks in
    a row, or no checkpoint to roll back to). Raised on every rank at the same step; the process
    exits with status 1 and the report as its message (a `SystemExit` carrying a message), which a
    restart repeats without training (`resume_after_stop` says how to go on)."""


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint was about to be written with a NaN or infinite weight; it was not written."""


class Stability(L.Callback):
    """Skip, roll back, stop (see the module docstring). The task hands it each batch's loss
    (`judge_loss`, from `TrainTask.check_loss`) and calls `before_optimizer_step` last before each
    step.

    Args:
        max_consecutive_skips: skipped steps in a row allowed; one more rolls back.
        max_rollbacks: rollbacks allowed before a step trains again; one more stops the run
            (`Diverged`).
        lr_scale_after_rollback: every rollback multiplies the learning rate (the rest of the
            schedule) by this.
        spike_window, spike_warmup, spike_atol, spike_rtol: the loss-spike rule (`SpikeDetector`);
            tolerances of None disable it (non-finite losses are skipped whatever these say).
        inject_nonfinite_at, inject_nonfinite_from: drills: the loss is made NaN at these optimizer
            steps (counted from 0, as `trainer.global_step` and metrics.csv's `step`), and at every
            step from `inject_nonfinite_from` on,
        inject_ranks: on these global ranks.
        filename: the report in the run directory.
        resume_after_stop: a run that stopped (`Diverged`) refuses to start again until this is set
            (after changing what made it diverge); its stop stays in the report.
    """

    def __init__(
        self,
        max_consecutive_skips: int = 5,
        max_rollbacks: int = 3,
        lr_scale_after_rollback: float = 0.5,
        spike_window: int = 100,
        spike_warmup: int = 100,
        spike_atol: float | None = 0.5,
        spike_rtol: float | None = 2.0,
        inject_nonfinite_at: list[int] | None = None,
        inject_nonfinite_from: int | None = None,
        inject_ranks: list[int] | None = None,
        filename: str = "stability.tsv",
        resume_after_stop: bool = False,
    ) -> None:
        if max_consecutive_skips < 0 or max_rollbacks < 0:
            raise ValueError(
                f"max_consecutive_skips={max_consecutive_skips} and max_rollbacks={max_rollbacks} "
                "must be >= 0"
            )
        if not 0 < lr_scale_after_rollback <= 1:
            raise ValueError(f"lr_scale_after_rollback={lr_scale_after_rollback} must be in (0, 1]")
        self.max_consecutive_skips, self.max_rollbacks = max_consecutive_skips, max_rollbacks
        self.lr_scale_after_rollback = lr_scale_after_rollback
        self.detector = SpikeDetector(spike_window, spike_warmup, spike_atol, spike_rtol)
        self.inject_at = {int(s) for s in inject_nonfinite_at or ()}
        self.inject_from = inject_nonfinite_from
        self.inject_ranks = {0} if inject_ranks is None else {int(r) for r in inject_ranks}
        self.filename, self.resume_after_stop = filename, resume_after_stop
        # what a checkpoint carries (state_dict): counts, the streak, the LR scale applied so far
        self.skipped = self.consecutive = self.rollbacks = self.rollbacks_in_a_row = 0
        self.streak_start: int | None = None
        self.lr_scale = 1.0
        # the step in progress
        self._reason: str | None = None
        self._means: list[float] = []
        self._local: list[float] = []
        self._batches: list[int] = []
        self._norm: float | None = None
        self._step = -1
        self._engine = numerics.EngineSkips()

    # ---------------------------------------------------------------------------------------- state
    _STATE = (
        "skipped",
        "consecutive",
        "rollbacks",
        "rollbacks_in_a_row",
        "streak_start",
        "lr_scale",
    )

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self._STATE}, "spikes": self.detector.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for key in self._STATE:
            setattr(self, key, state[key])
        self.detector.load_state_dict(state["spikes"])

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Refuses, on every rank, to write a non-finite weight; records whether this is a good
        rollback point."""
        if not numerics.weights_finite(trainer, pl_module):
            raise NonFiniteWeightsError(
                f"a checkpoint at step {trainer.global_step} would hold NaN or infinite weights; "
                f"it was not written (the checkpoints already in {trainer.default_root_dir} are "
                f"intact). {self._advice}"
            )
        checkpoint[STABILITY_KEY] = {
            "good": self.consecutive == 0,
            "skipped": self.skipped,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
        }

    _advice = (
        "Lower optim.base_lr, keep optim.grad_clip, use trainer.precision=bf16-mixed rather than "
        "16-mixed; train/act_rms/*, train/grad_norm/* and train/logit_scale_max/* in metrics.csv "
        "show which stage moved first"
    )

    # ---------------------------------------------------------------------------------------- start
    def on_fit_start(self, trainer, pl_module) -> None:
        last = self._rows(trainer)[-1:] if trainer.is_global_zero else []
        stopped = trainer.strategy.broadcast(bool(last) and last[0]["event"] == "stop", src=0)
        if stopped and not self.resume_after_stop:
            reason = last[0]["reason"] if last else "see " + str(self._path(trainer))
            raise Diverged(
                f"this run stopped at step {last[0]['step'] if last else '?'} and would walk into "
                f"the same failure again: {reason}. Change what made it diverge, then start it "
                "again with callbacks.stability.resume_after_stop=true"
            )
        if stopped:
            self._event(trainer, trainer.global_step, "resume", "resume_after_stop=true")

    def on_train_start(self, trainer, pl_module) -> None:
        self._engine.reset(trainer)
        self._step = trainer.global_step

    # ----------------------------------------------------------------------------------- each batch
    def _injected(self, step: int, rank: int) -> bool:
        return rank in self.inject_ranks and (
            step in self.inject_at or (self.inject_from is not None and step >= self.inject_from)
        )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batches.append(batch_idx)

    def judge_loss(self, trainer, pl_module, loss: torch.Tensor) -> torch.Tensor:
        """Called by the task with its loss, on every rank, every batch: returns the loss to
        backpropagate (NaN in a drill). One all-reduce of (non-finite count, sum of the finite
        losses); a non-finite loss anywhere or a spike of the mean marks the step to be skipped, on
        every rank alike."""
        if self._injected(trainer.global_step, trainer.global_rank):
            loss = loss * math.nan
        value = loss.detach().float().reshape(())
        finite = torch.isfinite(value)
        stats = torch.stack([(~finite).double(), torch.where(finite, value, 0.0).double()])
        if trainer.world_size > 1:
            stats = trainer.strategy.reduce(stats, reduce_op="sum")
        bad, total = stats.tolist()
        self._local.append(float(value))
        reason = None
        if bad:
            reason = f"non-finite loss on {int(bad)} of {trainer.world_size} ranks"
        elif self.detector.is_spike(mean := total / trainer.world_size):
            reason = f"loss spike: {mean:.4g} against a running mean of {self.detector.mean:.4g}"
        else:
            self._means.append(mean)
        if reason is not None and self._reason is None:
            self._reason = reason
            numerics.mark_skipped(trainer, loss)
        return loss

    def before_optimizer_step(self, trainer, pl_module) -> None:
        """Called by the task's `on_before_optimizer_step`, after every callback's (they still see
        the gradients): reads the gradient norm; skips the step if it is not finite or the step was
        marked."""
        self._norm = numerics.grad_norm(trainer, pl_module)
        if (
            self._reason is None
            and self._norm is not None
            and not math.isfinite(self._norm)
            and not numerics.scaler_skips_overflow(trainer)
        ):
            self._reason = "non-finite gradient norm"
        if self._reason is not None:
            numerics.drop_gradients(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step:
            return  # inside gradient accumulation: the step is not taken yet
        step, self._step = self._step, trainer.global_step
        skipped_by_engine, engine_norm = self._engine.step_result(trainer)
        norm = self._norm if self._norm is not None else engine_norm
        if (
            skipped_by_engine
            and self._reason is None
            and not numerics.scaler_skips_overflow(trainer)
        ):
            self._reason = "non-finite gradient norm"
        if self._reason is not None and skipped_by_engine is False:
            raise self._engine.applied_anyway(step, self._reason)
        if self._reason is not None:
            self._skip(trainer, pl_module, step, norm)
        else:
            self.consecutive, self.rollbacks_in_a_row, self.streak_start = 0, 0, None
            for mean in self._means:
                self.detector.accept(mean)
        self._reason, self._means, self._local, self._batches, self._norm = None, [], [], [], None
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
        pl_module.log("train/rollbacks", float(self.rollbacks), on_step=True, on_epoch=False)

    # ----------------------------------------------------------------------------------------- skip
    def _skip(self, trainer, pl_module, step: int, norm: float | None) -> None:
        self.skipped += 1
        self.consecutive += 1
        if self.streak_start is None:
            self.streak_start = step
        loader = next(iter(_loaders(trainer.train_dataloader)), None)
        names = (
            [n for b in self._batches for n in (batch_sample_ids(loader, b) or [])]
            if loader
            else []
        )
        if not names:
            names = [
                f"epoch {trainer.current_epoch} batch {b} of rank {trainer.global_rank}"
                for b in self._batches
            ]
        rows = BadSampleMonitor._gather(trainer, [self._local, names])
        epoch, shown = trainer.current_epoch, "" if norm is None else f"{norm:.4g}"
        losses = {rank: " ".join(f"{v:.6g}" for v in local) for rank, (local, _) in rows}
        self._write(
            trainer,
            [
                [
                    step,
                    epoch,
                    "skip",
                    rank,
                    losses[rank],
                    shown,
                    self.lr_scale,
                    self._reason,
                    ",".join(ids),
                ]
                for rank, (_, ids) in rows
            ],
        )
        first = rows[0][1][1][:3] if rows else []
        rank_zero_warn(
            f"step {step} skipped ({self._reason}; gradient norm {shown or 'n/a'}; samples "
            f"{', '.join(first)}{', ...' if len(first) == 3 else ''}): {self.skipped} skipped so "
            f"far, {self.consecutive} in a row; listed in {self._path(trainer)}"
        )
        if self.consecutive > self.max_consecutive_skips:
            self._rollback(trainer, pl_module, step)

    # ------------------------------------------------------------------------------------ roll back
    def _rollback(self, trainer, pl_module, step: int) -> None:
        """Weights and optimizer state from the newest good checkpoint saved before the streak
        began; the step count, the schedule's position and the data go on from here (the data in
        between is skipped); the LR is scaled. The new state is saved at once
        (`checkpoints/rollback-step*.ckpt`, linked as last.ckpt)."""
        run_dir = Path(trainer.default_root_dir)
        streak = f"{self.consecutive} steps in a row skipped (from step {self.streak_start})"
        if self.rollbacks_in_a_row >= self.max_rollbacks:
            self._stop(
                trainer,
                step,
                f"{streak} after {self.rollbacks_in_a_row} rollbacks without a step trained "
                "in between",
            )
        found = rollback_checkpoint(run_dir, self.streak_start) if trainer.is_global_zero else None
        found = trainer.strategy.broadcast(found, src=0)
        if found is None:
            self._stop(
                trainer,
                step,
                f"{streak} and no good checkpoint saved before step {self.streak_start} to "
                "roll back to",
            )
        self.rollbacks += 1
        self.rollbacks_in_a_row += 1
        path, saved_step = found
        optimizers = trainer.optimizers
        live = [
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            for opt in optimizers
        ]
        checkpoint = trainer.strategy.load_checkpoint(path)
        trainer.strategy.load_model_state_dict(checkpoint, strict=pl_module.strict_loading)
        trainer.strategy.load_optimizer_state_dict(checkpoint)
        scale = self.lr_scale_after_rollback
        for opt, groups in zip(optimizers, live):
            for group, hyper in zip(opt.param_groups, groups):
                group.update(
                    hyper, lr=hyper["lr"] * scale
                )  # the moments are the checkpoint's, the schedule ours
        for config in trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [lr * scale for lr in config.scheduler.base_lrs]
        self.lr_scale *= scale
        self._engine.reset(trainer)
        streak, self.consecutive, self.streak_start = self.consecutive, 0, None
        why = f"{streak} steps in a row skipped; weights and optimizer state of step {saved_step}"
        self._event(trainer, step, "rollback", why, str(path))
        rank_zero_warn(
            f"rollback {self.rollbacks} at step {step}: {streak} steps in a row skipped; weights "
            f"and optimizer state from {path} (step {saved_step}), the data of steps "
            f"{saved_step}-{step} "
            f"skipped, LR x{scale:g} (x{self.lr_scale:g} in all)"
        )
        # saved at once, linked as last.ckpt: a restart resumes past the failure, not into it again
        save = run_dir / "checkpoints" / f"rollback-step{trainer.global_step:07d}.ckpt"
        trainer.save_checkpoint(save)  # every rank (collectives inside)
        if trainer.is_global_zero:
            keep_rollback_save(run_dir, save)
        trainer.strategy.barrier("stability_rollback")

    def _stop(self, trainer, step: int, why: str) -> None:
        report = (
            f"training stopped at step {step}: {why}. {self.skipped} steps skipped and "
            f"{self.rollbacks} rollbacks in all (LR scale x{self.lr_scale:g}); every one is listed "
            f"in {self._path(trainer)}. "
            f"{self._advice}; then start again with callbacks.stability.resume_after_stop=true"
        )
        self._event(trainer, step, "stop", why)
        trainer.strategy.barrier("stability_stop")
        raise Diverged(report)

    # ----------------------------------------------------------------------------------- the report
    def _path(self, trainer) -> Path:
        return Path(trainer.default_root_dir) / self.filename

    def _rows(self, trainer) -> list[dict]:
        path = self._path(trainer)
        if not path.is_file():
            return []
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t"))

    def _event(self, trainer, step: int, event: str, reason: str, detail: str = "") -> None:
        """A row of the report that is no skip: a rollback, a stop, a resume after a stop."""
        row = [step, trainer.current_epoch, event, "-", "", "", self.lr_scale, reason, detail]
        self._write(trainer, [row])

    def _write(self, trainer, rows: list[list]) -> None:
        """Rank 0 appends `rows` (columns: HEADER) to the report."""
        if not trainer.is_global_zero or not rows:
            return
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="", encoding="utf-8") as f:
            out = csv.writer(f, delimiter="\t")
            if new:
                out.writerow(HEADER)
            out.writerows(rows)
