#!/usr/bin/env python
"""Per-worker data-loading throughput: read + decode + SimMIM transform + mask, three pipelines.

(a) torchvision ``ImageFolder`` + the reference torchvision transform + ``MaskGenerator`` (baseline)
(b) our ``FolderDataset`` + ``SimMIMTransform`` (fast decode/crop path)
(c) our ``ShardDataset`` over shards written by ``make_shards`` + ``SimMIMTransform``

Generates ``--num-images`` photo-sized JPEGs in a temp dir, then times full passes with one
loader process (``num_workers=0``, one torch thread, as in a DataLoader worker), interleaving
the pipelines over ``--repeats`` rounds; prints the median img/s and the ratio to (a).

    python scripts/benchmark_data.py --num-images 400 --size 500x375 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, Subset
from torchvision.datasets import ImageFolder

from simmim_swinv2.data import FolderDataset, MaskGenerator, ShardDataset, SimMIMTransform
from simmim_swinv2.data.sharding import make_shards
from simmim_swinv2.data.transforms import build_reference_pretrain_transform


def make_images(root: Path, n: int, size: tuple[int, int], classes: int = 10, seed: int = 0) -> None:
    """``n`` JPEGs (q90) of ``size = (W, H)``: smooth colour waves, edges and noise, like photos in bytes/px."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    for i in range(n):
        f = rng.uniform(2, 25, (3, 2))
        arr = np.stack([np.sin(xx * f[c, 0] + yy * f[c, 1] + rng.uniform(0, 6)) for c in range(3)], -1) * 90 + 128
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(0, 255, 3)  # a flat block with sharp edges
        arr += rng.normal(0, 12, arr.shape)
        d = root / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)


class _Baseline:
    def __init__(self, size: int) -> None:
        self.t = build_reference_pretrain_transform(size)
        self.mask = MaskGenerator(size)

    def __call__(self, img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        return self.t(img), self.mask()


def throughput(dataset, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=0)
    start, n = time.perf_counter(), 0
    for batch in loader:
        n += len(batch[-1])  # labels
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=400)
    parser.add_argument("--size", default="500x375", help="WxH of the generated JPEGs (default 500x375)")
    parser.add_argument("--input-size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # what a DataLoader worker gets
    w, h = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        src, shards = Path(tmp) / "images", Path(tmp) / "shards"
        make_images(src, args.num_images, (w, h))
        make_shards(src, shards, samples_per_shard=100, progress=False)
        ours = SimMIMTransform(args.input_size)
        pipelines = {
            "(a) torchvision ImageFolder + reference transform": ImageFolder(str(src), _Baseline(args.input_size)),
            "(b) FolderDataset + SimMIMTransform": FolderDataset(src, ours),
            "(c) ShardDataset (make_shards) + SimMIMTransform": ShardDataset(sorted(map(str, shards.glob("*.tar"))), ours),
        }
        for ds in pipelines.values():  # warm the page cache and lazy imports
            throughput(ds if isinstance(ds, IterableDataset) else Subset(ds, range(64)), args.batch_size)
        results: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(args.repeats):
            for name, ds in pipelines.items():
                results[name].append(throughput(ds, args.batch_size))

    base = statistics.median(results[next(iter(results))])
    print(f"{args.num_images} JPEGs {w}x{h} q90 -> {args.input_size}px crops + mask; 1 process, 1 torch thread; "
          f"median of {args.repeats} interleaved passes (torch {torch.__version__})")
    print("| pipeline | img/s per worker (median) | min-max | vs baseline |")
    print("|---|---|---|---|")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.0f} | {min(values):.0f}-{max(values):.0f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
