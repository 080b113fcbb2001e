"""How fast a run trains, and against what: the FLOPs of one training step (counted once per
configuration), the peak FLOP/s of the device, and the callback that logs them with img/s and the
share of time spent waiting for data.

Metrics (rank 0, whenever Lightning writes the logs, `trainer.log_every_n_steps`): Lightning's
`train/device/samples_per_sec`, `train/device/flops_per_sec` and `train/device/mfu` (model FLOP/s
over the peak), over a window of `window_size` batches, and `train/data_wait`: the fraction of the
training time since the last log that the loop spent waiting for the loader's next batch (near 0:
the loader keeps up; well above 0: add `num_workers`, or a faster source).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.callbacks.throughput_monitor import _plugin_to_compute_dtype
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.flop_counter import FlopCounterMode

from ..models import SimMIM, SwinV2Classifier
from ..weights.meta import ModelMeta
from .bad_samples import _loaders


def step_flops(model: torch.nn.Module, batch_size: int = 1) -> int:
    """FLOPs of one training step (forward and backward) of one of our models at its configured
    image size.

    Counted by torch's `FlopCounterMode` (matmuls, convolutions, attention) on a copy of the model
    built on the meta device from its description: no memory and no arithmetic, the same for any
    model and batch size, sharded or compiled. (Counted at the batch itself: the position-bias MLP
    runs once per step, whatever the batch.)

    Args:
        model: `SimMIM`, `SwinV2Classifier` or `SwinV2Encoder` (its description:
            `weights.meta.ModelMeta`).
        batch_size: images per step.

    Returns:
        FLOPs per step (a multiply-add counts 2).
    """
    meta = ModelMeta.of(model)
    cfg = meta.config
    h, w = cfg.img_size
    with torch.device("meta"):
        fresh = meta.build()
        x = torch.zeros(batch_size, cfg.in_chans, h, w)
        with FlopCounterMode(display=False) as counter:
            if isinstance(fresh, SimMIM):
                mask = torch.zeros(
                    batch_size, h // cfg.patch_size, w // cfg.patch_size, dtype=torch.long
                )
                loss = fresh(x, mask).loss
            elif isinstance(fresh, SwinV2Classifier):
                loss = fresh(x).logits.sum()
            else:
                loss = fresh(x).last_hidden_state.sum()
            loss.backward()
    return int(counter.get_total_flops())


@functools.cache
def measured_matmul_flops(device: str, dtype: torch.dtype) -> float:
    """FLOP/s of one large matrix product in `dtype` on `device`, the best of 3 (a fraction of a
    second; docs/benchmarks.md): the peak for MFU where no datasheet number is known (CPUs, GPUs
    missing from Lightning's table). Once per process."""
    dev = torch.device(device)
    n = 4096 if dev.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(4):  # the first warms up
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The device's peak FLOP/s in `dtype`: Lightning's datasheet table (GPUs, TPUs), else
    `measured_matmul_flops`."""
    return float(get_available_flops(device, dtype) or measured_matmul_flops(str(device), dtype))


class TrainThroughput(ThroughputMonitor):
    """Lightning's `ThroughputMonitor` (img/s; FLOP/s and MFU from the task's `flops_per_batch`, see
    `step_flops`), with MFU on every device (`peak_flops`) and `train/data_wait` (the module
    docstring).

    The wait is what the training loader's iterator spent in `next()` (`data.SimMIMDataModule` times
    it), over the wall time of the training steps since the last log; validation is left out of
    both.

    Args:
        batch_size_fn: images in a batch; default: the length of its first element.
        window_size: batches the rates are averaged over (Lightning's `Throughput`).
        separator: between the stage and the metric's name.
    """

    def __init__(
        self, batch_size_fn: Callable | None = None, window_size: int = 20, separator: str = "/"
    ) -> None:
        super().__init__(batch_size_fn or _batch_size, window_size=window_size, separator=separator)
        # (time, loader wait so far) at the last batch end
        self._mark: tuple[float, float] | None = None
        self._window = [0.0, 0.0]  # step seconds, wait seconds since the last log

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.available_flops is None:  # not in Lightning's table
            dtype = _plugin_to_compute_dtype(trainer.precision_plugin)
            self.available_flops = peak_flops(trainer.strategy.root_device, dtype)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops

    @staticmethod
    def _loader_wait(trainer) -> float | None:
        for loader in _loaders(trainer.train_dataloader):
            if hasattr(loader, "wait_seconds"):
                return loader.wait_seconds
        return None

    @rank_zero_only
    def on_train_start(self, trainer, pl_module) -> None:
        # counted once now, not inside the first timed step
        getattr(pl_module, "flops_per_batch", None)
        super().on_train_start(trainer)
        self._resume(trainer)

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._advance(trainer)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _compute(self, trainer, iter_num: int | None = None) -> None:
        """The parent's, with `train/data_wait` in the same row."""
        if not trainer._logger_connector.should_update_logs:
            return
        stage = trainer.state.stage
        throughput = self._throughputs[stage]
        metrics = {
            f"{stage.value}{throughput.separator}{k}": v for k, v in throughput.compute().items()
        }
        step_s, wait_s = self._window
        if stage == RunningStage.TRAINING and step_s > 0:
            metrics[f"{stage.value}{throughput.separator}data_wait"] = min(wait_s / step_s, 1.0)
            self._window = [0.0, 0.0]
        trainer._logger_connector.log_metrics(metrics, step=iter_num)

    @rank_zero_only
    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer)
        self._advance(trainer)  # the training time up to here counts; the validation does not
        self._mark = None

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer)
        self._resume(trainer)

    def _resume(self, trainer) -> None:
        wait = self._loader_wait(trainer)
        self._mark = None if wait is None else (time.perf_counter(), wait)

    def _advance(self, trainer) -> None:
        wait = self._loader_wait(trainer)
        if self._mark is not None and wait is not None:
            now = time.perf_counter()
            self._window[0] += now - self._mark[0]
            self._window[1] += wait - self._mark[1]
            self._mark = (now, wait)
        else:
            self._resume(trainer)


def _batch_size(batch) -> int:
    """Images in a batch `(images, …)`."""
    return int(batch[0].shape[0])
