"""Hugging Face `datasets` source: `data=hf data.path=PATH`, map-style or streaming.

PATH is a `save_to_disk` directory, parquet / arrow files (a file, a glob, or a directory of them),
a local image folder (read as an `imagefolder`: class subfolders give the labels) or a hub name
(`cifar10`, where the network allows). A split may be sliced: `train[:1000]`. Columns:
`image_column` (auto: `image`, `img`, else the first `Image` feature, else the first array feature)
and `label_column` (auto: `label` / `labels` when a `ClassLabel`; null: unlabelled); the class names
are the `ClassLabel`'s.

Images are decoded from their stored bytes by our own path (`decode.py`: libjpeg-turbo, the fused
crop), not by `datasets` (the column is cast to `Image(decode=False)`); array columns (`Array2D` /
`Array3D`, nested sequences) are read as `(H, W, C)` / `(C, H, W)` arrays (`arrays.py`). A row that
cannot be decoded is counted and named (`hf:PATH:split#row`, or the image's file) like a bad file,
and replaced.

Map-style (`streaming=false`, the default; arrow files are memory-mapped, loader workers share them)
goes through the samplers every map-style source uses (`seeding.SeededSampler`: every sample once
per epoch, equal batches per rank). Streaming (`streaming=true`) is a :class:`~.shards.ShardDataset`
over the data set's own shards: the same exact-epoch plan over ranks and loader workers (or
`samples_per_epoch` per epoch), shard reads retried then skipped; it counts the rows of every shard
once, reading only the label column (or the image column where there is none)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .decode import apply_transform
from .faults import BadSampleTracker, ReplacingDataset
from .hf_read import (
    _first,
    _prepare,
    array_dtype,
    find_columns,
    open_split,
    parse_split,
    stored_value,
)
from .shards import _WHOLE, ShardDataset


class HFDataset(ReplacingDataset):
    """Map-style rows of one split of a Hugging Face data set; item = transform outputs + label (-1
    if unlabelled).

    Args:
        path, split: the data set and its split (a slice like ``train[:1000]`` works); see
            :func:`open_split`.
        transform: applied to the stored bytes / array (if it ``accepts_bytes``), else to the RGB
            PIL image.
        image_column, label_column: ``"auto"``, a name, or (labels) None; see :func:`find_columns`.
        max_samples: keep this many rows, a fixed-seed shuffle's first ones (transformers'
            `run_mim.py` does the same with `--max_train_samples`); None = all.
        val_split: a fraction held out with ``seed``; a named split is opened by the builder
            (:func:`build_hf`) instead.
        part: the side of ``val_split`` to keep, ``"train"`` or ``"val"``.
        seed: seed of the held-out fraction and of the ``max_samples`` shuffle.
        max_bad_fraction: see :class:`~.faults.BadSampleTracker`.
    """

    unreadable_hint = "check the data set (its image column, data.image_column)"

    def __init__(
        self,
        path: str,
        split: str = "train",
        transform: Callable | None = None,
        image_column: str | None = "auto",
        label_column: str | None = "auto",
        max_samples: int | None = None,
        val_split: float | None = None,
        part: str = "train",
        seed: int = 0,
        max_bad_fraction: float = 0.01,
    ) -> None:
        ds = open_split(path, split)
        if val_split is not None:
            ds = ds.train_test_split(test_size=val_split, seed=seed)[
                "test" if part == "val" else "train"
            ]
        if max_samples is not None and max_samples < len(ds):
            ds = ds.shuffle(seed=seed).select(range(max_samples))
        self.image_column, self.label_column, names = find_columns(
            ds.features, image_column, label_column
        )
        self.dataset = _prepare(ds, self.image_column)
        columns = [self.image_column] + ([self.label_column] if self.label_column else [])
        self._rows = self.dataset.select_columns(columns)  # only what a sample needs is read
        self.dtype = array_dtype(ds.features[self.image_column])
        if (
            self.dtype is not None
        ):  # arrays come out of arrow directly (no per-pixel Python objects)
            self._rows = self._rows.with_format("arrow")
        self.path, self.split = path, split
        self.classes = names if names is not None else ([] if self.label_column is None else None)
        self.num_classes = len(names) if names is not None else None
        self.transform = transform
        self.tracker = BadSampleTracker(max_bad_fraction)

    def __len__(self) -> int:
        return len(self.dataset)

    def _row(self, index: int) -> dict:
        row = self._rows[index]
        if self.dtype is None:
            return row
        return {
            name: _first(row.column(name)) for name in row.column_names
        }  # a one-row pyarrow Table

    def where(self, index: int) -> str:
        """What names row ``index`` as a bad sample: `hf:PATH:split#row`, and the image's file when
        the row stores one (an image folder)."""
        name = f"hf:{self.path}:{self.split}#{index}"
        try:
            cell = self._row(index)[self.image_column]
        except Exception:  # noqa: BLE001 - the name stays without the file
            return name
        return f"{cell['path']} ({name})" if isinstance(cell, dict) and cell.get("path") else name

    def stored(self, index: int):
        """Row ``index``'s stored image, undecoded.

        Returns:
            Encoded bytes or an array, as :func:`stored_value` gives it.
        """
        return stored_value(self._row(index)[self.image_column], self.dtype)

    def _load(self, index: int) -> tuple:
        row = self._row(index)
        label = int(row[self.label_column]) if self.label_column else -1
        return apply_transform(
            self.transform, stored_value(row[self.image_column], self.dtype), label
        )


class HFStreamDataset(ShardDataset):
    """Streaming rows of a Hugging Face data set, planned over its shards as
    :class:`~.shards.ShardDataset` plans tar shards (its arguments, after ``path`` / ``split`` / the
    columns). Rows are read a batch at a time with ``IterableDataset.iter`` (rank and worker split
    by the plan, never by `datasets` itself).

    Args:
        path, split: the data set and its split, opened streaming (:func:`open_split`).
        image_column, label_column: as for :class:`HFDataset`.
        max_samples: read only the first this many rows, in shard order; None = all.
        **kwargs: :class:`~.shards.ShardDataset`'s (``transform``, ``shuffle``, ``seed``,
            ``samples_per_epoch``, ...).
    """

    def __init__(
        self,
        path: str,
        split: str = "train",
        image_column: str | None = "auto",
        label_column: str | None = "auto",
        max_samples: int | None = None,
        **kwargs,
    ) -> None:
        ds = open_split(path, split, streaming=True)
        self.image_column, self.label_column, names = find_columns(
            ds.features, image_column, label_column
        )
        self.stream = _prepare(ds, self.image_column)
        self.dtype = array_dtype(ds.features[self.image_column])
        self.path, self.split, self.max_samples = path, split, max_samples
        self.classes = names if names is not None else ([] if self.label_column is None else None)
        n = (
            getattr(self.stream, "num_shards", None) or self.stream.n_shards
        )  # n_shards: its name in datasets < 3
        super().__init__(
            [f"hf:{path}:{split}#shard{i}" for i in range(n)],
            num_classes=len(names) if names is not None else None,
            **kwargs,
        )

    @property
    def sizes(self) -> list[int]:
        """Rows per shard, counted once (the label column alone, or the image column); cut at
        ``max_samples``."""
        if self._sizes is None:
            column = self.label_column or self.image_column
            sizes = []
            for i in range(len(self.shards)):
                shard = self._shard(i).select_columns([column])
                sizes.append(sum(len(batch[column]) for batch in shard.iter(batch_size=1024)))
            left = self.max_samples if self.max_samples is not None else sum(sizes)
            self._sizes = []
            for size in sizes:  # the first max_samples rows, in shard order
                self._sizes.append(min(size, left))
                left -= self._sizes[-1]
        return self._sizes

    def _shard(self, index: int):
        return self.stream.shard(num_shards=len(self.shards), index=index, contiguous=True)

    def _samples(self, url: str, start: int, stop: int) -> Iterator[dict]:
        index = int(url.rsplit("#shard", 1)[1])
        shard = self._shard(index).skip(start) if start else self._shard(index)
        if stop < _WHOLE:
            shard = shard.take(stop - start)
        columns = [self.image_column] + ([self.label_column] if self.label_column else [])
        position = start
        for batch in shard.select_columns(columns).iter(batch_size=64):
            for j, value in enumerate(batch[self.image_column]):
                sample = {"__key__": str(position), "__url__": url, "pixels": value}
                if self.label_column:
                    sample["cls"] = batch[self.label_column][j]
                position += 1
                yield sample

    def _decode(self, sample: dict) -> tuple:
        label = int(sample["cls"]) if "cls" in sample else -1
        return apply_transform(self.transform, stored_value(sample["pixels"], self.dtype), label)


def build_hf(
    path: str,
    split: str = "train",
    part: str = "train",
    val_split: str | float | None = None,
    transform: Callable | None = None,
    image_column: str | None = "auto",
    label_column: str | None = "auto",
    streaming: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
    split_seed: int | None = None,
    samples_per_epoch: int | None = None,
    shuffle_buffer: int = 256,
    max_bad_fraction: float = 0.01,
    read_attempts: int = 3,
    retry_backoff: float = 1.0,
) -> HFDataset | HFStreamDataset | None:
    """Hugging Face data set source (see the module doc): the training or the validation part.

    Args:
        path, split: the data set and the split to read (:func:`open_split`).
        part: ``"train"``, or ``"val"``: the split ``val_split`` names, or the fraction
            ``val_split`` held out of ``split``.
        val_split: a split name, a fraction in (0, 1) (map-style only), or None.
        transform, image_column, label_column: as for :class:`HFDataset`.
        streaming: read it as :class:`HFStreamDataset` (shards, ranks, workers) instead.
        max_samples: bounds the training part.
        seed: shuffles a streamed data set; the split seed when ``split_seed`` is None.
        split_seed: picks the held-out and the ``max_samples`` rows, the same in every run
            (``data.val_split_seed``).
        samples_per_epoch, shuffle_buffer, read_attempts, retry_backoff: streaming only, as
            :class:`~.shards.ShardDataset` takes them (``samples_per_epoch`` None: exact epochs).
        max_bad_fraction: see :class:`~.faults.BadSampleTracker`.

    Returns:
        An :class:`HFDataset` or :class:`HFStreamDataset`; None for ``part="val"`` without
        ``val_split``.
    """
    if part not in ("train", "val"):
        raise ValueError(f"part={part!r}: 'train' or 'val'")
    fraction = val_split if isinstance(val_split, float) else None
    if fraction is not None and not 0.0 < fraction < 1.0:
        raise ValueError(f"data.val_split={fraction}: a fraction in (0, 1), or the name of a split")
    if part == "val":
        if val_split is None:
            return None
        split, max_samples = (split if fraction is not None else str(val_split)), None
    columns = dict(image_column=image_column, label_column=label_column)
    if streaming:
        if fraction is not None:
            raise ValueError(
                f"data.val_split={fraction}: a held-out fraction needs a map-style data set; with "
                "data.streaming=true name a split (data.val_split=validation)"
            )
        train = part == "train"
        return HFStreamDataset(
            path,
            split,
            **columns,
            max_samples=max_samples,
            transform=transform,
            shuffle=train,
            seed=seed,
            samples_per_epoch=samples_per_epoch if train else None,
            shuffle_buffer=shuffle_buffer,
            max_bad_fraction=max_bad_fraction,
            read_attempts=read_attempts,
            retry_backoff=retry_backoff,
        )
    return HFDataset(
        path,
        split,
        transform,
        **columns,
        max_samples=max_samples,
        val_split=fraction,
        part=part,
        seed=seed if split_seed is None else split_seed,
        max_bad_fraction=max_bad_fraction,
    )


__all__ = [
    "HFDataset",
    "HFStreamDataset",
    "build_hf",
    "find_columns",
    "open_split",
    "parse_split",
    "stored_value",
]
