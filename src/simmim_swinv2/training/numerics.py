"""Seeing divergence coming: per-stage statistics of the encoder, logged with the other training
metrics.

The Swin V2 paper (arXiv 2111.09883, Figure 2) shows activation amplitudes growing layer after layer
under pre-norm until training diverges, and residual post-norm plus scaled cosine attention keeping
them flat. What this logs is that measure per stage, with the gradient norms and the attention logit
scales that move before a loss does.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from ..distributed.numerics import gathered, group_grad_norms

MAX_LOGIT_SCALE = math.log(100.0)  # SwinV2's clamp of the attention logit scale (scale <= 100)


def encoder_stages(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The stages of the SwinV2 encoder inside a task's model (SimMIM, a classifier, or the encoder
    itself), each holding `blocks` with an `attn.logit_scale`; None when the model has none."""
    encoder = getattr(model, "encoder", model)
    stages = list(getattr(encoder, "layers", []))
    if not stages or not all(
        hasattr(b, "attn") for s in stages for b in getattr(s, "blocks", [None])
    ):
        return None
    return stages


class NumericsMonitor(L.Callback):
    """Every `every_n_steps` optimizer steps (None: at the steps Lightning writes logs,
    `trainer.log_every_n_steps`; 0: never), per stage `i` of the encoder:

    - `train/act_rms/stage{i}`: the root mean square of the stage's output activations
      `(B, H, W, C)`, from a forward hook on the stage (its last micro-batch under gradient
      accumulation);
    - `train/grad_norm/stage{i}`: the 2-norm of the gradients of the stage's parameters, before
      clipping;
    - `train/logit_scale_mean/stage{i}`, `train/logit_scale_max/stage{i}`: over the stage's blocks
      and heads, the attention logit scale `exp(min(logit_scale, log 100))` (SwinV2 clamps it at
      100; 10 at initialisation).

    The hooks are registered here, from outside the model, and do nothing on other steps; the values
    are logged as tensors, so reading them costs no extra device synchronisation. Under ZeRO,
    gradients are read from each rank's partitions (one all-reduce) and the logit scales are
    gathered (ZeRO-3)."""

    def __init__(self, every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(
                f"every_n_steps={every_n_steps} must be >= 0 (0: off; null: log_every_n_steps)"
            )
        self.every_n_steps = every_n_steps
        self.stages: list[torch.nn.Module] | None = None
        self._handles: list = []
        self._rms: dict[int, torch.Tensor] = {}
        self._grads: list[float] = []
        self._active = False
        self._step = -1  # trainer.global_step when the batch started

    def _due(self, trainer, step: int) -> bool:
        n = trainer.log_every_n_steps if self.every_n_steps is None else self.every_n_steps
        return (
            n > 0 and (step + 1) % n == 0
        )  # Lightning writes a step's logs when (step + 1) % n == 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self._handles:
            return
        self.stages = encoder_stages(getattr(pl_module, "model", pl_module))
        if self.stages is None:
            rank_zero_warn(
                "NumericsMonitor: no SwinV2 encoder stages found in the model; nothing is logged"
            )
            return
        for i, stage_module in enumerate(self.stages):
            self._handles.append(stage_module.register_forward_hook(self._hook(i)))

    def _hook(self, index: int):
        def record(module, inputs, output) -> None:
            if self._active:
                self._rms[index] = output.detach().float().square().mean().sqrt()

        return record

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.stages = [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step = trainer.global_step
        self._active = self.stages is not None and self._due(trainer, self._step)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self._active:  # gradients are complete (and, under ZeRO, still partitioned) only here
            self._grads = group_grad_norms(trainer, [list(s.parameters()) for s in self.stages])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._active or trainer.global_step == self._step:
            return  # not logged at this step, or inside gradient accumulation
        self._active = False
        metrics = {f"train/act_rms/stage{i}": v for i, v in sorted(self._rms.items())}
        metrics.update({f"train/grad_norm/stage{i}": v for i, v in enumerate(self._grads)})
        scales = [[b.attn.logit_scale for b in s.blocks] for s in self.stages]
        with gathered(trainer, [p for stage in scales for p in stage]):
            for i, stage in enumerate(scales):
                values = (
                    torch.cat([p.detach().float().flatten() for p in stage])
                    .clamp(max=MAX_LOGIT_SCALE)
                    .exp()
                )
                metrics[f"train/logit_scale_mean/stage{i}"] = values.mean()
                metrics[f"train/logit_scale_max/stage{i}"] = values.max()
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self._rms, self._grads = {}, []
