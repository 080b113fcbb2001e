"""What pretraining and fine-tuning share: the official optimisation recipe (no-decay groups, LR scaled by the
global batch, per-iteration warmup + schedule), a stop on non-finite loss, and the start-up summary of the derived
quantities. Nothing here depends on the strategy (`distributed/` owns that, the gradient norm included)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ..weights.meta import CHECKPOINT_KEY, ModelMeta
from . import optim


@dataclass
class OptimizerSpec:
    """`base_lr`, like `warmup_lr`/`min_lr` below, is per 512 images: the run uses `x * global_batch / 512`."""

    name: str = "adamw"
    base_lr: float = 2e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    layer_decay: float | None = None
    grad_clip: float | None = 5.0  # applied by the Trainer (gradient_clip_val); here for the summary


@dataclass
class ScheduleSpec:
    name: str = "cosine"
    warmup_epochs: float = 10
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    milestones: list[float] = field(default_factory=list)  # epochs, for multistep
    gamma: float = 0.1


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite."""


class TrainTask(L.LightningModule):
    """Base class: subclasses implement `training_step`/`validation_step` and call `check_loss`."""

    def __init__(self, model: torch.nn.Module, optimizer: OptimizerSpec, scheduler: ScheduleSpec,
                 batch_size: int, compile: bool = False) -> None:
        super().__init__()
        self.model = model
        self.optimizer_spec = optimizer
        self.schedule_spec = scheduler
        self.batch_size = batch_size
        self.compile_model = compile
        self.lr_factor = 1.0

    # ------------------------------------------------------------------------------------------ set-up
    @property
    def global_batch(self) -> int:
        trainer = self.trainer
        return self.batch_size * trainer.world_size * trainer.accumulate_grad_batches

    def configure_model(self) -> None:
        if self.compile_model and not getattr(self, "_compiled", False):
            self.model.compile()  # in place: parameter names (and so checkpoints) stay as they are
            self._compiled = True

    def configure_optimizers(self):
        spec, sched = self.optimizer_spec, self.schedule_spec
        self.lr_factor = optim.scale_lr(1.0, self.global_batch)
        opt = optim.build_optimizer(
            self.model, name=spec.name, base_lr=spec.base_lr * self.lr_factor, weight_decay=spec.weight_decay,
            betas=tuple(spec.betas), eps=spec.eps, layer_decay=spec.layer_decay)
        total, per_epoch = self._optimizer_steps()
        warmup = round(sched.warmup_epochs * per_epoch)
        if warmup > total:  # a short run (trainer.max_steps=3, a smoke test): warm up over the whole run
            rank_zero_info(f"warmup of {sched.warmup_epochs:g} epochs ({warmup} steps) is longer than the run "
                           f"({total} steps): clamped to {total} steps")
            warmup = total
        schedule = optim.build_scheduler(
            opt, name=sched.name, total_steps=total, warmup_steps=warmup,
            warmup_lr=sched.warmup_lr * self.lr_factor, min_lr=sched.min_lr * self.lr_factor,
            milestones=[round(m * per_epoch) for m in sched.milestones], gamma=sched.gamma)
        self._steps = (total, per_epoch, warmup)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step", "frequency": 1}}

    def _optimizer_steps(self) -> tuple[int, float]:
        """(total, per epoch) optimizer steps, counted as `Trainer.estimated_stepping_batches` counts them, but
        from `len(train_dataloader())`: the Trainer property sets up the training iterator before a resumed
        checkpoint is restored, and with loader workers that iterator's first pass then replays epoch 0's order."""
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
        t = self.trainer
        rank_zero_info(
            f"[{type(self).__name__}] {type(self.model).__name__}: {n_params / 1e6:.2f}M parameters "
            f"({n_train / 1e6:.2f}M trainable)\n"
            f"  global batch {self.global_batch} = {self.batch_size} per device x {t.world_size} devices "
            f"x {t.accumulate_grad_batches} accumulation\n"
            f"  lr {self.optimizer_spec.base_lr * self.lr_factor:.3e} = base {self.optimizer_spec.base_lr:.3e} "
            f"x {self.global_batch}/512; warmup {warmup} steps ({self.schedule_spec.warmup_epochs:g} epochs) from "
            f"{self.schedule_spec.warmup_lr * self.lr_factor:.3e}, {self.schedule_spec.name} to "
            f"{self.schedule_spec.min_lr * self.lr_factor:.3e}\n"
            f"  {total} optimizer steps ({per_epoch:.1f} per epoch), precision {t.precision}, "
            f"strategy {type(t.strategy).__name__}, grad clip {t.gradient_clip_val}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """What rebuilds the model without Hydra (`ModelMeta`, in plain types: checkpoints load with
        weights_only=True; `weights.load_model` reads it back)."""
        checkpoint[CHECKPOINT_KEY] = ModelMeta.of(self.model).to_dict()

    # ------------------------------------------------------------------------------------------ checks
    def check_loss(self, loss: torch.Tensor) -> None:
        """Stop at once on NaN/inf: later steps would only spread it into the weights and the checkpoints."""
        if not torch.isfinite(loss.detach()).all():
            raise NonFiniteLossError(
                f"non-finite loss ({loss.detach().float().item()}) at step {self.global_step} "
                f"(epoch {self.current_epoch}). Lower optim.base_lr, use trainer.precision=bf16-mixed instead "
                f"of 16-mixed, keep optim.grad_clip, or resume from the last good checkpoint.")
