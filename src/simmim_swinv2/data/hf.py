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

import glob as globlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from .decode import apply_transform
from .faults import BadSampleTracker, ReplacingDataset
from .shards import _WHOLE, ShardDataset

_SPLIT = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>\d*):(?P<stop>\d*)\])?$")
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


def _datasets():
    import datasets

    return datasets


def parse_split(split: str) -> tuple[str, slice | None]:
    """`train` → `("train", None)`; `test[:100]` → `("test", slice(None, 100))`."""
    m = _SPLIT.match(str(split))
    if m is None:
        raise ValueError(
            f"split {split!r}: give a split name, optionally sliced "
            "(train, test[:100], train[10:20])"
        )
    if m["start"] is None:
        return m["name"], None
    return m["name"], slice(
        int(m["start"]) if m["start"] else None, int(m["stop"]) if m["stop"] else None
    )


def _is_saved(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    )


def open_split(path: str, split: str, streaming: bool = False):
    """The `datasets.Dataset` (or `IterableDataset` when `streaming`) of one split of PATH (see the
    module doc)."""
    ds_lib = _datasets()
    name, cut = parse_split(split)
    local = Path(path).expanduser()
    try:
        if _is_saved(local):
            saved = ds_lib.load_from_disk(str(local))
            if isinstance(saved, ds_lib.DatasetDict):
                if name not in saved:
                    raise ValueError(
                        f"{path} has the splits {sorted(saved)}, not {name!r}: set data.split / "
                        "data.val_split to one of them"
                    )
                saved = saved[name]
            elif name != "train":
                raise ValueError(
                    f"{path} holds one data set without splits (save_to_disk of a Dataset): only "
                    f"'train' names it, not {name!r}; hold out a fraction instead "
                    "(data.val_split=0.1)"
                )
            ds = (
                saved.to_iterable_dataset(num_shards=max(1, min(len(saved), 64)))
                if streaming
                else saved
            )
        elif any(c in path for c in "*?[") or local.is_file():
            files = sorted(globlib.glob(str(local))) if not local.is_file() else [str(local)]
            kinds = {_FILE_BUILDERS.get(Path(f).suffix) for f in files}
            if not files or None in kinds or len(kinds) != 1:
                raise FileNotFoundError(
                    f"{path}: expected .parquet or .arrow files (one kind), found "
                    f"{[Path(f).name for f in files[:5]]}"
                )
            if name != "train":
                raise ValueError(
                    f"{path} is a set of files, one split ('train'), not {name!r}: "
                    "hold out a fraction "
                    "instead (data.val_split=0.1)"
                )
            ds = ds_lib.load_dataset(
                kinds.pop(), data_files={"train": files}, split="train", streaming=streaming
            )
        else:  # a directory datasets reads itself (parquet / arrow files, image folder), a hub name
            ds = ds_lib.load_dataset(
                str(local) if local.is_dir() else path, split=name, streaming=streaming
            )
    except (FileNotFoundError, ValueError):
        raise
    except (
        Exception
    ) as err:  # datasets' own errors (offline hub, unknown name, no such split): say what to give
        raise ValueError(
            f"data.path={path} split={name!r} could not be opened "
            f"({type(err).__name__}: {err}); give a "
            "save_to_disk directory, parquet/arrow files or a glob, an image folder, or a hub name "
            "(online)"
        ) from err
    if cut is not None:
        if streaming:
            ds = ds.skip(cut.start or 0)
            ds = ds.take(cut.stop - (cut.start or 0)) if cut.stop is not None else ds
        else:
            ds = ds.select(range(len(ds))[cut])
    return ds


def _is_array(feature) -> bool:
    ds_lib = _datasets()
    if isinstance(feature, (ds_lib.Array2D, ds_lib.Array3D)):
        return True
    inner = getattr(feature, "feature", None)  # Sequence / List of sequences of numbers
    return (
        isinstance(feature, (ds_lib.Sequence, getattr(ds_lib, "List", ds_lib.Sequence)))
        and inner is not None
        and (
            isinstance(inner, (ds_lib.Sequence, getattr(ds_lib, "List", ds_lib.Sequence)))
            or _is_array(inner)
        )
    )


def array_dtype(feature) -> np.dtype | None:
    """The pixel type an array feature declares (`Array3D(dtype="uint16")`, a sequence of
    `Value("uint8")`), which the numpy formatting does not keep (it widens integers to int64); None
    for other features."""
    if not _is_array(feature):
        return None
    while getattr(feature, "feature", None) is not None:
        feature = feature.feature
    return np.dtype(feature.dtype)


