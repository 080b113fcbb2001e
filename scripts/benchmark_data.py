#!/usr/bin/env python
"""Per-worker data-loading throughput: read + decode + SimMIM transform + mask, three pipelines.

(a) torchvision ``ImageFolder`` + the reference torchvision transform + ``MaskGenerator`` (baseline)
(b) our ``FolderDataset`` + ``SimMIMTransform`` (fast decode/crop path)
(c) our ``ShardDataset`` over shards written by ``make_shards`` + ``SimMIMTransform``

Generates ``--num-images`` photo-sized JPEGs in a temp dir, then times full passes through one
real DataLoader worker (one torch thread), interleaving the pipelines over ``--repeats`` rounds.
Prints, per pipeline, the median images per second of wall time and per second of the worker's
CPU time, and their ratios to (a). On a machine shared with other jobs the wall-clock numbers
swing with the load; CPU time (what one loader worker spends per image) is the steadier measure,
and equals wall time on an idle core.
``--ablations`` adds rows for our pipeline with single levers undone.

    python scripts/benchmark_data.py --num-images 300 --size 500x375 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_jpeg

from simmim_swinv2.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FolderDataset,
    MaskGenerator,
    ShardDataset,
    SimMIMTransform,
)
from simmim_swinv2.data.decode import _crop_resize, decode_resized_crop, sample_crop
from simmim_swinv2.data.sharding import make_shards
from simmim_swinv2.data.transforms import build_reference_pretrain_transform


def make_images(
    root: Path, n: int, size: tuple[int, int], classes: int = 10, seed: int = 0
) -> None:
    """``n`` JPEGs (q90) of ``size = (W, H)``: smooth colour waves, edges and noise, like photos in
    bytes/px."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    for i in range(n):
        f = rng.uniform(2, 25, (3, 2))
        arr = (
            np.stack(
                [np.sin(xx * f[c, 0] + yy * f[c, 1] + rng.uniform(0, 6)) for c in range(3)], -1
            )
            * 90
            + 128
        )
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        # a flat block with sharp edges
        arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.uniform(0, 255, 3)
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


class _TorchvisionDecode(SimMIMTransform):
    """Ablation: JPEGs decoded by torchvision (the previous decoder), whose CHW output costs a
    transposing copy."""

    def __call__(self, data):
        img = decode_jpeg(
            torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
        )
        arr = img.permute(1, 2, 0).numpy()
        top, left, h, w = sample_crop(arr.shape[0], arr.shape[1], self.scale, self.ratio)
        x = _crop_resize(arr, (top, left, top + h, left + w), self.size)
        if torch.rand(1).item() < self.hflip:
            x = x.flip(-1)
        return torch.mul(x, self._mult, out=torch.empty(x.shape)).add_(
            self._bias
        ), self.mask_generator()


class _UnfusedNormalise(SimMIMTransform):
    """Ablation: flip, then ``float().sub_().mul_()`` in three passes (the previous
    normalisation)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self._shift = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __call__(self, data):
        x = decode_resized_crop(data, self.size, self.scale, self.ratio, fast=self.fast_decode)
        if torch.rand(1).item() < self.hflip:
            x = x.flip(-1)
        return x.float().sub_(self._shift).mul_(1 / (255 * self._std)), self.mask_generator()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_loader(dataset, batch_size: int) -> DataLoader:
    """One real DataLoader worker (one torch thread), kept between passes, as in training: the
    pipeline runs where it runs there, and batches are collated into shared memory; the main process
    only receives them."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=1,
        persistent_workers=True,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )


def throughput(loader: DataLoader) -> tuple[float, float]:
    """Images per second of wall time and of the worker's CPU time, over one full pass. The worker
    is idle when the pass starts (the previous one has ended), so nothing produced earlier is
    counted."""
    wall = time.perf_counter()
    batches = iter(loader)
    (worker,) = batches._workers  # private, but the only handle on the worker's pid
    cpu, n = _cpu_seconds(worker.pid), 0
    for batch in batches:
        n += len(batch[-1])  # labels
    return n / (time.perf_counter() - wall), n / (_cpu_seconds(worker.pid) - cpu)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-images", type=int, default=400)
    parser.add_argument(
        "--size", default="500x375", help="WxH of the generated JPEGs (default 500x375)"
    )
    parser.add_argument("--input-size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also time our folder pipeline with one lever undone",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # what a DataLoader worker gets
    w, h = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        src, shards = Path(tmp) / "images", Path(tmp) / "shards"
        make_images(src, args.num_images, (w, h))
        make_shards(src, shards, samples_per_shard=100, progress=False)
        ours = SimMIMTransform(args.input_size)
        pipelines = {
            "(a) torchvision ImageFolder + reference transform": ImageFolder(
                str(src), _Baseline(args.input_size)
            ),
            "(b) FolderDataset + SimMIMTransform": FolderDataset(src, ours),
            "(c) ShardDataset (make_shards) + SimMIMTransform": ShardDataset(
                sorted(map(str, shards.glob("*.tar"))), ours
            ),
        }
        if args.ablations:
            pipelines.update(
                {
                    "(b) with torchvision's JPEG decoder": FolderDataset(
                        src, _TorchvisionDecode(args.input_size)
                    ),
                    "(b) with accurate chroma upsampling (fast_decode=False)": FolderDataset(
                        src, SimMIMTransform(args.input_size, fast_decode=False)
                    ),
                    "(b) with unfused flip/normalise": FolderDataset(
                        src, _UnfusedNormalise(args.input_size)
                    ),
                }
            )
        loaders = {name: worker_loader(ds, args.batch_size) for name, ds in pipelines.items()}
        for loader in loaders.values():  # start the workers; warm the page cache and lazy imports
            throughput(loader)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in pipelines}
        for _ in range(args.repeats):
            for name, loader in loaders.items():
                results[name].append(throughput(loader))
        del loaders

    medians = {
        name: [statistics.median(v[i] for v in values) for i in range(2)]
        for name, values in results.items()
    }
    base = medians[next(iter(medians))]
    print(
        f"{args.num_images} JPEGs {w}x{h} q90 -> {args.input_size}px crops + mask; 1 loader "
        f"worker, 1 torch thread; median of {args.repeats} interleaved passes (torch "
        f"{torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})"
    )
    print("| pipeline | img/s wall (min-max) | vs (a) | img/s per CPU-second (min-max) | vs (a) |")
    print("|---|---|---|---|---|")
    for name, values in results.items():
        (wall, cpu), cols = medians[name], []
        for i, med in enumerate((wall, cpu)):
            lo, hi = min(v[i] for v in values), max(v[i] for v in values)
            cols += [f"{med:.0f} ({lo:.0f}-{hi:.0f})", f"{med / base[i]:.2f}x"]
        print(f"| {name} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()
