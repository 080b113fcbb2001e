"""Our DeepSpeed strategy: Lightning's `DeepSpeedStrategy` plus what our runs need of it, so that
neither the tasks nor the code that builds the Trainer asks which strategy runs.

- Saves are swapped in whole (`<path>.partial/` written by every rank, then renamed over `<path>/`).
- A sharded checkpoint of another world size is refused on load, naming the fix; a universal one
  (`python -m simmim_swinv2.reshard`) is loaded as such, except under ZeRO-3.
- With the optimizer offloaded (ZeRO-Offload), the task's torch Adam(W) becomes `DeepSpeedCPUAdam`,
  over the same parameter groups with the same hyper-parameters; its LR schedule follows.
- Under ZeRO-3, the direct parameters of container modules (`SwinV2Encoder.mask_token`) stay
  gathered for the step.

`conf/trainer/deepspeed_*.yaml` name `SimMIMDeepSpeedStrategy`; `CPUDeepSpeedStrategy` is the same
on the CPU (tests, smoke runs): `trainer=deepspeed_zero2 trainer.accelerator=cpu trainer.devices=2
trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy`. The gradient
norm is logged by `distributed.grad_norm.GradNorm`, whatever the strategy.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
from pathlib import Path

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from lightning.pytorch.utilities import rank_zero_info

from .. import ConfigError
from .reshard import STAGE3_PROBLEM
from .zero import is_universal_checkpoint, zero_checkpoint_world_size


def use_cpu_accelerator() -> None:
    """DeepSpeed picks its accelerator once, on first use: CPU (gloo without oneCCL). A lasting
    `TORCH_EXTENSIONS_DIR` makes the JIT build of `DeepSpeedCPUAdam` (over a minute,
    docs/benchmarks.md) happen once per machine."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))


class SimMIMDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's `DeepSpeedStrategy` (same arguments), with swapped saves, checked loads,
    universal checkpoints, CPU Adam under optimizer offload and ZeRO-3 external parameters (see the
    module docstring)."""

    # --------------------------------------------------------------------------------------- set-up
    @property
    def offloads_optimizer(self) -> bool:
        offload = (self.config.get("zero_optimization") or {}).get("offload_optimizer") or {}
        return offload.get("device", "none") not in ("none", None)

    @property
    def _device_rank(self) -> int | None:
        """The device index `deepspeed.initialize` is given (Lightning's choice)."""
        return self.root_device.index

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        """Lightning's `deepspeed.initialize` call (training and `Fabric`-style set-up alike), with
        the optimizer made DeepSpeed's CPU Adam under optimizer offload first, and the ZeRO-3
        external parameters registered after."""
        import deepspeed

        if optimizer is not None and self.offloads_optimizer:
            optimizer = cpu_adam_like(optimizer, lr_scheduler)
        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank),
            config=self.config,
            model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()),
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        if self.zero_stage_3:
            names = register_zero3_external_parameters(engine.module)
            if names:
                rank_zero_info(
                    f"ZeRO-3: kept gathered for the whole step (read outside a traced output): "
                    f"{', '.join(names)}"
                )
        return engine, ds_optimizer

    # ---------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Every rank writes its shards into `<path>.partial/`, then rank 0 swaps it in for
        `<path>/`. DeepSpeed writes into an existing directory without clearing it, so `last.ckpt/`
        saved again by fewer ranks would keep the old ranks' shards, which consolidation and
        conversion then read as part of it; and a save killed halfway would leave a half-new
        checkpoint under the old name. `<path>` may be a link (ModelCheckpoint's `save_last: link`
        points `last.ckpt` at an epoch's checkpoint): the link is replaced, its target left
        alone."""
        final = Path(self.broadcast(str(filepath)))  # rank 0's path, as the stock save does
        partial, old = (
            final.with_name(final.name + ".partial"),
            final.with_name(final.name + ".old"),
        )
        if self.is_global_zero:
            shutil.rmtree(partial, ignore_errors=True)  # a previous save killed halfway
        self.barrier("zero_save_start")
        super().save_checkpoint(checkpoint, str(partial), storage_options)  # every rank: its shards
        self.barrier("zero_save_written")
        if self.is_global_zero:
            shutil.rmtree(old, ignore_errors=True)
            if final.is_symlink():
                final.unlink()
            elif final.exists():
                final.rename(old)
            partial.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier("zero_save_swapped")

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        """Refuse a sharded checkpoint of another world size before DeepSpeed's own error
        (`ZeRORuntimeException: ... Automatic adjustment of ZeRO's optimizer state partitioning
        with a new world size is not currently supported`), naming the fixes; load a universal one
        with DeepSpeed's `load_universal`."""
        check_zero_resume(checkpoint_path, self.world_size)
        if is_universal_checkpoint(checkpoint_path):
            check_universal_resume(self, checkpoint_path)
            # as recorded in later saves
            self.config.setdefault("checkpoint", {})["load_universal"] = True
            # DeepSpeed reads the flag from the engine's parsed config when it loads
            # (engine.load_universal_checkpoint(), DeepSpeed 0.19); nothing before loading depends
            # on it.
            self.deepspeed_engine._config.load_universal_checkpoint = True
        return super().load_checkpoint(checkpoint_path, weights_only)


class CPUDeepSpeedStrategy(SimMIMDeepSpeedStrategy):
    """`SimMIMDeepSpeedStrategy` on the CPU. Lightning refuses it in three places, bypassed here:
    the CUDA check in `setup_environment` (DDP's set-up instead), the device-index validation in
    `setup_distributed` (world ranks
    + DeepSpeed's distributed init only), and `device_rank=root_device.index` (None on the CPU)
      passed to
    `deepspeed.initialize` (`local_rank` instead). Everything else (ZeRO, offload, checkpoints) is
    the GPU one's."""

    def __init__(self, *args, **kwargs) -> None:
        use_cpu_accelerator()
        super().__init__(*args, **kwargs)

    def setup_environment(self) -> None:
        # skips DeepSpeedStrategy's CUDA check; calls our setup_distributed
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def _device_rank(self) -> int:
        return self.local_rank

    def _initialize_deepspeed_inference(self, model) -> None:
        raise NotImplementedError(
            "stand-alone validate/predict under CPUDeepSpeedStrategy is not supported "
            "(Lightning passes root_device.index=None); consolidate the checkpoint "
            "(python -m simmim_swinv2.consolidate) and evaluate the weights instead"
        )


# -------------------------------------------------------------------------------- optimizer offload
# DeepSpeedCPUAdam's hyper-parameters (deepspeed/ops/adam/cpu_adam.py, DeepSpeed 0.19): a torch
# optimizer's other defaults (foreach, fused, capturable, ...) are its own and are dropped; keys of
# our own (lr_scale, name) are kept.
_CPU_ADAM_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "bias_correction")


