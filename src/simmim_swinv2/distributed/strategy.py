"""DeepSpeed glue: a CPU variant of Lightning's `DeepSpeedStrategy` (tests and CPU smoke runs only; GPUs use the
stock strategy from `conf/trainer/deepspeed_*.yaml`), and a guard around ZeRO checkpoint I/O: saves swapped in
whole, loads checked against the world size (naming the fix).

CPU use: `trainer=deepspeed_zero2 trainer.accelerator=cpu trainer.devices=2
trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy`.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

from .zero import zero_checkpoint_world_size


def use_cpu_accelerator() -> None:
    """DeepSpeed picks its accelerator once, on first use: CPU (gloo without oneCCL). A lasting
    `TORCH_EXTENSIONS_DIR` makes the JIT build of `DeepSpeedCPUAdam` (~80 s) happen once per machine."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """`DeepSpeedStrategy` on the CPU. Lightning refuses it in three places, bypassed here: the CUDA check in
    `setup_environment` (DDP's set-up instead), the device-index validation in `setup_distributed` (world ranks
    + DeepSpeed's distributed init only), and `device_rank=root_device.index` (None on the CPU) passed to
    `deepspeed.initialize` (`local_rank` instead). Everything else (ZeRO, offload, checkpoints) is the stock
    strategy's."""

    def __init__(self, *args, **kwargs) -> None:
        use_cpu_accelerator()
        super().__init__(*args, **kwargs)

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's CUDA check; calls our setup_distributed

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank), config=self.config, model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()), optimizer=optimizer,
            lr_scheduler=lr_scheduler, dist_init_required=False)
        return engine, ds_optimizer

    def _initialize_deepspeed_inference(self, model) -> None:
        raise NotImplementedError("stand-alone validate/predict under CPUDeepSpeedStrategy is not supported "
                                  "(Lightning passes root_device.index=None); consolidate the checkpoint "
                                  "(python -m simmim_swinv2.consolidate) and evaluate the weights instead")


class ZeroResumeGuard(Callback):
    """Wraps the DeepSpeed strategy's checkpoint I/O.

    Load: check first that a sharded checkpoint was written by as many data-parallel ranks as this run has:
    DeepSpeed cannot re-partition ZeRO optimizer state (`ZeRORuntimeException: ... Automatic adjustment of ZeRO's
    optimizer state partitioning with a new world size is not currently supported`); the error names the fixes.

    Save: every rank writes into `<path>.partial/`, then rank 0 swaps it in for `<path>/`. DeepSpeed writes into
    an existing directory without clearing it, so `last.ckpt/` saved again by fewer ranks would keep the old
    ranks' shards, which consolidation and conversion then read as part of it; and a save killed halfway would
    leave a half-new checkpoint under the old name."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        strategy = trainer.strategy
        if not isinstance(strategy, DeepSpeedStrategy) or getattr(strategy, "_zero_guarded", False):
            return
        load, save = strategy.load_checkpoint, strategy.save_checkpoint

        def guarded_load(checkpoint_path, *args, **kwargs):
            check_zero_resume(checkpoint_path, trainer.world_size)
            return load(checkpoint_path, *args, **kwargs)

        def swapped_save(checkpoint, filepath, *args, **kwargs):
            final = Path(strategy.broadcast(str(filepath)))  # rank 0's path, as the strategy itself does
            partial, old = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
            if strategy.is_global_zero:
                shutil.rmtree(partial, ignore_errors=True)
            strategy.barrier("zero_save_start")
            save(checkpoint, str(partial), *args, **kwargs)  # every rank: its shards
            strategy.barrier("zero_save_written")
            if strategy.is_global_zero:
                shutil.rmtree(old, ignore_errors=True)
                if final.is_symlink():  # last.ckpt linked to an epoch checkpoint (save_last: link)
                    final.unlink()
                elif final.exists():
                    final.rename(old)
                partial.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            strategy.barrier("zero_save_swapped")

        strategy.load_checkpoint, strategy.save_checkpoint = guarded_load, swapped_save
        strategy._zero_guarded = True


def check_zero_resume(checkpoint_path, world_size: int) -> None:
    saved = zero_checkpoint_world_size(checkpoint_path)
    if saved is not None and saved != world_size:
        raise RuntimeError(
            f"{checkpoint_path} is a ZeRO checkpoint of {saved} processes, this run has {world_size}: DeepSpeed "
            "cannot re-partition the optimizer state onto another world size. Resume with the original number "
            f"of devices x nodes ({saved}); or, for ZeRO-1/2, make it universal (python -m simmim_swinv2.reshard "
            f"{checkpoint_path}) and start again (resume=auto picks it); or consolidate it (python -m "
            f"simmim_swinv2.consolidate {checkpoint_path} weights.safetensors) and start a new run from the "
            "weights (resume=never; optimizer state and schedule start afresh).")
