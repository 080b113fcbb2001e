"""The strategy-specific half of training's numerics (`training/stability.py`,
`training/numerics.py`): skipping one optimizer step on every rank, the gradient norm a step saw,
gradients and parameters read per group of parameters, and whether the weights are finite, under one
device, DDP and DeepSpeed ZeRO alike.

Who owns the optimizer step decides how a step is skipped, which is why this lives here:

- One device, DDP (and Lightning's own gradient accumulation): after DDP's all-reduce every rank
  holds the same whole gradients before the step (`on_before_optimizer_step`). Their norm is read
  there, and a skipped step's gradients are set to None: torch's optimizers leave a parameter
  without a gradient untouched (no moment update, no weight decay, no step count), so the step does
  nothing. The scheduler and the step counter still advance.
- DeepSpeed steps its own optimizer (`engine.step()`, after that hook) over partitioned gradients
  (ZeRO-2/3: `p.grad` is None). Its ZeRO optimizers drop a step whose gradient norm is not finite,
  on every rank together (norm and overflow flag are all-reduced), and clear the partitioned
  gradients (DeepSpeed 0.19: `DeepSpeedZeroOptimizer.step`, stage 3's `step`; in bf16 with
  `bf16.check_grad_overflow`, its default). A step decided to be skipped before backward is handed
  to that path: a hook on the loss makes every gradient NaN. The engine's `skipped_steps` counter
  then says whether the step was dropped.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

_NAN = float("nan")


def owns_step(trainer) -> bool:
    """True when the strategy steps the optimizer itself (DeepSpeed): gradients are not whole in
    `p.grad`."""
    return isinstance(trainer.strategy, DeepSpeedStrategy)


def scaler_skips_overflow(trainer) -> bool:
    """fp16 with a dynamic loss scale: a non-finite gradient is the loss scaler's normal business
    (it drops the step and lowers the scale), not a sign of divergence."""
    return str(trainer.precision) in ("16-mixed", "16", "16-true")


def poison_backward(loss: torch.Tensor) -> None:
    """Make every gradient of `loss`'s backward NaN (a hook on its gradient), leaving its value
    alone."""
    loss.register_hook(lambda grad: torch.full_like(grad, _NAN))


def mark_skipped(trainer, loss: torch.Tensor) -> None:
    """Before backward, on every rank: the step this loss belongs to is to be skipped. Under
    DeepSpeed its gradients are made NaN, which DeepSpeed's overflow check drops on every rank;
    elsewhere nothing is needed here (`drop_gradients` acts before the step)."""
    if owns_step(trainer):
        poison_backward(loss)


def grad_norm(trainer, module: torch.nn.Module) -> float | None:
    """The global 2-norm of the gradients before the step (called from `on_before_optimizer_step`),
    or None where it is only known after the step (DeepSpeed: `step_result`)."""
    if owns_step(trainer):
        return None
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return None
    return float(torch.nn.utils.get_total_norm(grads, norm_type=2.0))


def drop_gradients(trainer, module: torch.nn.Module) -> None:
    """Skip the coming optimizer step (called from `on_before_optimizer_step`, on every rank alike):
    gradients to None. Under DeepSpeed the step was marked before backward (`mark_skipped`)."""
    if not owns_step(trainer):
        for p in module.parameters():
            p.grad = None


class EngineSkips:
    """Reads whether DeepSpeed dropped the step just taken (its `skipped_steps` counter) and the
    step's gradient norm (inf after a dropped step). Elsewhere `step_result` is `(None, None)`: the
    step's fate is known before it."""

    def __init__(self) -> None:
        self._seen: int | None = None

    def step_result(self, trainer) -> tuple[bool | None, float | None]:
        if not owns_step(trainer):
            return None, None
        engine = trainer.strategy.deepspeed_engine
        count = int(engine.skipped_steps)
        skipped = self._seen is not None and count > self._seen
        self._seen = count
        norm = engine.get_global_grad_norm()
        return skipped, (None if norm is None else float(norm))

    @staticmethod
    def applied_anyway(step: int, reason: str) -> RuntimeError:
        """The error for a step the engine applied although the policy had it skipped."""
        return RuntimeError(
            f"step {step} was to be skipped ({reason}) but DeepSpeed applied it: its overflow "
            "check is off (set bf16.check_grad_overflow: true in the DeepSpeed config)"
        )

    def reset(self, trainer) -> None:
        """Forget the counter (after a checkpoint is loaded into the engine, which restores it)."""
        self._seen = (
            int(trainer.strategy.deepspeed_engine.skipped_steps) if owns_step(trainer) else None
        )


def _local_grad(p: torch.nn.Parameter) -> torch.Tensor | None:
    """This rank's part of `p`'s gradient: whole (`p.grad`), or under ZeRO its partition (DeepSpeed
    0.19: `safe_get_local_grad` for stage 3; for stages 1/2 the fragment the optimizer's flat
    partition holds, as `deepspeed.utils.tensor_fragment.get_full_hp_grad` cuts it before its
    all-reduce)."""
    if p.grad is not None:
        return p.grad
    if hasattr(p, "ds_id"):
        from deepspeed.utils import safe_get_local_grad

        return safe_get_local_grad(p)
    mapping = getattr(p, "_hp_mapping", None)
    if mapping is None:
        return None
    fragment = mapping.get_lp_grad_fragment(p._index_in_param_group).flatten()
    where = mapping.lp_fragment_address
    if fragment.numel() == p.numel():  # a whole gradient on every rank: only this rank's slice
        fragment = fragment.narrow(0, where.start, where.numel)
    return fragment


def group_grad_norms(trainer, groups: Sequence[Iterable[torch.nn.Parameter]]) -> list[float]:
    """The 2-norm of the gradients of each group of parameters, before the step
    (`on_before_optimizer_step`). Whole gradients are read as they are; under ZeRO, each rank's
    partitions, summed over ranks by one all-reduce (every rank must call it)."""
    device = trainer.strategy.root_device
    sums = torch.zeros(len(groups), dtype=torch.float64, device=device)
    for i, params in enumerate(groups):
        parts = [g for p in params if (g := _local_grad(p)) is not None and g.numel()]
        if parts:
            sums[i] = torch.nn.utils.get_total_norm(parts, norm_type=2.0).double().square()
    if owns_step(trainer) and trainer.world_size > 1:
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
    return [math.sqrt(v) for v in sums.tolist()]


@contextlib.contextmanager
def gathered(trainer, params: Sequence[torch.nn.Parameter]):
    """The whole `params` inside the block (ZeRO-3 partitions them: gathered, a collective every
    rank enters; elsewhere nothing to do)."""
    if owns_step(trainer) and any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(params), modifier_rank=None):
            yield
    else:
        yield


def weights_finite(trainer, module: torch.nn.Module) -> bool:
    """Whether every weight is finite, on every rank (ZeRO-3 holds a partition per rank: its
    `ds_tensor`). One pass over the weights and a boolean all-reduce; every rank must call it."""
    tensors = [getattr(p, "ds_tensor", p).detach() for p in module.parameters()]
    tensors = [t for t in tensors if t.numel() and t.is_floating_point()]
    finite = not tensors or bool(
        torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=math.inf))
    )
    if trainer.world_size > 1:
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
    return finite
