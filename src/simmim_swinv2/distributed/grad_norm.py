"""`train/grad_norm`: the global 2-norm of the gradients before clipping, every
`trainer.log_every_n_steps` optimizer steps, under every strategy. Where it can be read depends on
the strategy, which is why it lives here and not in the tasks: with whole gradients on every rank
(one device, DDP after its all-reduce) from `p.grad` just before the optimizer step (and before
Lightning clips); under DeepSpeed, which partitions the gradients (ZeRO-2/3: `p.grad` is None) and
clips inside its own step, as DeepSpeed's own pre-clip global norm, right after the step."""

from __future__ import annotations

import math

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info


class GradNorm(Callback):
    """Logs `train/grad_norm` (a scalar, the same on every rank), on step, at optimizer steps
    `0, n, 2n, ...` with `n = trainer.log_every_n_steps`."""

    def __init__(self) -> None:
        # DeepSpeed: the optimizer step whose norm was logged (accumulation repeats batch ends)
        self._logged_step = -1

    @staticmethod
    def _due(trainer, step: int) -> bool:
        return step % max(trainer.log_every_n_steps, 1) == 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy) or not self._due(
            trainer, trainer.global_step
        ):
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)
            # fp16: the scaler's
            if not math.isfinite(float(norm)) and trainer.precision not in ("16-mixed", "16"):
                # skipped steps are normal
                rank_zero_info(f"non-finite gradient norm at step {trainer.global_step}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(trainer.strategy, DeepSpeedStrategy):
            return
        step = trainer.global_step - 1  # the optimizer step just taken
        if step < 0 or step == self._logged_step or not self._due(trainer, step):
            return
        norm = trainer.strategy.deepspeed_engine.get_global_grad_norm()
        if norm is not None:
            pl_module.log("train/grad_norm", float(norm), on_step=True, on_epoch=False)
            self._logged_step = step
