"""Memory and batch plan of a pretraining config, before anything is built on a GPU (pure
functions).

Per GPU: model states (weights + gradients + optimizer states, divided as the ZeRO stage divides
them)
+ activations at the per-device batch + a fixed allowance for the CUDA context and allocator slack.

Model-state bytes per parameter with AdamW (the ZeRO paper's accounting, Rajbhandari et al., arXiv
1910.02054, section 3.1: 16 B for mixed precision, SwinV2-G 3.0B -> 48 GB):

| precision                  | weights | grads | optimizer states            | total |
|----------------------------|---------|-------|-----------------------------|-------|
| 32-true                    | 4       | 4     | 8 (m, v)                    | 16    |
| 16-mixed / bf16-mixed      | 2       | 2     | 12 (fp32 master, m, v)      | 16    |
| 16-true / bf16-true        | 2       | 2     | 4 (m, v in half)            | 8     |

(Lightning's AMP under DDP keeps fp32 weights and grads instead, 4 + 4 + 8: the same 16 B.) ZeRO
stage 1 divides optimizer states by the number of GPUs N, stage 2 also gradients, stage 3 also
weights (plus a working set: the largest block gathered in half precision, weights and gradients).
`offload_optimizer` moves optimizer states to host memory, `offload_parameters` (stage 3) the
weights.

Activations per sample (bytes saved for backward), a formula over the encoder's blocks; for stage s
with T_s tokens, width C_s, h_s heads and window w_s, summed over its blocks:
    no checkpointing:  e * (21 * T*C + 1.6 * T*h*w^2) + e * 1.1 * 3*H*W
    checkpointing:     e * 1.5 * T*C (block inputs)  + e * 5.1 * 3*H*W
                       + one block recomputed (formula above)
e = 4 bytes (fp32); x 1.6 under mixed precision (autocast keeps both the fp32 and the half copy of
many tensors). Calibrated on the CPU, not on CUDA: bytes of the tensors autograd saves
(saved_tensors_hooks) in a forward of SimMIM with the debug/tiny/small/base sizes at 64-192 px,
window 4-12 (fit within 5% on tiny/small/base, 17% on debug); bf16 autocast measured 1.34-1.85x the
fp32 bytes. CUDA's fused attention saves less than the CPU's math path, so the attention term is on
the safe side there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from .disk import GIB, CheckpointPlan, checkpoint_plan

CUDA_OVERHEAD_BYTES = 1.5 * GIB  # CUDA context, cuBLAS/NCCL workspaces, allocator fragmentation
ACT_TC, ACT_ATTN, ACT_PIX = 21.0, 1.6, 1.1  # no checkpointing, per fp32 element
CKPT_TC, CKPT_PIX = 1.5, 5.1  # checkpointing: what stays saved per block
MIXED_ACT_FACTOR = 1.6

# The batch every learning rate in the configs is given for (microsoft/SimMIM main_simmim.py,
# microsoft/Swin-Transformer main_simmim_pt.py: "linear scale the learning rate according to total
# batch size", `* TOTAL_BATCH / 512.0`).
REFERENCE_BATCH = 512


def scale_lr(base_lr: float, global_batch: int, reference_batch: int = REFERENCE_BATCH) -> float:
    """`base_lr * global_batch / reference_batch`, for the base, warmup and min LR alike
    (`global_batch`: GPUs x per-GPU batch x accumulation). The one place the rule lives:
    `training.optim` and `Plan.lr` call it."""
    if global_batch < 1 or reference_batch < 1:
        raise ValueError(
            f"global_batch ({global_batch}) and reference_batch ({reference_batch}) must be >= 1"
        )
    return base_lr * global_batch / reference_batch


# bytes per parameter: (weights, gradients, optimizer states)
STATE_BYTES = {"32": (4, 4, 8), "mixed": (2, 2, 12), "half": (2, 2, 4)}


@dataclass(frozen=True)
class Strategy:
    name: str
    stage: int = 0  # 0 = every GPU holds everything (DDP, single device)
    offload_optimizer: bool = False
    offload_parameters: bool = False


@dataclass(frozen=True)
class Plan:
    params: int
    largest_block_params: int
    batch_size: int
    devices: int
    nodes: int
    accumulate: int
    base_lr: float
    reference_batch: int  # optim.reference_batch: the batch base_lr is given for
    precision: str
    strategy: Strategy
    grad_checkpointing: bool
    act_bytes_per_sample: float
    gpu_memory_bytes: float | None = None
    on_cpu: bool = False  # a CPU run: its processes share the host's memory, no CUDA context
    host_memory_bytes: float | None = None
    checkpoint: CheckpointPlan | None = None
    img_size: tuple[int, int] = (0, 0)
    windows: tuple[int, ...] = ()  # per stage, as clamped to the stage at img_size
    grids: tuple[tuple[int, int], ...] = ()  # per stage, its token rows and columns at img_size

    @property
    def unit(self) -> str:  # what the per-device figures are per
        return "process" if self.on_cpu else "GPU"

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accumulate

    @property
    def lr(self) -> float:
        return scale_lr(self.base_lr, self.global_batch, self.reference_batch)

    def state_bytes(self) -> dict[str, float]:
        """Per-GPU bytes of weights, gradients, optimizer states and the ZeRO-3 working set."""
        w, g, o = (b * self.params for b in STATE_BYTES[precision_kind(self.precision)])
        n, s = self.world_size, self.strategy
        if s.stage >= 1:
            o /= n
        if s.stage >= 2:
            g /= n
        if s.stage >= 3:
            w /= n
        if s.offload_optimizer:
            o = 0.0
        if s.offload_parameters and s.stage >= 3:
            w = 0.0
        work = 2 * 2 * self.largest_block_params if s.stage >= 3 else 0.0
        return {"weights": w, "gradients": g, "optimizer": o, "zero3_working": work}

    def total_bytes(self) -> float:
        return (
            sum(self.state_bytes().values())
            + self.act_bytes_per_sample * self.batch_size
            + (0.0 if self.on_cpu else CUDA_OVERHEAD_BYTES)
        )

    def fits(self) -> bool | None:
        if self.on_cpu:  # the node's processes share its memory
            memory, need = self.host_memory_bytes, self.total_bytes() * self.devices
        else:
            memory, need = self.gpu_memory_bytes, self.total_bytes()
        return None if memory is None else need <= memory


def _is_deepspeed(strategy: Strategy) -> bool:
    return strategy.name == "DeepSpeedStrategy" or "deepspeed" in strategy.name.lower()


def precision_kind(precision) -> str:
    p = str(precision)
    if "mixed" in p:
        return "mixed"
    if p.startswith(("16", "bf16")) or p in ("half", "bf16"):
        return "half"
    return "32"


def parse_strategy(strategy) -> Strategy:
    """`cfg.trainer.strategy`: a string ("ddp", "auto", "deepspeed_stage_3_offload", "fsdp") or a
    node with `_target_` and `stage`, `offload_optimizer`, `offload_parameters`, or a DeepSpeed
    `config` dict with `zero_optimization.{stage, offload_optimizer, offload_param}`
    (conf/trainer/deepspeed_*.yaml)."""
    if strategy is None or isinstance(strategy, str):
        name = str(strategy or "auto")
        if name.startswith("deepspeed_stage_"):
            stage = int(name.split("_")[2])
            offload = name.endswith("offload")
            return Strategy(name, stage, offload, offload and stage == 3)
        if name.startswith("fsdp"):
            return Strategy(name, 3)
        return Strategy(name)
    get = strategy.get
    target = str(get("_target_", "")).rsplit(".", 1)[-1] or "custom"
    if "FSDP" in target:
        return Strategy(target, 3)
    # a DeepSpeed config dict takes precedence
    zero = (get("config") or {}).get("zero_optimization") or {}
    off = lambda v: (  # noqa: E731
        bool(v) and (not hasattr(v, "get") or v.get("device", "cpu") != "none")
    )
    return Strategy(
        target,
        int(zero.get("stage", get("stage", 0)) or 0),
        off(zero.get("offload_optimizer", get("offload_optimizer", False))),
        off(zero.get("offload_param", get("offload_parameters", False))),
    )


def _stage_shapes(mcfg):
    """(stage, depth, tokens, width, heads, window) of each stage: the model's own grid and window
    rule."""
    rows = zip(
        mcfg.depths, mcfg.stage_dims, mcfg.num_heads, mcfg.stage_resolutions, mcfg.stage_windows()
    )
    for s, (depth, width, heads, (h, w), win) in enumerate(rows):
        yield s, depth, h * w, width, heads, win


def activation_bytes_per_sample(mcfg, precision="32-true") -> float:
    """Bytes autograd keeps per sample for one forward of SimMIM (see the module docstring)."""
    elem = 4.0 * (MIXED_ACT_FACTOR if precision_kind(precision) == "mixed" else 1.0)
    pixels = 3 * mcfg.img_size[0] * mcfg.img_size[1]
    total, recompute = 0.0, 0.0
    for s, depth, tokens, width, heads, win in _stage_shapes(mcfg):
        block = ACT_TC * tokens * width + ACT_ATTN * tokens * heads * win * win
        if mcfg.grad_checkpointing[s]:
            total += depth * CKPT_TC * tokens * width
            recompute = max(recompute, block)
        else:
            total += depth * block
    pix = CKPT_PIX if any(mcfg.grad_checkpointing) else ACT_PIX
    return elem * (total + recompute + pix * pixels)


def count_parameters(mcfg) -> tuple[int, int]:
    """(SimMIM parameters, largest block's parameters), counted on the meta device (no memory)."""
    import torch

    from ..models import SimMIM

    with torch.device("meta"):
        model = SimMIM.from_config(mcfg)
    total = sum(p.numel() for p in model.parameters())
    blocks = [m for name, m in model.named_modules() if name.split(".")[-2:-1] == ["blocks"]]
    largest = max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0)
    return total, largest


