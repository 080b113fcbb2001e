"""Other looks at a built data source: the same samples through another transform (the eval
transform, no augmentation and no mask, for the kNN monitor and the probes: `eval_view`), and a
fixed part of it held out as the validation split (`data.val_split`: `hold_out`)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset, IterableDataset

from .faults import BadSampleTracker

# What adds a validation split to a source that has none, for every message that needs one.
ADD_VAL_SPLIT = (
    "hold some training images out with data.val_split=0.15 (a fixed, seeded 15%), or give image "
    "folders their own with data.val_root=PATH"
)


class Part(Dataset):
    """Samples `indices` of a map-style `dataset`, which answers for everything else (`classes`,
    `num_classes`, `tracker`, `transform`, ...), so the rest of the pipeline sees a source like any
    other."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]

    def __getattr__(self, name: str):
        if name in ("dataset", "indices"):  # not set yet (copying, unpickling in a loader worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """`(train, val)`: a `fraction` of `range(n)` chosen at random from `seed` (at least one sample
    each side), both sorted. The same for every run, rank and resume with the same `n`, `fraction`
    and `seed`."""
    if not 0 < fraction < 1:
        raise ValueError(
            f"val_split={fraction}: give the fraction to hold out, between 0 and 1 (e.g. 0.15)"
        )
    if n < 2:
        raise ValueError(f"{n} sample(s) cannot be split into a training and a validation part")
    k = min(max(round(n * fraction), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[k:]), sorted(order[:k])


def hold_out(
    dataset: Dataset, fraction: float, seed: int, val_transform: Callable | None = None
) -> tuple[Dataset, Dataset]:
    """`(train, val)`: `dataset` without a fixed `fraction` of its samples, and those samples seen
    through `val_transform` (`eval_view`; None: the source's own).

    Map-style sources (digits, folders, ImageNet folders) are split by sample. WebDataset shards are
    split by shard (a stream has no random access): `fraction` of the shards, at least one, hold the
    validation samples, so the fraction is approximate when shards differ in size, and a single
    shard cannot be split.
    """
    if isinstance(dataset, IterableDataset):
        shards = list(getattr(dataset, "shards", None) or [])
        if len(shards) < 2:
            raise ValueError(
                f"a stream of {len(shards)} shard(s) cannot be split by shard for "
                f"val_split={fraction}: write the data as more shards (scripts/make_shards.py "
                "--samples-per-shard) or give the validation shards as their own source"
            )
    # the validation samples' own view: their transform, their own bad-sample counts, shards read in
    # order
    val = eval_view(dataset, dataset.transform if val_transform is None else val_transform)
    if isinstance(dataset, IterableDataset):
        train_ids, val_ids = split_indices(len(shards), fraction, seed)
        return dataset.select([shards[i] for i in train_ids]), val.select(
            [shards[i] for i in val_ids]
        )
    train_ids, val_ids = split_indices(len(dataset), fraction, seed)
    return Part(dataset, train_ids), Part(val, val_ids)


def eval_view(dataset: Dataset, transform: Callable) -> Dataset:
    """A shallow copy of `dataset` that applies `transform` instead of its own; the original is
    untouched, the samples (listings, shard lists, arrays) are shared, not copied. The copy counts
    its bad samples in a tracker of its own, so an evaluation pass never mixes into the training
    epoch's counts (`BadSampleMonitor`). Shards are read in order (no shuffling, exact epochs): each
    rank sees the same fixed part of the data at every call. Works for every source with a
    `transform` attribute (digits, folders, shards, the ImageNet presets), and for a `Part` of
    one."""
    if isinstance(dataset, Part):
        return Part(eval_view(dataset.dataset, transform), dataset.indices)
    if not hasattr(dataset, "transform"):
        raise TypeError(
            f"{type(dataset).__name__} has no `transform` to swap; give a dataset built with one "
            "(digits, folder, webdataset, imagenet)"
        )
    view = copy.copy(dataset)
    view.transform = transform
    tracker = getattr(dataset, "tracker", None)
    if isinstance(tracker, BadSampleTracker):
        view.tracker = BadSampleTracker(tracker.max_bad_fraction)
    if isinstance(view, IterableDataset) and hasattr(view, "set_epoch"):
        for name, value in (("shuffle", False), ("shuffle_buffer", 0), ("samples_per_epoch", None)):
            if hasattr(view, name):
                setattr(view, name, value)
        view.set_epoch(0)
    return view


def has_labels(dataset: Dataset) -> bool | None:
    """Whether the source's samples carry labels (`label >= 0`), as far as it says without reading a
    sample: True for digits, labelled folders and ImageNet (`num_classes > 0`), False for an
    unlabelled folder (no classes), None when the source does not say (shards without
    `num_classes`)."""
    n = getattr(dataset, "num_classes", None)
    if n is None:
        classes = getattr(dataset, "classes", None)
        return None if classes is None else len(classes) > 0
    return int(n) > 0


__all__ = ["ADD_VAL_SPLIT", "Part", "eval_view", "has_labels", "hold_out", "split_indices"]
