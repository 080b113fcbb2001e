"""Another look at a built data source: the same samples through another transform, e.g. the eval transform (no
augmentation, no mask) over the pretraining set, for the kNN monitor (`training.knn.KNNMonitor`) and the probes."""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch.utils.data import Dataset, IterableDataset

from .faults import BadSampleTracker


def eval_view(dataset: Dataset, transform: Callable) -> Dataset:
    """A shallow copy of `dataset` that applies `transform` instead of its own; the original is untouched, the
    samples (listings, shard lists, arrays) are shared, not copied. The copy counts its bad samples in a tracker of
    its own, so an evaluation pass never mixes into the training epoch's counts (`BadSampleMonitor`). Shards are
    read in order (no shuffling, exact epochs): each rank sees the same fixed part of the data at every call.
    Works for every source with a `transform` attribute (digits, folders, shards, the ImageNet presets)."""
    if not hasattr(dataset, "transform"):
        raise TypeError(f"{type(dataset).__name__} has no `transform` to swap; give a dataset built with one "
                        "(digits, folder, webdataset, imagenet)")
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
    """Whether the source's samples carry labels (`label >= 0`), as far as it says without reading a sample: True
    for digits, labelled folders and ImageNet (`num_classes > 0`), False for an unlabelled folder (no classes),
    None when the source does not say (shards without `num_classes`)."""
    n = getattr(dataset, "num_classes", None)
    if n is None:
        classes = getattr(dataset, "classes", None)
        return None if classes is None else len(classes) > 0
    return int(n) > 0


__all__ = ["eval_view", "has_labels"]