def visible_devices(trainer_cfg) -> int:
    devices, accel = trainer_cfg.get("devices", "auto"), str(trainer_cfg.get("accelerator", "auto"))
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        return int(devices)
    if not isinstance(devices, (int, str)):  # a list of device ids
        return len(list(devices))
    if accel == "cpu":
        return 1
    import torch

    return max(torch.cuda.device_count(), 1)


def detect_gpu_memory(cfg) -> float | None:
    """Bytes of GPU 0: `plan.gpu_memory_gb` when set, else CUDA's; None on the CPU."""
    gb = (cfg.get("plan") or {}).get("gpu_memory_gb")
    if gb is not None:
        return float(gb) * 1e9
    if str(cfg.trainer.get("accelerator", "auto")) == "cpu":
        return None
    import torch

    return (
        float(torch.cuda.get_device_properties(0).total_memory)
        if torch.cuda.is_available()
        else None
    )


def runs_on_cpu(cfg) -> bool:
    """`accelerator: cpu`, or `auto` without CUDA, unless `plan.gpu_memory_gb` plans a GPU."""
    accel = cfg.trainer.get("accelerator", "auto")
    planned = (cfg.get("plan") or {}).get("gpu_memory_gb")
    if accel != "auto" or planned is not None:
        return planned is None and accel == "cpu"
    import torch

    return not torch.cuda.is_available()


