"""The numbers behind FLOP/s, MFU and `train/data_wait` (the logged metrics:
tests/test_train.py)."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import Dataset
from torch.utils.flop_counter import FlopCounterMode

from simmim_swinv2.data.datamodule import _ResumableLoader
from simmim_swinv2.models import SimMIM, SwinV2Classifier, swinv2_config
from simmim_swinv2.training.throughput import measured_matmul_flops, peak_flops, step_flops

CFG = swinv2_config("debug", img_size=(64, 32), window_size=4)


@pytest.mark.parametrize("kind", ["simmim", "classifier"])
def test_step_flops_on_the_meta_device_equal_a_real_step(kind):
    """The meta-device count (no memory, no arithmetic) is the count of a real forward + backward,
    times the batch."""
    model = (
        SimMIM.from_config(CFG)
        if kind == "simmim"
        else SwinV2Classifier.from_config(CFG, num_classes=5)
    )
    x = torch.randn(3, 3, 64, 32)
    with FlopCounterMode(display=False) as counter:
        if kind == "simmim":
            model(x, (torch.rand(3, 16, 8) < 0.5).long()).loss.backward()
        else:
            model(x).logits.sum().backward()
    assert step_flops(model, batch_size=3) == counter.get_total_flops() > 0


def test_the_cpu_peak_is_its_measured_matmul_rate():
    rate = measured_matmul_flops("cpu", torch.float32)
    assert 1e8 < rate < 1e14  # any CPU: between 0.1 GFLOP/s and 100 TFLOP/s
    # measured once per process (cached)
    assert peak_flops(torch.device("cpu"), torch.float32) == rate


class _Slow(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(0.05)
        return torch.zeros(1)


def test_a_training_loader_counts_the_time_spent_waiting_for_it():
    loader = _ResumableLoader(_Slow(), batch_size=2)
    assert loader.wait_seconds == 0.0
    it = iter(loader)
    assert len(it) == 2
    next(it)
    assert loader.wait_seconds >= 0.1  # two samples of 50 ms, loaded in the main process
    time.sleep(0.2)  # time between batches is not waiting
    assert len(list(it)) == 1 and 0.2 <= loader.wait_seconds < 0.4
