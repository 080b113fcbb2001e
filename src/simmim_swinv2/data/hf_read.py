"""Reading Hugging Face `datasets` data for `data=hf` (`hf.py`): one split of a path opened, its
image and label columns found, a row's stored image (bytes or an array) taken out as our decoders
read it."""

from __future__ import annotations

import glob as globlib
import re
from pathlib import Path

import numpy as np

_SPLIT = re.compile(r"^(?P<name>[\w.-]+)(?:\[(?P<start>\d*):(?P<stop>\d*)\])?$")
_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}


def _datasets():
    try:
        import datasets
    # an optional dependency: the core install stays free of pyarrow and pandas
    except ImportError as e:
        from simmim_swinv2 import ConfigError

        raise ConfigError(
            "data=hf reads through the `datasets` library, which is not installed: "
            "pip install 'simmim-swinv2[hf]' (or pip install 'datasets>=3.1')"
        ) from e
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


__all__ = ["array_dtype", "find_columns", "open_split", "parse_split", "stored_value"]
