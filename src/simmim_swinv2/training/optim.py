"""Parameter groups (weight-decay exclusions, layer-wise LR decay), the optimizer and per-iteration
LR schedules, and their configuration: `OptimConfig` and `ScheduleConfig` are the schema of the
`optim` and `scheduler` config groups (registered with Hydra by `simmim_swinv2.config.schema`) and
what the tasks receive.

Pure functions over modules and optimizers: no Lightning, no Hydra. The recipe (the official
microsoft/Swin-Transformer `optimizer.py` and `lr_scheduler.py`, SimMIM paper arXiv 2111.09886):
AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0.05 on all but 1-D parameters and the
position/scale parameters the model declares (`no_weight_decay()`, as timm's models do); base LR,
warmup LR and min LR all given per `REFERENCE_BATCH` (512) images and scaled by `global_batch / 512`
(`scale_lr`); schedules stepped once per optimizer step.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

# the LR scaling rule lives beside the global batch it scales with (re-exported here for the
# optimizer's users)
from ..distributed.planning import REFERENCE_BATCH
from ..distributed.planning import scale_lr as scale_lr
from ..models.swinv2 import SwinV2Encoder


class ConfigEnum(str, Enum):
    """A config choice: compares equal to its name (`cfg.scheduler.name == "cosine"`) and prints as
    it. Stored in checkpoints only as `.value` (a plain str), which `torch.load(weights_only=True)`
    reads."""

    def __str__(self) -> str:
        return self.value


class OptimizerName(ConfigEnum):
    """The optimizers a config may name (`optim.name`). Which implementation steps them under
    optimizer offload is the distribution strategy's business (distributed/strategy.py), not the
    config's."""

    adamw = "adamw"
    sgd = "sgd"


class ScheduleName(ConfigEnum):
    cosine = "cosine"
    multistep = "multistep"
    constant = "constant"