def cpu_adam_like(optimizer: torch.optim.Optimizer, lr_scheduler=None) -> torch.optim.Optimizer:
    """`DeepSpeedCPUAdam` doing what `optimizer` (torch AdamW or Adam) would: the same parameter
    groups, each with its LR, weight decay, betas and eps; `lr_scheduler` (built on `optimizer`)
    re-pointed at it. ZeRO-Offload steps the optimizer on the CPU and refuses torch's. Anything else
    is returned as it is (a DeepSpeed optimizer already) or refused (SGD: ZeRO-Offload has no CPU
    SGD)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    if isinstance(optimizer, DeepSpeedCPUAdam):
        return optimizer
    if type(optimizer) not in (torch.optim.AdamW, torch.optim.Adam):
        raise ConfigError(
            "optimizer offload (ZeRO-Offload) steps the optimizer with DeepSpeedCPUAdam, which "
            f"can stand in for torch's AdamW and Adam only, not {type(optimizer).__name__}: use "
            "optim.name=adamw, or a trainer without offload_optimizer (trainer=deepspeed_zero3)"
        )
    defaults = optimizer.defaults
    if (
        defaults.get("amsgrad")
        or defaults.get("maximize")
        or any(g.get("amsgrad") for g in optimizer.param_groups)
    ):
        raise ConfigError(
            "DeepSpeedCPUAdam has no amsgrad / maximize: turn them off, or do not offload the "
            "optimizer"
        )
    groups = [
        {k: v for k, v in g.items() if k not in defaults or k in _CPU_ADAM_KEYS}
        # each group's current lr and the scheduler's initial_lr included
        for g in optimizer.param_groups
    ]
    adamw = isinstance(optimizer, torch.optim.AdamW)
    cpu_adam = DeepSpeedCPUAdam(
        groups,
        lr=defaults["lr"],
        betas=tuple(defaults["betas"]),
        eps=defaults["eps"],
        weight_decay=defaults["weight_decay"],
        adamw_mode=adamw,
    )
    if lr_scheduler is not None:
        _repoint_scheduler(lr_scheduler, optimizer, cpu_adam)
    rank_zero_info(
        f"ZeRO-Offload: optimizer {type(optimizer).__name__} -> DeepSpeedCPUAdam "
        f"(adamw_mode={adamw}), the same {len(groups)} parameter groups and hyper-parameters"
    )
    return cpu_adam


def _repoint_scheduler(scheduler, old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> None:
    """An LR scheduler built on `old` drives `new` (same groups, in order) from its current state.
    torch's `LRScheduler.__init__` marks its optimizer's `step` to check the call order
    (torch/optim/lr_scheduler.py, `patch_track_step_called`); `new.step` gets the same mark, so the
    check holds for `new` as it did for `old`."""
    if getattr(scheduler, "optimizer", None) is not old:
        raise ValueError(
            f"the LR scheduler ({type(scheduler).__name__}) is not built on the optimizer being "
            "replaced"
        )
    scheduler.optimizer = new
    step = new.step

    @functools.wraps(step)
    def tracked_step(*args, **kwargs):
        new._opt_called = True
        return step(*args, **kwargs)

    tracked_step._wrapped_by_lr_sched = True
    new.step = tracked_step


# ------------------------------------------------------------------------------------------- ZeRO-3
def register_zero3_external_parameters(root: torch.nn.Module) -> list[str]:
    """ZeRO-3 gathers a module's own parameters around its forward and re-gathers them for backward
    through hooks on the tensors it outputs; it cannot see into outputs that are not tensors or
    their containers (our dataclasses, `SwinV2EncoderOutput`), so a container module's direct
    parameters (`mask_token`) would be freed (size 0) when backward needs them. Registered on the
    root module (whose output is the training step's loss), they stay gathered for the whole step;
    they are few and small. Modules flagged as ZeRO-3 leaves (conf/trainer/ deepspeed_zero3.yaml's
    leaf_module: the SwinV2 block) are gathered whole, their insides skipped. Returns the registered
    names."""
    from deepspeed.runtime.zero import register_external_parameter
    from deepspeed.utils import z3_leaf_module

    names: list[str] = []

    def visit(module: torch.nn.Module, prefix: str) -> None:
        if z3_leaf_module(module):
            return
        children = list(module.named_children())
        if children and module is not root:
            for name, param in module.named_parameters(recurse=False):
                register_external_parameter(root, param)
                names.append(prefix + name)
        for name, child in children:
            visit(child, f"{prefix}{name}.")

    visit(root, "")
    return names


# ------------------------------------------------------------------------------------ resume checks
def check_zero_resume(checkpoint_path, world_size: int) -> None:
    """A sharded ZeRO checkpoint loads on the world size that wrote it only; say so, with the
    fixes."""
    saved = zero_checkpoint_world_size(checkpoint_path)
    if saved is not None and saved != world_size:
        raise RuntimeError(
            f"{checkpoint_path} is a ZeRO checkpoint of {saved} processes, this run has "
            f"{world_size}: DeepSpeed cannot re-partition the optimizer state onto another world "
            f"size. Resume with the original number of devices x nodes ({saved}); or, for "
            f"ZeRO-1/2, make it universal (python -m simmim_swinv2.reshard {checkpoint_path}) and "
            "start again (resume=auto picks it); or consolidate it (python -m "
            f"simmim_swinv2.consolidate {checkpoint_path} weights.safetensors) and start a new "
            "run from the weights (resume=never; optimizer state and schedule start afresh)."
        )


def check_universal_resume(strategy, checkpoint_path) -> None:
    """A universal checkpoint (`simmim_swinv2.reshard`) resumes under our DeepSpeed strategy at ZeRO
    stage 1 or 2."""
    if not isinstance(strategy, SimMIMDeepSpeedStrategy):
        raise ConfigError(
            f"{checkpoint_path} is a DeepSpeed universal checkpoint: resume it with a DeepSpeed "
            "trainer (trainer=deepspeed_zero1/2)"
        )
    if strategy.zero_stage_3:
        raise ConfigError(
            f"resuming the universal checkpoint {checkpoint_path} under ZeRO-3 is refused: "
            f"{STAGE3_PROBLEM}. Resume it with trainer=deepspeed_zero2 (or deepspeed_zero1)"
        )


def check_resume(strategy, checkpoint_path) -> None:
    """What can be told of resuming `checkpoint_path` (None: a fresh start) under `strategy` before
    anything is built: a universal checkpoint needs our DeepSpeed strategy at ZeRO-1/2. (The world
    size of a sharded one is checked on load, where it is known for certain.)"""
    if checkpoint_path is not None and is_universal_checkpoint(checkpoint_path):
        check_universal_resume(strategy, checkpoint_path)