def find_columns(
    features, image_column: str | None = "auto", label_column: str | None = "auto"
) -> tuple[str, str | None, list[str] | None]:
    """`(image column, label column or None, class names or None)` of a data set's `features`."""
    ds_lib = _datasets()
    if features is None:
        raise ValueError("the data set does not say its features (columns): give data.image_column")
    listing = ", ".join(f"{k} ({type(v).__name__})" for k, v in features.items())
    if image_column in (None, "auto"):
        found = [c for c in ("image", "img") if c in features]
        found += [c for c, f in features.items() if isinstance(f, ds_lib.Image)]
        found += [c for c, f in features.items() if _is_array(f)]
        if not found:
            raise ValueError(
                f"no image column among {listing}: set data.image_column to one "
                "(an Image feature or "
                "an array of pixels)"
            )
        image_column = found[0]
    elif image_column not in features:
        raise ValueError(
            f"data.image_column={image_column!r} is not a column; the columns: {listing}"
        )
    if label_column == "auto":
        label_column = next(
            (c for c in ("label", "labels") if isinstance(features.get(c), ds_lib.ClassLabel)), None
        )
    elif label_column is not None and label_column not in features:
        raise ValueError(
            f"data.label_column={label_column!r} is not a column; the columns: {listing} "
            "(null: none)"
        )
    names = (
        features[label_column].names
        if label_column and isinstance(features[label_column], ds_lib.ClassLabel)
        else None
    )
    return image_column, label_column, names


def _prepare(ds, image_column: str):
    """Cast an `Image` column to its stored bytes (`decode=False`): our decoder reads them."""
    ds_lib = _datasets()
    if ds.features is not None and isinstance(ds.features[image_column], ds_lib.Image):
        ds = ds.cast_column(image_column, ds_lib.Image(decode=False))
    return ds


def stored_value(value, dtype: np.dtype | None = None):
    """What a row's image cell holds, as our decoders take it: encoded bytes (an image column: its
    bytes, or its local file when only the path is stored) or an array (an array column, of its
    declared `dtype`)."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        if value.get("path"):
            with open(value["path"], "rb") as f:
                return f.read()
        raise ValueError("an image cell with neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return np.asarray(value, dtype=dtype)


def _first(column):
    """The first value of a pyarrow column as numpy: an array cell (`Array3D`'s extension type,
    nested lists) stacked to an ndarray, a scalar as a scalar. (`datasets`' numpy formatting is
    not used: it also widens integer pixels to int64, and in older releases it imports
    torchvision.io.VideoReader, gone from torchvision 0.29.)"""
    value = column.combine_chunks().to_numpy(zero_copy_only=False)[0]
    return (
        np.asarray(value.tolist())
        if isinstance(value, np.ndarray) and value.dtype == object
        else value
    )


class HFDataset(ReplacingDataset):
    """Map-style rows of one split of a Hugging Face data set; item = transform outputs + label (-1
    if unlabelled).

    Args: path, split: see :func:`open_split`. transform: applied to the stored bytes / array (if
    it ``accepts_bytes``), else to the RGB PIL image. image_column, label_column: see
    :func:`find_columns`. max_samples: keep this many rows, a fixed-seed shuffle's first ones
    (transformers' `run_mim.py` does the same with `--max_train_samples`); None = all. val_split:
    a fraction held out with ``seed`` (``part`` chooses the side); a named split is opened by the
    builder (:func:`build_hf`) instead. max_bad_fraction: see :class:`~.faults.BadSampleTracker`."""

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
        """`hf:PATH:split#row`, and the image's file when the row stores one (an image folder)."""
        name = f"hf:{self.path}:{self.split}#{index}"
        try:
            cell = self._row(index)[self.image_column]
        except Exception:  # noqa: BLE001 - the name stays without the file
            return name
        return f"{cell['path']} ({name})" if isinstance(cell, dict) and cell.get("path") else name

    def stored(self, index: int):
        """Row `index`'s stored image (bytes or array), as :func:`stored_value` gives it."""
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
    by the plan, never by `datasets` itself)."""

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
        )  # n_shards: its name before datasets 3.x
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
    samples_per_epoch: int | None = None,
    shuffle_buffer: int = 256,
    max_bad_fraction: float = 0.01,
    read_attempts: int = 3,
    retry_backoff: float = 1.0,
) -> HFDataset | HFStreamDataset | None:
    """Hugging Face data set source (see the module doc): the training part of ``split``
    (``part="train"``) or the validation part (``part="val"``): the split ``val_split`` names, or
    the fraction ``val_split`` held out of ``split`` with ``seed``; None for the validation part
    without ``val_split``.

    ``max_samples`` bounds the training part; streaming takes ``samples_per_epoch`` (None: exact
    epochs), ``shuffle_buffer``, ``read_attempts`` and ``retry_backoff`` as
    :class:`~.shards.ShardDataset` does."""
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
        seed=seed,
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
