"""What `predict` and `visualize` read: files, folders (recursively), globs, and rows of a Hugging
Face data set (`hf:PATH[:SPLIT]`, PATH as `data=hf data.path=` takes it: a `save_to_disk`
directory, parquet / arrow files, an image folder or a hub name; SPLIT defaults to `train` and
may be sliced, `test[:100]`)."""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..data import IMAGE_EXTENSIONS

HF_PREFIX = "hf:"
_HF_SPEC = re.compile(r"^hf:(?P<path>.+?)(?::(?P<split>[\w.-]+(?:\[\d*:\d*\])?))?$")


@dataclass(frozen=True)
class Input:
    """One thing to read: `name` (what results and messages call it: a path, or `hf:PATH:split#row`)
    and `read`, which returns what a data set stores (encoded bytes, or an array) and raises when it
    cannot."""

    name: str
    read: Callable[[], object]


def expand_images(specs: list[str] | str) -> list[Path]:
    """Files, folders (recursively, image and array extensions in any case) and globs → sorted
    unique paths."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found += sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
        elif path.is_file():
            found.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{spec}: no such file, folder or matching glob")
            found += matches
    return list(dict.fromkeys(found))


def parse_hf_spec(spec: str) -> tuple[str, str]:
    """`hf:PATH[:SPLIT]` → `(PATH, SPLIT)`; SPLIT defaults to `train`."""
    m = _HF_SPEC.match(spec)
    if m is None or not m["path"]:
        raise ValueError(
            f"{spec!r}: write hf:PATH or hf:PATH:SPLIT (e.g. hf:/data/cifar10:test[:100])"
        )
    return m["path"], m["split"] or "train"


def hf_inputs(spec: str) -> list[Input]:
    """The rows of `hf:PATH[:SPLIT]` as inputs (its image column found as `data=hf` finds it)."""
    from ..data.hf import HFDataset

    path, split = parse_hf_spec(spec)
    dataset = HFDataset(path, split=split)
    return [Input(dataset.where(i), (lambda i=i: dataset.stored(i))) for i in range(len(dataset))]


def expand_inputs(specs: list[str] | str) -> list[Input]:
    """`expand_images` for files, folders and globs, and `hf:PATH[:SPLIT]` for a data set's rows, in
    order."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    inputs: list[Input] = []
    for spec in specs:
        if str(spec).startswith(HF_PREFIX):
            inputs += hf_inputs(str(spec))
        else:
            inputs += [Input(str(p), p.read_bytes) for p in expand_images([spec])]
    return list({i.name: i for i in inputs}.values())


__all__ = ["HF_PREFIX", "Input", "expand_images", "expand_inputs", "hf_inputs", "parse_hf_spec"]
