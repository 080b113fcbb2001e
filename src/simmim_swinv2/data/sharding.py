"""Write an image folder as WebDataset tar shards (the engine behind ``scripts/make_shards.py``).

Output in ``out_dir``: ``000000.tar, 000001.tar, …`` (each sample: ``<key>.jpg`` — or, for ``.npy``
arrays and TIFF files of any channel count, the file as it is, ``<key>.npy`` / ``<key>.tif`` —,
``<key>.cls`` when labelled, ``<key>.path`` = path relative to the source), ``classes.json`` (list,
index = label), ``sizes.json`` (samples per shard), ``bad_files.tsv`` (path, reason) and
``manifest.json`` (the settings; a re-run with other settings is refused).

Files are shuffled with ``seed`` before being cut into shards, so every shard mixes classes.
Each shard is written to a temporary name and renamed when complete, then its ``.json`` record;
a re-run skips shards whose record exists, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from multiprocessing import Pool
from pathlib import Path

from PIL import Image, ImageOps

from .arrays import is_array_bytes, read_array, to_hwc
from .decode import to_rgb
from .folder import scan_folder

TAR_OVERHEAD = 3 * 1024  # headers + padding per sample, for --max-shard-bytes estimates


def plan_shards(
    files: list[tuple[str, int, int]], samples_per_shard: int, max_shard_bytes: int | None
) -> list[list[int]]:
    """Cut ``[(path, label, nbytes), ...]`` (already in shard order) into shards of file indices."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, (_, _, nbytes) in enumerate(files):
        cost = nbytes + TAR_OVERHEAD
        full = len(shards[-1]) >= samples_per_shard or (
            max_shard_bytes is not None and shards[-1] and size + cost > max_shard_bytes
        )
        if full:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += cost
    return [s for s in shards if s]


