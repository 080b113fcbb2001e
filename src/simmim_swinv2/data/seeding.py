"""Randomness tied to (seed, epoch, sample), so a resumed run sees exactly the crops and masks an
uninterrupted one does, whatever the number of loader workers and however often the loader was
rebuilt.

The sampler yields `(epoch, index, tag)`; the dataset wrapper seeds torch's CPU generator, NumPy and
Python's `random` from `(seed, epoch, index)` before each `__getitem__`. In the main process (no
loader workers) it restores the previous states after, so nothing else's randomness moves; loader
workers need no restoring. `tag` names the pass over the data for the dataset's bad-sample tracker
(`faults.BadSampleTracker`), which keeps the counts of each pass apart.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

_PRIME_A, _PRIME_B = 1_000_003, 998_244_353


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that differs for every (seed, epoch, index)."""
    return ((seed * _PRIME_A + epoch) * _PRIME_B + index) % (2**63 - 1)


class SeededSampler(DistributedSampler):
    """`DistributedSampler` (shuffled from `seed + epoch`; each of `num_replicas` ranks gets
    `ceil(N / world)` indices, padded by repeating at most `world - 1`) that yields
    `(epoch, index, tag)`, `tag` being the pass it starts on the dataset's bad-sample tracker (0
    without one). Being a `DistributedSampler`, Lightning keeps it under DDP and calls its
    `set_epoch` every epoch."""

    epoch_fn = None  # when set: the epoch is read at __iter__ time (see SimMIMDataModule)
    # when set: how many of this pass's first indices were already trained on (a mid-epoch resume)
    skip_fn = None

    def __iter__(self):
        if self.epoch_fn is not None:
            # Lightning builds the loader before a resume restores the epoch, and worker processes
            # fetch their first indices when the iterator is created, before its set_epoch call: ask
            # the trainer now.
            self.epoch = self.epoch_fn()
        epoch = self.epoch
        indices = super().__iter__()
        skip = self.skip_fn() if self.skip_fn is not None else 0
        tracker = getattr(self.dataset, "tracker", None)
        # here, in the main process, once per pass
        tag = tracker.start_pass() if tracker is not None else 0
        return ((epoch, i, tag) for i in itertools.islice(indices, skip, None))

    def batch_indices(self, batch: int, batch_size: int) -> list[int]:
        """The dataset indices in batch `batch` of this rank's current epoch, counted from the
        epoch's start (as Lightning's `batch_idx` is, also after a mid-epoch resume): recomputed
        from `(seed, epoch)`."""
        order = DistributedSampler.__iter__(self)
        return list(itertools.islice(order, batch * batch_size, (batch + 1) * batch_size))


class PerSampleSeed(Dataset):
    """Wraps a map-style dataset: item `(epoch, index[, tag])` is `dataset[index]` drawn with its
    own seed, counted in pass `tag` of the dataset's bad-sample tracker. A plain index means epoch
    0; `fixed_epoch` pins the epoch (validation: the same masks every time)."""

    def __init__(self, dataset: Dataset, seed: int = 0, fixed_epoch: int | None = None) -> None:
        self.dataset = dataset
        self.seed = seed
        self.fixed_epoch = fixed_epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # id2label, classes, … of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, key):
        epoch, index, *tag = key if isinstance(key, tuple) else (0, key)
        if tag and (tracker := getattr(self.dataset, "tracker", None)) is not None:
            tracker.tag = tag[0]
        if self.fixed_epoch is not None:
            epoch = self.fixed_epoch
        return seeded(sample_seed(self.seed, epoch, index), self.dataset.__getitem__, index)


def batch_sample_ids(loader, batch: int) -> list[str] | None:
    """What batch `batch` of a training loader's current epoch holds on this rank, to name it in a
    report: file paths for datasets that list files (`samples[i] = (path, label)`), dataset indices
    otherwise; None for a loader that cannot say without reading its data (streamed shards: their
    samples are named by shard and key inside the workers)."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, SeededSampler) or not loader.batch_size:
        return None
    indices = sampler.batch_indices(batch, loader.batch_size)
    dataset = getattr(loader.dataset, "dataset", loader.dataset)  # inside PerSampleSeed
    samples = getattr(dataset, "samples", None)
    return [str(samples[i][0]) if samples is not None else str(i) for i in indices]


def seeded(seed: int, fn, *args):
    """`fn(*args)` with torch's CPU generator, NumPy and `random` seeded from `seed`. In a loader
    worker, whose RNGs serve the data alone, nothing is restored; in the main process the previous
    states come back after."""
    if get_worker_info() is not None:
        _seed_cpu_rngs(seed)
        return fn(*args)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            _seed_cpu_rngs(seed)
            return fn(*args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _seed_cpu_rngs(seed: int) -> None:
    # torch's CPU generator only: torch.manual_seed would also seed every CUDA device, a cost on
    # every sample (docs/benchmarks.md)
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
