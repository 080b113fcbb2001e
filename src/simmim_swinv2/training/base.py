"""What pretraining and fine-tuning share: the official optimisation recipe (no-decay groups, LR
scaled by the global batch, per-iteration warmup + schedule), the loss handed to the stability guard
(without it, a stop on a non-finite loss), and the start-up summary of the derived quantities.
Nothing here depends on the strategy (`distributed/` owns that, the gradient norm included)."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..weights.meta import CHECKPOINT_KEY, ModelMeta
from . import optim
from .optim import OptimConfig, ScheduleConfig
from .stability import Stability
from .throughput import step_flops


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


class TrainTask(L.LightningModule):
    """Base class: subclasses implement `training_step`/`validation_step` and call `check_loss`."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: OptimConfig,
        scheduler: ScheduleConfig,
        batch_size: int,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_config = optimizer
        self.schedule_config = scheduler
        self.batch_size = batch_size
        self.compile_model = compile
        self.lr_factor = 1.0
        self._flops_per_batch: int | None = None

    # --------------------------------------------------------------------------------------- set-up
    @property
    def global_batch(self) -> int:
        trainer = self.trainer
        return self.batch_size * trainer.world_size * trainer.accumulate_grad_batches

    @property
    def flops_per_batch(self) -> int | None:
        """FLOPs of one training step on this device (forward and backward,
        `throughput.step_flops`), counted once; what Lightning's `ThroughputMonitor` turns into
        FLOP/s and MFU. None if they cannot be counted."""
        if self._flops_per_batch is None:
            try:
                self._flops_per_batch = step_flops(self.model, self.batch_size)
            except Exception as err:  # a metric only: training goes on without it
                rank_zero_warn(
                    f"FLOPs per step not counted ({type(err).__name__}: {err}): no FLOP/s or MFU"
                )
                self._flops_per_batch = 0
        return self._flops_per_batch or None

    def configure_model(self) -> None:
        if self.compile_model and not getattr(self, "_compiled", False):
            self.model.compile()  # in place: parameter names (and so checkpoints) stay as they are
            self._compiled = True

    def configure_optimizers(self):
        spec = self.optimizer_config
        self.lr_factor = optim.scale_lr(1.0, self.global_batch, spec.reference_batch)
        changes = {}
        mixed = isinstance(self.trainer.precision_plugin, MixedPrecision)
        if spec.fused is None and mixed and self.trainer.gradient_clip_val:
            # Lightning's mixed precision refuses to clip the gradients of a fused optimizer
            changes["fused"] = False
        opt = optim.build_optimizer(self.model, spec, lr_factor=self.lr_factor, **changes)
        total, per_epoch = self._optimizer_steps()
        schedule, warmup = optim.scheduler_from_config(
            opt,
            self.schedule_config,
            total_steps=total,
            steps_per_epoch=per_epoch,
            lr_factor=self.lr_factor,
            log=rank_zero_info,
        )
        self._steps = (total, per_epoch, warmup)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1},
        }

    def _optimizer_steps(self) -> tuple[int, float]:
        """(total, per epoch) optimizer steps, counted as `Trainer.estimated_stepping_batches`
        counts them, but from `len(train_dataloader())`: the Trainer property sets up the training
        iterator before a resumed checkpoint is restored, and with loader workers that iterator's
        first pass then replays epoch 0's order."""
        t = self.trainer
        datamodule = getattr(t, "datamodule", None)
        if datamodule is None:
            total = int(t.estimated_stepping_batches)
            return total, max(total / max(t.max_epochs or 1, 1), 1.0)
        batches = len(datamodule.train_dataloader())
        limit = t.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None:
            batches = int(batches * limit)
        per_epoch = max(math.ceil(batches / t.accumulate_grad_batches), 1)
        total = per_epoch * max(t.max_epochs or 1, 1)
        if t.max_steps is not None and t.max_steps > 0:
            total = min(total, t.max_steps) if t.max_epochs and t.max_epochs > 0 else t.max_steps
        return int(total), float(per_epoch)

    def on_fit_start(self) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total, per_epoch, warmup = getattr(self, "_steps", (0, 0, 0))
        opt, sched, t = self.optimizer_config, self.schedule_config, self.trainer
        rank_zero_info(
            f"[{type(self).__name__}] {type(self.model).__name__}: {n_params / 1e6:.2f}M "
            f"parameters ({n_train / 1e6:.2f}M trainable)\n"
            f"  global batch {self.global_batch} = {self.batch_size} per device x {t.world_size} "
            f"devices x {t.accumulate_grad_batches} accumulation\n"
            f"  lr {opt.base_lr * self.lr_factor:.3e} = base {opt.base_lr:.3e} x "
            f"{self.global_batch}/{opt.reference_batch}; warmup {warmup} steps "
            f"({sched.warmup_epochs:g} epochs) from {sched.warmup_lr * self.lr_factor:.3e}, "
            f"{sched.name.value} to {sched.min_lr * self.lr_factor:.3e}\n"
            f"  {total} optimizer steps ({per_epoch:.1f} per epoch), precision {t.precision}, "
            f"strategy {type(t.strategy).__name__}, grad clip {t.gradient_clip_val}"
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What rebuilds the model without Hydra (`ModelMeta`, in plain types: checkpoints load with
        weights_only=True; `weights.load_model` reads it back)."""
        checkpoint[CHECKPOINT_KEY] = ModelMeta.of(self.model).to_dict()

    # --------------------------------------------------------------------------------------- checks
    def _guard(self) -> Stability | None:
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, Stability)), None)

    def check_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss to backpropagate. With the `Stability` callback (`callbacks.stability`, on by
        default) every rank's loss is judged together and a bad step is skipped on all of them;
        without it, a NaN/inf loss stops the run at once (later steps would only spread it into the
        weights and the checkpoints)."""
        guard = self._guard()
        if guard is not None:
            return guard.judge_loss(self.trainer, self, loss)
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"non-finite loss ({loss.detach().float().item()}) at step {self.global_step} "
                f"(epoch {self.current_epoch}). Lower optim.base_lr, use "
                "trainer.precision=bf16-mixed instead of 16-mixed, keep optim.grad_clip, or "
                "resume from the last good checkpoint."
            )
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """After every callback's hook (they read the gradients first): the guard skips a bad step
        here."""
        guard = self._guard()
        if guard is not None:
            guard.before_optimizer_step(self.trainer, self)

    def log_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """`train/loss_step` at every step (NaN at a skipped non-finite one, never a stale value)
        and `train/loss_epoch`, the mean over the epoch's finite losses."""
        self.log(
            "train/loss_step",
            loss,
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=batch_size,
        )
        if torch.isfinite(loss.detach()).all():
            self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=batch_size)
