"""scikit-learn's bundled digits (1,797 8×8 grey images, 10 classes) as a tiny offline RGB
dataset."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from .decode import apply_transform


class DigitsDataset(Dataset):
    """Digits rendered to RGB PIL images of ``image_size`` (bicubic upsampling), item = outputs +
    label.

    The split is a fixed stratified ``1 - val_fraction`` / ``val_fraction`` split (seeded), so
    train and val never overlap and are the same on every run and rank.

    Args:
        split: ``"train"``, ``"val"`` or ``"all"`` (the 1,797 images).
        transform: applied to the RGB PIL image; None: the item is the image itself.
        image_size: side of the rendered images, in pixels.
        val_fraction: share of the images held out as ``"val"``.
        seed: seed of the split.
    """

    num_classes = 10
    classes = [str(i) for i in range(10)]

    def __init__(
        self,
        split: str = "train",
        transform: Callable | None = None,
        image_size: int = 192,
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        if split not in ("train", "val", "all"):
            raise ValueError(f"split={split!r}; use 'train', 'val' or 'all'")
        digits = load_digits()
        images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)  # values 0..16 → 0..255
        labels = digits.target.astype(np.int64)
        index = np.arange(len(labels))
        if split != "all":
            train_idx, val_idx = train_test_split(
                index, test_size=val_fraction, stratify=labels, random_state=seed
            )
            index = np.sort(train_idx if split == "train" else val_idx)
        self.indices = index
        self.images = images[index]
        self.labels = labels[index]
        self.image_size = image_size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        """The ``i``-th digit of the split, untransformed.

        Args:
            i: index within the split.

        Returns:
            An RGB PIL image of ``image_size × image_size`` (bicubic upsampling of the 8×8 grey).
        """
        img = Image.fromarray(self.images[i]).resize(
            (self.image_size, self.image_size), Image.Resampling.BICUBIC
        )
        return img.convert("RGB")

    def __getitem__(self, i: int) -> tuple:
        return apply_transform(self.transform, self.image(i), int(self.labels[i]))


def build_digits(
    split: str = "train",
    transform: Callable | None = None,
    image_size: int = 192,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> DigitsDataset:
    """Digits source; no download. Arguments: :class:`DigitsDataset`'s.

    Returns:
        The :class:`DigitsDataset`; items ``(*transform outputs, label)``.
    """
    return DigitsDataset(split, transform, image_size, val_fraction, seed)