def checkpoints_of(cfg, params: int) -> CheckpointPlan | None:
    """What the run's checkpoint callbacks keep of `params` parameters (`disk.checkpoint_plan`)."""
    strategy, precision = parse_strategy(cfg.trainer.get("strategy")), cfg.trainer.get("precision")
    half = precision_kind(precision or "32-true") == "half"
    return checkpoint_plan(cfg, params, deepspeed=_is_deepspeed(strategy), half=half)


def make_plan(cfg, **changes) -> Plan:
    """The plan of a composed pretrain config; `changes` replace Plan fields (what-if questions)."""
    from hydra.utils import instantiate

    mcfg = instantiate(cfg.model)
    if "grad_checkpointing" in changes:
        mcfg = mcfg.replace(grad_checkpointing=bool(changes["grad_checkpointing"]))
    params, largest = count_parameters(mcfg)
    t = cfg.trainer
    strategy, precision = parse_strategy(t.get("strategy")), str(t.get("precision", "32-true"))
    plan = Plan(
        params=params,
        largest_block_params=largest,
        batch_size=int(cfg.batch_size),
        devices=visible_devices(t),
        nodes=int(t.get("num_nodes", 1)),
        accumulate=int(t.get("accumulate_grad_batches", 1)),
        base_lr=float(cfg.optim.base_lr),
        reference_batch=int(cfg.optim.reference_batch),
        precision=precision,
        strategy=strategy,
        grad_checkpointing=any(mcfg.grad_checkpointing),
        act_bytes_per_sample=activation_bytes_per_sample(mcfg, t.get("precision", "32-true")),
        gpu_memory_bytes=detect_gpu_memory(cfg),
        on_cpu=runs_on_cpu(cfg),
        host_memory_bytes=float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
        checkpoint=checkpoints_of(cfg, params),
        img_size=tuple(mcfg.img_size),
        windows=tuple(win for *_, win in _stage_shapes(mcfg)),
        grids=mcfg.stage_resolutions,
    )
    rest = {k: v for k, v in changes.items() if k != "grad_checkpointing"}
    if "precision" in rest and "act_bytes_per_sample" not in rest:
        rest["act_bytes_per_sample"] = activation_bytes_per_sample(mcfg, rest["precision"])
    return replace(plan, **rest)


