"""Helpers for the data tests: write small images of every kind, shards, and a bytes-identity
transform."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def photo(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    """A smooth random RGB image ``size = (W, H)``."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    arr = np.stack(
        [np.sin(x * rng.uniform(1, 9) + y * rng.uniform(1, 9) + c) for c in range(3)], -1
    )
    return Image.fromarray(
        (arr * 100 + 128 + rng.normal(0, 8, arr.shape)).clip(0, 255).astype(np.uint8)
    )


def write_mixed_folder(root: Path) -> dict[str, str]:
    """Two classes with one image of each kind, plus a non-image. Returns ``{relpath: kind}``."""
    kinds = {}
    for c, cls in enumerate(["b_cat", "a_dog"]):  # sorted order puts a_dog first
        d = root / cls
        d.mkdir(parents=True)
        base = photo(c)
        base.save(d / "rgb.jpg")
        base.save(d / "upper.JPEG")
        base.save(d / "png.png")
        base.convert("RGBA").save(d / "rgba.png")
        base.convert("L").save(d / "gray.jpg")
        base.convert("P").save(d / "palette.png")
        base.save(d / "web.webp")
        base.save(d / "bitmap.BMP")
        (d / "notes.txt").write_text("not an image")
        for name in [
            "rgb.jpg",
            "upper.JPEG",
            "png.png",
            "rgba.png",
            "gray.jpg",
            "palette.png",
            "web.webp",
            "bitmap.BMP",
        ]:
            kinds[f"{cls}/{name}"] = name
    return kinds


def write_corrupt(path: Path) -> None:
    """A JPEG cut in half (truncated)."""
    buf = io.BytesIO()
    photo(99, (120, 90)).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


def write_class_folder(
    root: Path, counts: list[int], size: tuple[int, int] = (48, 40)
) -> list[str]:
    """ImageFolder tree with ``counts[c]`` distinct JPEGs in class ``c``; returns relative paths."""
    rels, i = [], 0
    for c, n in enumerate(counts):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            rel = f"class{c}/img{i:03d}.jpg"
            photo(i, size).save(root / rel, quality=90)
            rels.append(rel)
            i += 1
    return rels


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> None:
    """A shard by hand: each sample dict maps extension → payload, plus ``__key__``."""
    with tarfile.open(path, "w") as tar:
        for s in samples:
            for ext, payload in s.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def oriented_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """JPEG (q95) whose stored pixels, turned by its EXIF ``orientation`` tag (1-8), show
    ``upright``."""
    undo = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    stored = upright.transpose(undo[orientation]) if orientation in undo else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def jpeg_bytes(seed: int, size: tuple[int, int] = (40, 32)) -> bytes:
    buf = io.BytesIO()
    photo(seed, size).save(buf, "JPEG")
    return buf.getvalue()


class Fingerprint:
    """Transform over encoded bytes returning a stable id (first 12 hex of md5) instead of an
    image."""

    accepts_bytes = True

    def __call__(self, data: bytes) -> str:
        Image.open(io.BytesIO(data)).load()  # still fails on corrupt data, like a real transform
        return hashlib.md5(data).hexdigest()[:12]