def encode_image(data: bytes, resize_shorter: int | None, quality: int = 95) -> bytes:
    """Fully decode ``data`` (raising on corrupt/truncated files); return JPEG bytes.

    The original bytes (EXIF included) are kept for RGB/grey JPEGs that need no resizing; anything
    else is turned upright by its EXIF orientation, converted to RGB (and resized so the shorter
    side is ``resize_shorter``) and re-encoded.
    """
    img = Image.open(io.BytesIO(data))
    original_size = img.size
    if resize_shorter is not None and min(img.size) > resize_shorter and img.format == "JPEG":
        s = resize_shorter / min(img.size)
        # only reduces while >= target
        img.draft("RGB", (round(img.width * s), round(img.height * s)))
    img.load()
    resize = resize_shorter is not None and min(img.size) > resize_shorter
    if (
        img.format == "JPEG"
        and img.mode in ("RGB", "L")
        and not resize
        and img.size == original_size
    ):
        return data
    ImageOps.exif_transpose(img, in_place=True)  # re-encoded without EXIF: store the pixels upright
    img = to_rgb(img)
    if resize:
        s = resize_shorter / min(img.size)
        img = img.resize(
            (max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BICUBIC
        )
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def encode_sample(data: bytes, resize_shorter: int | None, quality: int = 95) -> tuple[str, bytes]:
    """``(extension, payload)`` of one source file: an array (``.npy``, TIFF) read in full to check
    it and kept as it is (``npy`` / ``tif``; ``resize_shorter`` does not apply), any other image
    through :func:`encode_image`."""
    if is_array_bytes(data):
        to_hwc(read_array(data))
        return ("npy" if data[:1] == b"\x93" else "tif"), data
    return "jpg", encode_image(data, resize_shorter, quality)


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(payload), 0o444, 0
    tar.addfile(info, io.BytesIO(payload))


def write_shard(job: dict) -> dict:
    """Write one shard; returns ``{"name", "count", "bad": [[path, reason], ...]}``."""
    out_dir, name = Path(job["out_dir"]), job["name"]
    tmp = out_dir / f".{name}.tmp{os.getpid()}"
    count, bad = 0, []
    with tarfile.open(tmp, "w") as tar:
        for index, path, rel, label in job["samples"]:
            try:
                with open(path, "rb") as f:
                    ext, payload = encode_sample(f.read(), job["resize_shorter"], job["quality"])
            except Exception as err:  # noqa: BLE001 - reported and left out
                bad.append([path, f"{type(err).__name__}: {err}"])
                continue
            key = f"{index:09d}"
            _add(tar, f"{key}.{ext}", payload)
            if label >= 0:
                _add(tar, f"{key}.cls", str(label).encode())
            _add(tar, f"{key}.path", rel.encode())
            count += 1
    os.replace(tmp, out_dir / f"{name}.tar")
    record = {"name": f"{name}.tar", "count": count, "bad": bad}
    tmp_json = out_dir / f".{name}.json.tmp{os.getpid()}"
    tmp_json.write_text(json.dumps(record))
    os.replace(tmp_json, out_dir / f"{name}.json")
    return record


def make_shards(
    src_dir: str | Path,
    out_dir: str | Path,
    samples_per_shard: int = 1000,
    max_shard_bytes: int | None = None,
    resize_shorter: int | None = None,
    workers: int = 1,
    seed: int = 0,
    quality: int = 95,
    progress: bool = True,
) -> dict:
    """Shard ``src_dir`` into ``out_dir``; returns
    ``{"shards", "samples", "bad", "skipped_shards"}``."""
    src_dir, out_dir = Path(src_dir).resolve(), Path(out_dir)
    samples, classes = scan_folder(src_dir)
    random.Random(seed).shuffle(samples)
    files = [(p, label, os.path.getsize(p)) for p, label in samples]
    plan = plan_shards(files, samples_per_shard, max_shard_bytes)
    settings = {
        "src_dir": str(src_dir),
        "samples_per_shard": samples_per_shard,
        "max_shard_bytes": max_shard_bytes,
        "resize_shorter": resize_shorter,
        "seed": seed,
        "quality": quality,
        "files": len(files),
        "shards": len(plan),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()) != settings:
        raise ValueError(
            f"{out_dir} holds shards made with other settings or source files ({manifest}); "
            "use a new OUT_DIR, or delete it to start over"
        )
    manifest.write_text(json.dumps(settings, indent=1))
    (out_dir / "classes.json").write_text(json.dumps(classes))

    width = max(6, len(str(len(plan) - 1)))
    jobs, records = [], {}
    for i, shard in enumerate(plan):
        name = f"{i:0{width}d}"
        done = out_dir / f"{name}.json"
        if done.exists() and (out_dir / f"{name}.tar").exists():
            records[name] = json.loads(done.read_text())
            continue
        rows = [(j, files[j][0], os.path.relpath(files[j][0], src_dir), files[j][1]) for j in shard]
        jobs.append(
            {
                "out_dir": str(out_dir),
                "name": name,
                "samples": rows,
                "resize_shorter": resize_shorter,
                "quality": quality,
            }
        )
    skipped = len(records)

    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="shard", desc="make_shards", disable=not progress)
    pool = Pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        results = pool.imap_unordered(write_shard, jobs) if pool else map(write_shard, jobs)
        for record in results:
            records[record["name"].removesuffix(".tar")] = record
            bar.update(1)
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()

    names = sorted(records)
    (out_dir / "sizes.json").write_text(
        json.dumps({records[n]["name"]: records[n]["count"] for n in names}, indent=0)
    )
    bad = [row for n in names for row in records[n]["bad"]]
    (out_dir / "bad_files.tsv").write_text("".join(f"{p}\t{r}\n" for p, r in bad))
    return {
        "shards": len(names),
        "samples": sum(records[n]["count"] for n in names),
        "bad": bad,
        "skipped_shards": skipped,
        "classes": len(classes),
    }