def zero_trainers() -> dict[str, Strategy]:
    """The trainer configs (`trainer=<name>`) whose strategy partitions with ZeRO, as Hydra composes
    them (defaults lists included), the least partitioned first: the choices `fitting_options`
    tries. Inside a Hydra app its config search path is used; elsewhere `config.CONFIG_DIR`."""
    from contextlib import ExitStack

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .. import CONFIG_DIR

    with ExitStack() as stack:
        if not GlobalHydra.instance().is_initialized():
            stack.enter_context(
                initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3")
            )
        names = GlobalHydra.instance().config_loader().get_group_options("trainer")
        found = {}
        for name in names:
            strategy = compose(overrides=[f"+trainer={name}"]).trainer.get("strategy")
            if (
                strategy is not None
                and not isinstance(strategy, str)
                and (s := parse_strategy(strategy)).stage > 0
            ):
                found[name] = s
    order = lambda item: (  # noqa: E731
        item[1].stage,
        item[1].offload_optimizer,
        item[1].offload_parameters,
        item[0],
    )
    return dict(sorted(found.items(), key=order))


def fitting_options(cfg, plan: Plan) -> list[str]:
    """Command-line overrides, fewest changes first, under which the plan fits the GPU."""
    mcfg_gc = plan.grad_checkpointing
    candidates: list[tuple[str, dict]] = []
    if not mcfg_gc:
        candidates.append(("model.grad_checkpointing=true", {"grad_checkpointing": True}))
    for name, s in zero_trainers().items():
        if s.stage > plan.strategy.stage or (
            s.offload_optimizer and not plan.strategy.offload_optimizer
        ):
            ch = {"strategy": s, "precision": "bf16-mixed"}
            candidates.append((f"trainer={name}", ch))
            if not mcfg_gc:
                candidates.append(
                    (
                        f"trainer={name} model.grad_checkpointing=true",
                        {**ch, "grad_checkpointing": True},
                    )
                )
    b = plan.batch_size // 2
    while b >= 1:
        candidates.append(
            (
                f"batch_size={b} "
                f"trainer.accumulate_grad_batches={plan.accumulate * plan.batch_size // b}",
                {"batch_size": b, "accumulate": plan.accumulate * plan.batch_size // b},
            )
        )
        b //= 2
    return [text for text, ch in candidates if make_plan(cfg, **ch).fits()]


class DoesNotFitError(ValueError):
    """The estimated memory per GPU exceeds the GPU's."""


def check_fits(cfg) -> Plan | None:
    """Refuse (before any model is built) a run whose estimate exceeds the GPU's memory, naming
    options that fit. No check on the CPU, when the GPU's memory is unknown, or with
    `plan.enforce=false`."""
    node = cfg.get("plan") or {}
    # CPU / unknown: nothing is built
    if not node.get("enforce", True) or detect_gpu_memory(cfg) is None:
        return None
    plan = make_plan(cfg)
    if plan.fits() is not False:
        return plan
    options = fitting_options(cfg, plan)
    hint = (
        ("; fits with: " + " | ".join(options[:4]))
        if options
        else "; nothing tried fits (more GPUs?)"
    )
    raise DoesNotFitError(
        f"estimated {plan.total_bytes() / GIB:.1f} GiB per GPU > "
        f"{plan.gpu_memory_bytes / GIB:.1f} GiB ({plan.params / 1e9:.2f}B params, strategy "
        f"{plan.strategy.name} stage {plan.strategy.stage}, batch {plan.batch_size}/GPU, "
        f"checkpointing {plan.grad_checkpointing}){hint}. Details: python -m simmim_swinv2.plan "
        "<same overrides>; plan.enforce=false to run anyway."
    )


def format_plan(plan: Plan) -> str:
    """A markdown table of the plan."""
    s, st = plan.strategy, plan.state_bytes()
    act = plan.act_bytes_per_sample * plan.batch_size
    gib = lambda b: f"{b / GIB:,.2f} GiB"  # noqa: E731
    per = f" / {plan.unit}"
    unknown = "unknown" if plan.on_cpu else "unknown (no GPU; set plan.gpu_memory_gb=80)"
    fits = {None: unknown, True: "yes", False: "NO"}[plan.fits()]
    need = plan.total_bytes() * plan.devices  # a node's processes share its memory
    memory = (
        [
            (
                "host memory",
                f"{gib(plan.host_memory_bytes or 0)} ({plan.devices} x total: {gib(need)})",
            )
        ]
        if plan.on_cpu
        else [
            ("CUDA context + slack", gib(CUDA_OVERHEAD_BYTES)),
            ("total / GPU", gib(plan.total_bytes())),
            ("GPU memory", gib(plan.gpu_memory_bytes) if plan.gpu_memory_bytes else "unknown"),
        ]
    )
    many = {(True, True): "es", (False, True): "s"}.get((plan.on_cpu, plan.world_size > 1), "")
    rows = [
        (
            "input",
            f"{plan.img_size[0]}x{plan.img_size[1]} px, windows "
            f"{'/'.join(map(str, plan.windows))} per stage",
        ),
        ("parameters", f"{plan.params:,} ({plan.params / 1e9:.3f}B)"),
        (
            "global batch",
            f"{plan.global_batch} = {plan.batch_size} per device x {plan.devices} devices x "
            f"{plan.nodes} nodes x {plan.accumulate} accumulation",
        ),
        (
            "learning rate",
            f"{plan.lr:.3g} = base {plan.base_lr:g} x {plan.global_batch}/{plan.reference_batch}",
        ),
        (
            "strategy",
            f"{s.name} (ZeRO stage {s.stage}, offload optimizer {s.offload_optimizer}, "
            f"parameters {s.offload_parameters}) on {plan.world_size} {plan.unit}{many}"
            + (" (CPU)" if plan.on_cpu else ""),
        ),
        (
            "precision",
            f"{plan.precision} ({'/'.join(map(str, STATE_BYTES[precision_kind(plan.precision)]))} "
            f"B/param weights/grads/optimizer)",
        ),
        ("weights" + per, gib(st["weights"])),
        ("gradients" + per, gib(st["gradients"])),
        ("optimizer states" + per, gib(st["optimizer"])),
        ("ZeRO-3 working set", gib(st["zero3_working"])),
        (
            "activations" + per,
            f"{gib(act)} ({plan.act_bytes_per_sample / 2**20:,.1f} MiB/sample, "
            f"checkpointing {plan.grad_checkpointing})",
        ),
        *([("total" + per, gib(plan.total_bytes()))] if plan.on_cpu else []),
        *memory,
        ("fits", fits),
    ]
    if plan.checkpoint is not None:
        c = plan.checkpoint
        rows += [
            (
                "checkpoint size",
                f"{gib(c.bytes_each)} ({c.bytes_per_param} B/param: weights + AdamW moments)",
            ),
            (
                "checkpoints kept",
                ", ".join(f"{what}: {n}" for what, n in c.kept) + f" = {c.count} at most",
            ),
            ("checkpoint disk", f"{gib(c.total_bytes)} (+ one more while a save is written)"),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(
        [
            f"| {'item'.ljust(width)} | value |",
            f"|{'-' * (width + 2)}|-------|",
            *(f"| {k.ljust(width)} | {v} |" for k, v in rows),
        ]
    )
