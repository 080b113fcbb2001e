"""ImageNet-1K/22K presets (folders or shards, root from an argument or env var) and a synthetic
source."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .folder import FolderDataset
from .mask import MaskGenerator
from .shards import ShardDataset

IMAGENET_VARIANTS = {
    "imagenet1k": (1000, "SIMMIM_IMAGENET1K_ROOT"),
    "imagenet22k": (21841, "SIMMIM_IMAGENET22K_ROOT"),
}


def _how_to_make_shards(variant: str, env: str) -> str:
    return (
        f"Point root= (or ${env}) at a folder holding train/ and val/ (22K: train/ alone is "
        "fine), each either in ImageFolder layout (one subfolder per class) or as .tar shards "
        f"made with: python scripts/make_shards.py /path/to/{variant}/train ${env}/train "
        "--samples-per-shard 1000"
    )


def build_imagenet(
    variant: str = "imagenet1k",
    root: str | Path | None = None,
    split: str = "train",
    transform: Callable | None = None,
    seed: int = 0,
    samples_per_epoch: int | None = None,
    batch_size: int | None = None,
    max_bad_fraction: float = 0.01,
    listing_dir: str | Path | None = None,
    listing: str = "auto",
    listing_timeout: float = 3600.0,
) -> Dataset:
    """ImageNet from ``<root>/<split>``: ``*.tar`` shards → :class:`ShardDataset`, class folders →
    :class:`FolderDataset`. ``root`` defaults to ``$SIMMIM_IMAGENET1K_ROOT`` /
    ``$SIMMIM_IMAGENET22K_ROOT``.

    A class-folder tree is listed once, by the first process, into ``listing_dir`` (see
    :func:`~.listing_shared.load_listing`; None: every process lists it). Shards need no listing.

    Args:
        variant: ``"imagenet1k"`` or ``"imagenet22k"``.
        root: the folder holding ``<split>/`` (or the split itself); None: the variant's env var.
        split: ``"train"`` or ``"val"``; only training shards are shuffled and take
            ``samples_per_epoch``.
        transform: applied to the stored bytes (if it ``accepts_bytes``) or the RGB PIL image.
        seed, samples_per_epoch, batch_size: shards only (:class:`ShardDataset`).
        max_bad_fraction: share of an epoch's samples that may be unreadable before the run stops.
        listing_dir, listing, listing_timeout: folders only (:class:`FolderDataset`).

    Returns:
        A :class:`ShardDataset` or :class:`FolderDataset`; items ``(*transform outputs, label)``.

    Raises:
        FileNotFoundError: the root is missing or empty (the message says how to make shards).
        ValueError: a class-folder tree has the wrong number of classes.
    """
    if variant not in IMAGENET_VARIANTS:
        raise ValueError(f"variant={variant!r}; use one of {sorted(IMAGENET_VARIANTS)}")
    num_classes, env = IMAGENET_VARIANTS[variant]
    root = root or os.environ.get(env)
    if not root:
        raise FileNotFoundError(
            f"no {variant} root given and ${env} is not set. " + _how_to_make_shards(variant, env)
        )
    base = Path(root).expanduser()
    folder = base / split if (base / split).is_dir() else base
    if not folder.is_dir() or not any(folder.iterdir()):
        raise FileNotFoundError(
            f"{variant} root {folder} is missing or empty. " + _how_to_make_shards(variant, env)
        )
    shards = sorted(str(p) for p in folder.glob("*.tar"))
    train = split == "train"
    if shards:
        return ShardDataset(
            shards,
            transform,
            shuffle=train,
            seed=seed,
            samples_per_epoch=samples_per_epoch if train else None,
            batch_size=batch_size,
            max_bad_fraction=max_bad_fraction,
            num_classes=num_classes,
        )
    dataset = FolderDataset(
        folder,
        transform,
        labelled=True,
        max_bad_fraction=max_bad_fraction,
        listing_dir=listing_dir,
        listing=listing,
        listing_timeout=listing_timeout,
    )
    if dataset.num_classes != num_classes:
        raise ValueError(
            f"{folder} has {dataset.num_classes} class folders but {variant} has {num_classes}; "
            "point the root at the full dataset (or use the generic 'folder' source for a subset)"
        )
    return dataset


def build_imagenet1k(
    root: str | Path | None = None,
    split: str = "train",
    transform: Callable | None = None,
    **kwargs,
) -> Dataset:
    """ImageNet-1K preset (1000 classes, root ``$SIMMIM_IMAGENET1K_ROOT`` by default).

    Args:
        root, split, transform, **kwargs: :func:`build_imagenet`'s.

    Returns:
        A :class:`ShardDataset` or :class:`FolderDataset`.
    """
    return build_imagenet("imagenet1k", root, split, transform, **kwargs)


def build_imagenet22k(
    root: str | Path | None = None,
    split: str = "train",
    transform: Callable | None = None,
    **kwargs,
) -> Dataset:
    """ImageNet-22K preset (21841 classes, root ``$SIMMIM_IMAGENET22K_ROOT`` by default).

    Args:
        root, split, transform, **kwargs: :func:`build_imagenet`'s.

    Returns:
        A :class:`ShardDataset` or :class:`FolderDataset`.
    """
    return build_imagenet("imagenet22k", root, split, transform, **kwargs)


class SyntheticDataset(Dataset):
    """Random images for throughput benchmarks: item = ``(image, mask, label)`` or
    ``(image, label)``.

    ``image`` is float ``(3, H, W)`` from a small fixed pool (so producing it costs ~nothing);
    ``mask`` is bool ``(H/p, W/p)`` freshly drawn by ``mask_generator`` when one is given.

    Args:
        length: number of items.
        input_size: ``S`` or ``(H, W)`` of the images.
        num_classes: labels cycle through ``0 … num_classes - 1``.
        mask_generator: draws the masks; None: items without a mask.
        seed: seed of the image pool.
    """

    def __init__(
        self,
        length: int = 10_000,
        input_size: int | tuple[int, int] = 192,
        num_classes: int = 1000,
        mask_generator: MaskGenerator | None = None,
        seed: int = 0,
    ) -> None:
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        gen = torch.Generator().manual_seed(seed)
        self.pool = torch.randn(8, 3, h, w, generator=gen)
        self.length = length
        self.num_classes = num_classes
        self.mask_generator = mask_generator

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple:
        image, label = self.pool[i % len(self.pool)], i % self.num_classes
        if self.mask_generator is None:
            return image, label
        return image, self.mask_generator(), label


def build_synthetic(
    length: int = 10_000,
    input_size: int = 192,
    num_classes: int = 1000,
    mask_generator: MaskGenerator | None = None,
    seed: int = 0,
    transform: Callable | None = None,
) -> SyntheticDataset:
    """Synthetic source.

    Args:
        length, input_size, num_classes, mask_generator, seed: :class:`SyntheticDataset`'s.
        transform: the entry points pass every source theirs; the images here are made already
            normalised, so only its ``mask_generator`` (pretraining's) is taken, when
            ``mask_generator`` is None.

    Returns:
        The :class:`SyntheticDataset`.
    """
    if mask_generator is None:
        mask_generator = getattr(transform, "mask_generator", None)
    return SyntheticDataset(length, input_size, num_classes, mask_generator, seed)
