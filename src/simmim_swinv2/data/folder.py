"""Image-folder source: ImageFolder layout (class subfolders → sorted labels) or an unlabelled tree."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from .decode import apply_transform
from .faults import BadSampleTracker, TooManyBadSamples

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if _is_image(f))
    return found


def scan_folder(root: str | Path, labelled: bool | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """List ``(path, label)`` pairs and the sorted class names under ``root``.

    ``labelled=True``: each immediate subfolder is a class (ImageFolder layout; files directly in
    ``root`` are ignored). ``False``: every image anywhere below ``root``, label -1.
    ``None``: labelled when ``root`` has subfolders and no images of its own.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory; check the path")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labelled is None:
        labelled = bool(subdirs) and not any(_is_image(p.name) for p in root.iterdir() if p.is_file())
    if labelled:
        classes, samples = [], []
        for d in subdirs:
            files = _walk_images(d)
            if files:
                samples.extend((str(f), len(classes)) for f in files)
                classes.append(d.name)
    else:
        classes, samples = [], [(str(f), -1) for f in _walk_images(root)]
    if not samples:
        raise FileNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}, any case) found under {root}"
            + (" in class subfolders" if labelled else "")
            + "; point the data root at a folder of images"
        )
    return samples, classes


_REPLACEMENT_TRIES = 64  # candidates tried in place of an unreadable image before giving up


class FolderDataset(Dataset):
    """Map-style dataset over an image folder; item = transform outputs + label (-1 if unlabelled).

    An unreadable image is counted and named (its path) in ``self.tracker``
    (:class:`~.faults.BadSampleTracker`) and replaced by the next readable one, so batch shapes and
    per-rank counts stay fixed; the run stops once the bad images of an epoch, over all loader workers and
    ranks, pass ``max_bad_fraction`` of it (:class:`~simmim_swinv2.tasks.bad_samples.BadSampleMonitor`).
    Under DDP, use a ``DistributedSampler`` (Lightning adds one): it pads by repeating so every rank gets the
    same number of batches, and reshuffles on ``set_epoch``.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable | None = None,
        labelled: bool | None = None,
        max_bad_fraction: float = 0.01,
    ) -> None:
        self.root = str(root)
        self.samples, self.classes = scan_folder(root, labelled)
        self.num_classes = len(self.classes)
        self.transform = transform
        self.tracker = BadSampleTracker(max_bad_fraction)

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, index: int) -> tuple:
        path, label = self.samples[index]
        with open(path, "rb") as f:
            data = f.read()
        return apply_transform(self.transform, data, label)

    def __getitem__(self, index: int) -> tuple:
        try:
            out = self._load(index)
        except Exception as err:  # noqa: BLE001 - any read/decode/transform failure is a bad sample
            self.tracker.bad(self.samples[index][0], err)
        else:
            self.tracker.good()
            return out
        # The replacement: the next readable image (a broken run of files is passed over by jumping ahead;
        # random jumps under PerSampleSeed are the same in every run). Failed candidates are not counted
        # here: each is counted once, when its own index comes.
        n = len(self)
        for attempt in range(1, _REPLACEMENT_TRIES + 1):
            candidate = (index + attempt) % n if attempt <= 8 else random.randrange(n)
            try:
                return self._load(candidate)
            except Exception:  # noqa: BLE001, S112 - try the next candidate
                continue
        raise TooManyBadSamples(
            f"{_REPLACEMENT_TRIES} images tried in place of the unreadable {self.samples[index][0]} could not be "
            f"read either: most of {self.root} seems unreadable; check the folder (scripts/make_shards.py lists "
            "unreadable files)"
        )


def build_folder(
    root: str | Path,
    transform: Callable | None = None,
    labelled: bool | None = None,
    max_bad_fraction: float = 0.01,
) -> FolderDataset:
    """Image-folder source (see :class:`FolderDataset`)."""
    return FolderDataset(root, transform, labelled, max_bad_fraction)