def _enum(kind: type[Enum], value, what: str):
    try:
        return kind(value.lower() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(
            f"unknown {what} {value!r}; choose one of {', '.join(m.value for m in kind)}"
        ) from None


@dataclass
class OptimConfig:
    """The optimizer (config group `optim`): AdamW as in the official recipes, or SGD with Nesterov
    momentum (the official code's other option). LRs are per `REFERENCE_BATCH` images."""

    name: OptimizerName = OptimizerName.adamw
    base_lr: float = 2e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    eps: float = 1e-8  # AdamW
    # SGD (microsoft/Swin-Transformer TRAIN.OPTIMIZER.MOMENTUM)
    momentum: float = 0.9
    # fine-tuning: layer-wise LR decay, e.g. 0.9 (see `param_groups`)
    layer_decay: float | None = None
    # the batch the LRs are given for (scaled to the global batch)
    reference_batch: int = REFERENCE_BATCH
    # max gradient norm; the Trainer applies it (trainer.gradient_clip_val)
    grad_clip: float | None = 5.0
    # None: the fused kernel when every parameter is on a CUDA device or the CPU (torch's fused
    # AdamW/SGD run on both); not under mixed precision with clipping (Lightning refuses)
    fused: bool | None = None

    def __post_init__(self) -> None:
        self.name = _enum(OptimizerName, self.name, "optimizer")
        self.betas = tuple(self.betas)


@dataclass
class ScheduleConfig:
    """The LR schedule (config group `scheduler`), stepped every optimizer step: linear warmup over
    `warmup_epochs` from `warmup_lr`, then `cosine` to `min_lr`, `multistep` (x `gamma` at each of
    `milestones`, in epochs) or `constant`. `warmup_lr` and `min_lr` are per `REFERENCE_BATCH`
    images, like `OptimConfig.base_lr`. `warmup_prefix` and `scale_warmup_min`: see
    `build_scheduler`."""

    name: ScheduleName = ScheduleName.cosine
    warmup_epochs: float = 10.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.1
    warmup_prefix: bool = True
    scale_warmup_min: bool = True

    def __post_init__(self) -> None:
        self.name = _enum(ScheduleName, self.name, "schedule")


def declared_no_decay(model: nn.Module) -> set[str]:
    """Full names of the parameters that `model`'s modules keep out of weight decay: the union of
    each module's `no_weight_decay()` (timm's convention; `SwinV2Encoder` declares its own),
    prefixed."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        declare = getattr(module, "no_weight_decay", None)
        if callable(declare):
            names.update(f"{prefix}.{n}" if prefix else n for n in declare())
    return names


def decays(name: str, param: torch.Tensor, no_decay: set[str]) -> bool:
    """Whether `param` gets weight decay: not 1-D and not declared (`no_decay`, see
    `declared_no_decay`)."""
    return param.ndim > 1 and name not in no_decay


def layer_id(name: str, depths: Sequence[int]) -> int:
    """Layer id of an encoder parameter (`name` relative to the encoder, timm layout) in the
    official numbering.

    `mask_token`, `absolute_pos_embed`, `patch_embed.*` → 0; block b of stage s →
    `sum(depths[:s]) + b + 1`; `layers.{s}.downsample.*` (timm opens stage s with the merge the
    official code runs at the end of stage s-1) → `sum(depths[:s])`, the id of the block before it;
    anything else (final norm) → `sum(depths) + 1`.
    """
    num_layers = sum(depths)
    if name in ("mask_token", "absolute_pos_embed") or name.startswith("patch_embed."):
        return 0
    parts = name.split(".")
    if parts[0] != "layers" or len(parts) < 3:
        return num_layers + 1
    stage = int(parts[1])
    if stage >= len(depths):
        raise ValueError(
            f"{name!r} is in stage {stage} but depths {tuple(depths)} has {len(depths)} stages: "
            f"pass the depths of the model the parameter comes from"
        )
    if parts[2] == "downsample":
        return sum(depths[:stage])
    if parts[2] == "blocks":
        block = int(parts[3])
        if block >= depths[stage]:
            raise ValueError(
                f"{name!r} is block {block} of stage {stage}, which has {depths[stage]} blocks in "
                f"depths {tuple(depths)}: pass the depths of the model the parameter comes from"
            )
        return sum(depths[:stage]) + block + 1
    return num_layers + 1


def _find_encoder(model: nn.Module) -> tuple[str, SwinV2Encoder] | None:
    """The first `SwinV2Encoder` in `model` and its name prefix (`""` for a bare encoder,
    `"encoder."`)."""
    for prefix, module in model.named_modules():
        if isinstance(module, SwinV2Encoder):
            return (prefix + "." if prefix else ""), module
    return None


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    layer_decay: float | None = None,
    base_lr: float | None = None,
) -> list[dict]:
    """Optimizer parameter groups for the trainable parameters of `model`.

    Without `layer_decay`: a `decay` and a `no_decay` group (see `decays`). With it: one group per
    (layer id, decay) pair, the encoder's parameters numbered by `layer_id` and everything outside
    the encoder (head, decoder) at `sum(depths) + 1`, with `lr_scale = layer_decay ** (sum(depths) +
    1 - id)` (1 for the last layer). Every group carries `name`, `weight_decay`, `lr_scale` (and
    `layer_id` with layer decay); `lr = base_lr * lr_scale` when `base_lr` given.
    """
    declared = declared_no_decay(model)
    found = _find_encoder(model) if layer_decay is not None else None
    if layer_decay is not None and found is None:
        raise ValueError(
            f"layer_decay needs a model containing a SwinV2Encoder, got {type(model).__name__}; "
            f"pass layer_decay=None for plain weight-decay groups"
        )
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = decays(name, param, declared)
        group_id, scale = 0, 1.0
        if found is not None:
            prefix, encoder = found
            depths = encoder.cfg.depths
            last = sum(depths) + 1
            group_id = layer_id(name[len(prefix) :], depths) if name.startswith(prefix) else last
            scale = layer_decay ** (last - group_id)
        key = (group_id, decay)
        if key not in groups:
            kind = "decay" if decay else "no_decay"
            groups[key] = {
                "params": [],
                "name": kind if found is None else f"layer_{group_id}_{kind}",
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
            }
            if found is not None:
                groups[key]["layer_id"] = group_id
            if base_lr is not None:
                groups[key]["lr"] = base_lr * scale
        groups[key]["params"].append(param)
    if not groups:
        raise ValueError(
            f"{type(model).__name__} has no parameters with requires_grad=True: nothing to optimize"
        )
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def build_optimizer(
    model: nn.Module, config: OptimConfig | None = None, *, lr_factor: float = 1.0, **changes
) -> torch.optim.Optimizer:
    """The optimizer of `config` (default: `OptimConfig()`, with `changes` to its fields applied,
    e.g. `build_optimizer(model, base_lr=1e-3, layer_decay=0.8)`) over `param_groups`, each group at
    `base_lr * lr_factor * lr_scale` (`lr_factor`: `scale_lr(1, global_batch)`). (Under optimizer
    offload the strategy steps the same AdamW on the CPU: `distributed.strategy.cpu_adam_like`.)"""
    config = replace(config or OptimConfig(), **changes)
    lr = config.base_lr * lr_factor
    groups = param_groups(model, config.weight_decay, layer_decay=config.layer_decay, base_lr=lr)
    fused = config.fused
    if fused is None:
        # fused: one kernel over all parameters (faster than foreach, on the CPU too:
        # docs/benchmarks.md)
        params = [p for g in groups for p in g["params"]]
        fused = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    if config.name is OptimizerName.sgd:
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=config.momentum,
            nesterov=True,
            weight_decay=config.weight_decay,
            fused=fused,
        )
    return torch.optim.AdamW(
        groups,
        lr=lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        fused=fused,
    )


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """Optimizer steps in `epochs` (fractional epochs allowed), rounded to the nearest step."""
    return round(epochs * steps_per_epoch)


class LRFactor:
    """The LR of one param group at a step, as a multiple of the group's peak LR.

    A plain object rather than a lambda so that `LambdaLR.state_dict()` saves its fields (it drops
    lambdas) and a resumed run continues the saved schedule. `start` and `floor` are the warmup
    start and the cosine end as fractions of the peak."""

    def __init__(
        self,
        name: str,
        total_steps: int,
        warmup_steps: int,
        start: float,
        floor: float,
        milestones: Sequence[int],
        gamma: float,
        warmup_prefix: bool,
    ) -> None:
        self.name, self.total_steps, self.warmup_steps = name, total_steps, warmup_steps
        self.start, self.floor, self.milestones, self.gamma = start, floor, list(milestones), gamma
        self.warmup_prefix = warmup_prefix

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (1.0 - self.start) * step / self.warmup_steps
        if self.name == "multistep":
            return self.gamma ** bisect_right(self.milestones, step)
        if self.name == "cosine":
            t0 = self.warmup_steps if self.warmup_prefix else 0
            progress = min((step - t0) / max(self.total_steps - t0, 1), 1.0)
            return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


# Why not timm's schedulers (`create_scheduler_v2(updates_per_epoch=...)`, `step_update`): they
# multiply a group's whole curve by its `lr_scale`, so the official recipe's absolute warmup and min
# LR (`scale_warmup_min=False`) cannot be expressed, and they are not torch LR schedulers that
# Lightning steps and checkpoints by itself.
class IterationLR(LambdaLR):
    """`LambdaLR` whose `load_state_dict` also sets each group's LR for the restored step, so a
    resumed run starts at the right LR whether the optimizer state is loaded before the scheduler is
    built, after, or not at all (plain `LambdaLR` leaves the LR its constructor set until the next
    `step()`)."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._last_lr = [
            base * f(self.last_epoch) for base, f in zip(self.base_lrs, self.lr_lambdas)
        ]
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str | ScheduleName = "cosine",
    total_steps: int,
    warmup_steps: int = 0,
    warmup_lr: float = 0.0,
    min_lr: float = 0.0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_prefix: bool = True,
    scale_warmup_min: bool = True,
) -> IterationLR:
    """A per-iteration `LambdaLR` (`IterationLR`): linear warmup from `warmup_lr` to each group's
    peak LR (its `lr` when the scheduler is built) over `warmup_steps`, then `cosine` to `min_lr` at
    `total_steps`, `multistep` (×`gamma` at each of `milestones`, absolute step numbers), or
    `constant`. Call `.step()` after every optimizer step.

    `scale_warmup_min=True` (default): `warmup_lr` and `min_lr` are multiplied by each group's
    `lr_scale`, so every layer follows the same curve scaled (BEiT/MAE and timm >= 0.6, where the
    scheduler applies `lr_scale`). `False` reproduces the official SimMIM/Swin code on its pinned
    timm 0.4.12: peaks are scaled per group but warmup and min LR are the same absolute values for
    all groups (for deep layers with strong decay the "min" can then exceed the peak).
    `warmup_prefix=True`: the cosine spans the steps after warmup; `False` is the official SimMIM
    cosine over all `total_steps`, which drops below the peak right after warmup.
    """
    # a plain str: LRFactor is saved in checkpoints
    name = _enum(ScheduleName, name, "schedule").value
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got total_steps="
            f"{total_steps}, warmup_steps={warmup_steps}: check epochs and steps_per_epoch"
        )
    milestones = sorted(int(m) for m in milestones)
    if name == "multistep" and (not milestones or milestones[0] < warmup_steps):
        raise ValueError(
            f"multistep needs milestones (in steps) at or after warmup ({warmup_steps} steps), got "
            f"{milestones}: convert epochs with epochs_to_steps"
        )
    factors = []
    for group in optimizer.param_groups:
        # initial_lr: set by an earlier scheduler / loaded state
        peak = group.get("initial_lr", group["lr"])
        scale = group.get("lr_scale", 1.0) if scale_warmup_min else 1.0
        start, floor = (
            (0.0, 0.0) if peak == 0 else (warmup_lr * scale / peak, min_lr * scale / peak)
        )
        factors.append(
            LRFactor(
                name, total_steps, warmup_steps, start, floor, milestones, gamma, warmup_prefix
            )
        )
    return IterationLR(optimizer, factors)


