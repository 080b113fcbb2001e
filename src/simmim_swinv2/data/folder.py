"""Image-folder source: ImageFolder layout (class subfolders → sorted labels) or an unlabelled
tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .decode import apply_transform
from .faults import BadSampleTracker, ReplacingDataset
from .listing import IMAGE_EXTENSIONS, build_listing
from .listing_shared import load_listing

__all__ = ["IMAGE_EXTENSIONS", "FolderDataset", "build_folder", "scan_folder"]


def scan_folder(
    root: str | Path, labelled: bool | None = None
) -> tuple[list[tuple[str, int]], list[str]]:
    """List ``(path, label)`` pairs and the sorted class names under ``root``.

    ``labelled=True``: each immediate subfolder is a class (ImageFolder layout; files directly in
    ``root`` are ignored; a subfolder without images gets no label). ``False``: every image anywhere
    below ``root``, label -1. ``None``: labelled when ``root`` has subfolders and no images of its
    own. Images: :data:`IMAGE_EXTENSIONS` in any case; hidden files and folders are skipped;
    symlinked folders are followed. Order: sorted names, a folder's images before its subfolders'
    (as ``os.walk`` goes). As Python objects: for a dataset, :func:`~.listing_shared.load_listing`
    keeps the same list compact.

    Args:
        root: the folder.
        labelled: ``True``, ``False`` or ``None`` (auto), as above.

    Returns:
        ``(samples, classes)``: ``[(path, label), ...]`` and the sorted class names (empty when
        unlabelled).
    """
    listing = build_listing(root, labelled)
    return listing.tolist(), listing.classes


class FolderDataset(ReplacingDataset):
    """Map-style dataset over an image folder; item = transform outputs + label (-1 if unlabelled).

    An unreadable image is counted and named (its path) in ``self.tracker``
    (:class:`~.faults.BadSampleTracker`) and replaced by the next readable one
    (:class:`~.faults.ReplacingDataset`), so batch shapes and per-rank counts stay fixed; the run
    stops once the bad images of an epoch, over all loader workers and ranks, pass
    ``max_bad_fraction`` of it (:class:`~simmim_swinv2.training.bad_samples.BadSampleMonitor`).
    Under DDP, use a ``DistributedSampler`` (Lightning adds one): it pads by repeating so every rank
    gets the same number of batches, and reshuffles on ``set_epoch``.

    ``samples`` is a :class:`~.listing.Listing` (``samples[i] = (path, label)``, as
    :func:`scan_folder` lists them), held as arrays so loader workers share it instead of copying
    it. With ``listing_dir`` it is made once by the first process, kept there and reused by every
    rank and on restart while the tree is unchanged (``listing``: ``auto``, or ``rebuild`` to list
    again; the others wait up to ``listing_timeout`` s); without, each process lists the folder
    itself. See :func:`~.listing_shared.load_listing`.

    Args:
        root: the image folder.
        transform: applied to the file's bytes (if it ``accepts_bytes``) or its RGB PIL image.
        labelled: class subfolders (``True``), every image unlabelled (``False``), or auto
            (``None``; :func:`scan_folder`).
        max_bad_fraction: share of an epoch's samples that may be unreadable before the run stops.
        listing_dir: where the shared listing is kept; None: each process lists the folder.
        listing: ``"auto"`` (reuse a current listing) or ``"rebuild"``.
        listing_timeout: seconds the other processes wait for the first one's listing.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable | None = None,
        labelled: bool | None = None,
        max_bad_fraction: float = 0.01,
        listing_dir: str | Path | None = None,
        listing: str = "auto",
        listing_timeout: float = 3600.0,
    ) -> None:
        self.root = str(root)
        self.samples = load_listing(root, labelled, listing_dir, listing, listing_timeout)
        self.classes = self.samples.classes
        self.num_classes = len(self.classes)
        self.transform = transform
        self.tracker = BadSampleTracker(max_bad_fraction)

    def __len__(self) -> int:
        return len(self.samples)

    unreadable_hint = "check the folder (scripts/make_shards.py lists unreadable files)"

    def where(self, index: int) -> str:
        """The path of sample ``index`` (what names it as a bad sample)."""
        return self.samples[index][0]

    def _load(self, index: int) -> tuple:
        path, label = self.samples[index]
        with open(path, "rb") as f:
            data = f.read()
        return apply_transform(self.transform, data, label)


def build_folder(
    root: str | Path,
    transform: Callable | None = None,
    labelled: bool | None = None,
    max_bad_fraction: float = 0.01,
    listing_dir: str | Path | None = None,
    listing: str = "auto",
    listing_timeout: float = 3600.0,
) -> FolderDataset:
    """Image-folder source. Arguments: :class:`FolderDataset`'s.

    Returns:
        The :class:`FolderDataset`; items ``(*transform outputs, label)``, label -1 if unlabelled.
    """
    return FolderDataset(
        root, transform, labelled, max_bad_fraction, listing_dir, listing, listing_timeout
    )
