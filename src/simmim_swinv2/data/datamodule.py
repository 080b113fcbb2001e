"""LightningDataModule: built datasets + loader settings → DataLoaders."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .seeding import PerSampleSeed, SeededSampler, sample_seed


def _epoch(trainer) -> int:
    """The epoch the next training pass belongs to, as Lightning passes it to `sampler.set_epoch`.
    Differs from `trainer.current_epoch` right after resuming from an end-of-epoch checkpoint
    (processed, not yet completed)."""
    return trainer.fit_loop.epoch_progress.current.processed


def _batches_done(trainer) -> int:
    """Training batches of the current epoch already done when a pass starts: nonzero only for the
    first pass after resuming from a mid-epoch checkpoint (a preemption's `hpc_ckpt`). Read from the
    loop's restored progress, which counts what was trained on; a count kept in the loader would be
    ahead by Lightning's prefetched batch."""
    epochs = trainer.fit_loop.epoch_progress.current
    # at the start of an epoch (or resuming from the end of one)
    if epochs.started <= epochs.processed:
        return 0
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


class _TimedIterator:
    """A loader's iterator that adds the time each `next()` takes to `loader.wait_seconds`: how long
    the training loop waited for data (`training.throughput.TrainThroughput` logs it as
    `train/data_wait`)."""

    def __init__(self, iterator: Iterator, loader: _ResumableLoader) -> None:
        self._iterator, self._loader = iterator, loader

    def __iter__(self) -> _TimedIterator:
        return self

    def __next__(self):
        start = time.perf_counter()
        try:
            return next(self._iterator)
        finally:
            self._loader.wait_seconds += time.perf_counter() - start

    def __len__(self) -> int:
        return len(self._iterator)


class _ResumableLoader(DataLoader):
    """A training loader that resumes mid-epoch where training stopped: its sampler (map-style) or
    its dataset (shards) leaves out the batches done (`_batches_done`). Lightning warns that
    mid-epoch resumes are unreliable unless the loader has `state_dict` / `load_state_dict`; the
    position lives in the loop's progress instead, so these hold nothing. `wait_seconds`: the time
    spent waiting for its batches so far (`_TimedIterator`)."""

    wait_seconds = 0.0

    def __iter__(self) -> _TimedIterator:
        return _TimedIterator(super().__iter__(), self)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _EpochLoader(_ResumableLoader):
    """DataLoader that tells an iterable dataset the epoch (Lightning only tells samplers) and the
    batches of it already done before each pass, and reseeds its generator from (seed, epoch), so
    the workers' random streams are the same for an epoch whether or not the run was resumed. It
    also starts the pass on the dataset's bad-sample tracker, before the workers get to it
    (map-style: `SeededSampler` does)."""

    epoch_fn: Callable[[], int] | None = None
    skip_fn: Callable[[], int] | None = None
    seed: int = 0
    _passes = 0

    def __iter__(self):
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._passes
        self._passes += 1
        skip = self.skip_fn() if self.skip_fn is not None else 0
        if skip:
            self.dataset.set_epoch(epoch, skip_batches=skip)
        else:
            self.dataset.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(sample_seed(self.seed, epoch, 0))
        if (tracker := getattr(self.dataset, "tracker", None)) is not None:
            tracker.start_pass()
        return super().__iter__()


class SimMIMDataModule(L.LightningDataModule):
    """Train/val DataLoaders for pretraining and fine-tuning.

    Args:
        train, val: the built datasets (``training.build.build_datasets``); val may be None.
        batch_size: per-device batch size.
        num_workers: loader workers per device.
        pin_memory: default: True when CUDA is available.
        persistent_workers: default: True when ``num_workers > 0``.
        drop_last: drop the last partial training batch (validation always keeps it).
        prefetch_factor: batches each worker loads ahead; None: the DataLoader's default.
        seed: seed of the shuffling and of the per-sample augmentation seeds.

    Map-style datasets (folders, digits) are shuffled; under DDP Lightning swaps in a
    ``DistributedSampler`` and calls its ``set_epoch``: every rank gets ``ceil(N / world)`` samples
    (padded by repeating at most ``world - 1``), hence the same number of batches, and ``drop_last``
    then drops each rank's last partial batch. Iterable ones (shards) split themselves over ranks
    and workers and get the trainer's epoch before every pass (persistent workers count on from it).
    ``tests/test_data_datamodule.py`` checks both, the latter in a real ``Trainer.fit``.

    Each pass (train or validation) over a dataset with a ``tracker`` starts a new pass of its
    bad-sample counts (:class:`~.faults.BadSampleTracker`), which the ``BadSampleMonitor`` callback
    reads.
    """

    def __init__(
        self,
        train: Dataset,
        val: Dataset | None = None,
        batch_size: int = 128,
        num_workers: int = 8,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
        drop_last: bool = True,
        prefetch_factor: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.train_dataset, self.val_dataset = train, val
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.persistent_workers = (
            num_workers > 0 if persistent_workers is None else persistent_workers
        )
        self.drop_last = drop_last
        self.prefetch_factor = prefetch_factor

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        kwargs = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            drop_last=self.drop_last and train,
        )
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        trainer = self.trainer if self._has_trainer() else None
        if not isinstance(dataset, IterableDataset):
            # (epoch, index) samples: augmentation and masks depend on (seed, epoch, index) only;
            # the sampler asks the trainer for the epoch when a pass starts, so a resumed run's
            # first pass is that epoch's.
            world, rank = (
                (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            )
            sampler = SeededSampler(
                dataset, num_replicas=world, rank=rank, shuffle=train, seed=self.seed
            )
            wrapped = PerSampleSeed(dataset, self.seed, fixed_epoch=None if train else 0)
            if trainer is None or not train:
                return DataLoader(wrapped, sampler=sampler, **kwargs)
            sampler.epoch_fn = lambda: _epoch(trainer)
            sampler.skip_fn = lambda: _batches_done(trainer) * self.batch_size
            return _ResumableLoader(wrapped, sampler=sampler, **kwargs)
        if getattr(dataset, "batch_size", 0) is None:
            dataset.batch_size = self.batch_size  # lets len(loader) equal the batches it yields
        if not hasattr(dataset, "set_epoch"):
            return DataLoader(dataset, **kwargs)
        loader = _EpochLoader(dataset, generator=torch.Generator(), **kwargs)
        loader.seed = self.seed
        if trainer is not None:
            loader.epoch_fn = lambda: _epoch(trainer)
            if train:
                loader.skip_fn = lambda: _batches_done(trainer)
        return loader

    def _has_trainer(self) -> bool:
        try:
            return self.trainer is not None
        except RuntimeError:
            return False

    def train_dataloader(self) -> DataLoader:
        """The training loader (resumable mid-epoch; map-style data shuffled)."""
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader (map-style data unshuffled), or ``[]`` without a val set."""
        return [] if self.val_dataset is None else self._loader(self.val_dataset, train=False)