def scheduler_from_config(
    optimizer: torch.optim.Optimizer,
    config: ScheduleConfig,
    *,
    total_steps: int,
    steps_per_epoch: float,
    lr_factor: float = 1.0,
    log: Callable[[str], None] = print,
) -> tuple[IterationLR, int]:
    """`build_scheduler` for a `ScheduleConfig`: its epochs become optimizer steps
    (`steps_per_epoch`), its LRs per `REFERENCE_BATCH` images are multiplied by `lr_factor`. A
    warmup longer than the run (`trainer.max_steps=3`, a smoke test) is clamped to the run, and
    `log` says so. Returns the scheduler and its number of warmup steps."""
    warmup = epochs_to_steps(config.warmup_epochs, steps_per_epoch)
    if warmup > total_steps:
        log(
            f"warmup of {config.warmup_epochs:g} epochs ({warmup} steps) is longer than the run "
            f"({total_steps} steps): clamped to {total_steps} steps"
        )
        warmup = total_steps
    scheduler = build_scheduler(
        optimizer,
        name=config.name,
        total_steps=total_steps,
        warmup_steps=warmup,
        warmup_lr=config.warmup_lr * lr_factor,
        min_lr=config.min_lr * lr_factor,
        milestones=[epochs_to_steps(m, steps_per_epoch) for m in config.milestones],
        gamma=config.gamma,
        warmup_prefix=config.warmup_prefix,
        scale_warmup_min=config.scale_warmup_min,
    )
    return scheduler, warmup
