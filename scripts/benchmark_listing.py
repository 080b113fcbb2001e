#!/usr/bin/env python
"""Folder listings at scale: start-up of 2 ranks, walk speed, and memory per loader worker, against
references.

Implementations, run in the same invocation and interleaved round by round:

- old: the listing code before the compact listing (commit 2243eba, ``data/folder.py``:
  ``os.walk`` + a ``Path`` per file, a list of ``(str, int)`` tuples), copied below and clearly
  labelled;
- torchvision: ``torchvision.datasets.ImageFolder`` (what users would use otherwise);
- ours: ``FolderDataset`` with ``listing_dir``: the first process walks the tree (``os.scandir``,
  class folders in threads) into one file, the others wait and read it; a restart reads it; arrays,
  memory-mapped.

The tree: ``--files`` empty files in ``--classes`` class folders named as in ImageNet (a listing
needs no image data). Start-up: two real processes (``RANK=0`` and ``1``) per implementation,
started together; the table shows the median over rounds of the slower rank's time from before
building the dataset to having it, and of the wall time of the pair (Python start and imports
included, the same for all). Memory: per implementation, a fresh process builds the dataset, passes
once over a ``DataLoader`` with ``--workers`` workers (each item opens its file and returns a small
tensor), then reads each worker's ``/proc/<pid>/smaps_rollup``: USS (private pages: what the worker
copied) and PSS.

    python scripts/benchmark_listing.py --files 100000 --classes 1000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --- reference: the listing code before this change -----------------------------------------------
# (commit 2243eba, src/simmim_swinv2/data/folder.py)
OLD_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def old_is_image(name: str) -> bool:
    return name.lower().endswith(OLD_IMAGE_EXTENSIONS) and not name.startswith(".")


def old_walk_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if old_is_image(f))
    return found


def old_scan_folder(root, labelled=None):
    root = Path(root).expanduser()
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if labelled is None:
        labelled = bool(subdirs) and not any(
            old_is_image(p.name) for p in root.iterdir() if p.is_file()
        )
    if labelled:
        classes, samples = [], []
        for d in subdirs:
            files = old_walk_images(d)
            if files:
                samples.extend((str(f), len(classes)) for f in files)
                classes.append(d.name)
    else:
        classes, samples = [], [(str(f), -1) for f in old_walk_images(root)]
    return samples, classes


# --- end of the reference -------------------------------------------------------------------------

IMPLS = ["old", "torchvision", "ours, first start", "ours, restart"]


def make_tree(root: Path, files: int, classes: int) -> None:
    marker = root / f".made-{files}-{classes}"
    if marker.exists():
        return
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(c, files, classes):
            (d / f"n{c:08d}_{i}.JPEG").touch()
    marker.touch()
    t = time.time() - 60  # an old tree, as ImageNet is: no listing of it is "racy" (listing.RACY_S)
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (t, t))


def build(impl: str, root: str, cache: str, transform=None):
    """The dataset of ``impl`` (each item: opens its file, returns a small tensor)."""
    import torch
    from torch.utils.data import Dataset
    from torchvision.datasets import ImageFolder

    from simmim_swinv2.data import FolderDataset

    if impl == "old":

        class OldFolder(Dataset):
            def __init__(self) -> None:
                self.samples, self.classes = old_scan_folder(root)

            def __len__(self) -> int:
                return len(self.samples)

            def __getitem__(self, i):
                path, label = self.samples[i]
                with open(path, "rb") as f:
                    return torch.full((4,), len(f.read())), label

        return OldFolder()
    if impl == "baseline":  # no listing at all: what a worker holds anyway

        class Numbers(Dataset):
            def __len__(self) -> int:
                return int(os.environ["BENCH_FILES"])

            def __getitem__(self, i):
                return torch.full((4,), 0), i

        return Numbers()
    if impl == "torchvision":

        def read(path):
            with open(path, "rb") as f:
                return torch.full((4,), len(f.read()))

        return ImageFolder(root, loader=read)
    return FolderDataset(root, transform, listing_dir=cache, listing_timeout=600)


class Small:
    accepts_bytes = True

    def __call__(self, data: bytes):
        import torch

        return torch.full((4,), len(data))


def held(ds) -> int:
    """Bytes the listing takes in the main process: Python objects (lists, tuples, strings) or
    arrays."""
    samples = getattr(ds, "samples", None)
    if samples is None:
        return 0
    if hasattr(samples, "offsets"):
        return samples.paths.nbytes + samples.offsets.nbytes + samples.labels.nbytes
    lists = [samples] + [getattr(ds, "targets", [])]
    return sum(map(sys.getsizeof, lists)) + sum(
        sys.getsizeof(t) + sys.getsizeof(t[0]) for t in samples
    )


def rollup(pid: int) -> dict[str, float]:
    """USS (private pages) and PSS of a process, MiB, from /proc/<pid>/smaps_rollup."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        fields[key] = int(value.split()[0]) / 1024
    return {"uss": fields["Private_Clean"] + fields["Private_Dirty"], "pss": fields["Pss"]}


def child(args) -> None:
    """One rank (--child startup) or one memory measurement (--child memory); prints one JSON
    line."""
    import torchvision.datasets  # noqa: F401 - the same imports for every implementation
    from torch.utils.data import DataLoader

    import simmim_swinv2.data  # noqa: F401

    start = time.perf_counter()
    ds = build(args.impl, args.root, args.cache, Small())
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "n": len(ds), "listing_mib": held(ds) / 2**20}
    if args.child == "memory":
        base = rollup(os.getpid())
        loader = DataLoader(ds, batch_size=256, num_workers=args.workers, persistent_workers=True)
        it = iter(loader)
        n = sum(len(batch[1]) for batch in it)
        assert n == len(ds), (n, len(ds))
        out["workers"] = [rollup(w.pid) for w in it._workers]
        out["main"] = rollup(os.getpid())
        out["main_before_loader"] = base
        del it
    print(json.dumps(out), flush=True)


def run_children(
    kind: str, impl: str, root: Path, cache: Path, ranks: int, workers: int
) -> tuple[list[dict], float]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
    }
    env.pop("SIMMIM_LISTINGS_MADE", None)
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--impl",
        impl,
        "--root",
        str(root),
        "--cache",
        str(cache),
        "--workers",
        str(workers),
    ]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, env={**env, "RANK": str(r)}, stdout=subprocess.PIPE, text=True)
        for r in range(ranks)
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    if any(p.returncode for p in procs):
        raise RuntimeError(f"{impl}: a child failed")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs], wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=100_000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--workers", type=int, default=2, help="loader workers for the memory measurement"
    )
    p.add_argument(
        "--tree",
        type=Path,
        default=None,
        help="where to make (or find) the tree; default: a temp dir",
    )
    p.add_argument("--child", choices=["startup", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--impl", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    from simmim_swinv2.data.listing import build_listing
    from simmim_swinv2.data.listing_shared import load_listing

    tmp = tempfile.TemporaryDirectory(prefix="bench_listing_")
    root = (args.tree or Path(tmp.name) / "tree").resolve()
    t = time.perf_counter()
    make_tree(root, args.files, args.classes)
    print(
        f"tree: {args.files} files in {args.classes} class folders at {root} "
        f"({time.perf_counter() - t:.0f} s)"
    )
    warm = Path(tmp.name) / "warm"
    load_listing(root, listing_dir=warm)  # what "ours, restart" reads

    # Start-up of 2 ranks, implementations interleaved (rotated each round).
    startup: dict[str, dict[str, list[float]]] = {i: {"slowest": [], "wall": []} for i in IMPLS}
    for r in range(args.repeats):
        for impl in IMPLS[r % len(IMPLS) :] + IMPLS[: r % len(IMPLS)]:
            cache = warm if impl == "ours, restart" else Path(tmp.name) / f"cold{r}"
            outs, wall = run_children("startup", impl, root, cache, 2, args.workers)
            assert all(o["n"] == args.files for o in outs), outs
            startup[impl]["slowest"].append(max(o["seconds"] for o in outs))
            startup[impl]["wall"].append(wall)
        print(f"round {r + 1}/{args.repeats} done", flush=True)

    # Walking in one process: the references and ours with 1 and 8 threads, interleaved.
    from torchvision.datasets import ImageFolder

    walks = {
        "old scan_folder": lambda: old_scan_folder(root),
        "torchvision ImageFolder": lambda: ImageFolder(str(root)),
        "ours, 1 thread": lambda: build_listing(root, threads=1),
        "ours, 8 threads": lambda: build_listing(root, threads=8),
    }
    walk_s: dict[str, list[float]] = {k: [] for k in walks}
    for _ in range(args.repeats):
        for name, fn in walks.items():
            t = time.perf_counter()
            fn()
            walk_s[name].append(time.perf_counter() - t)

    # Memory per loader worker after one pass.
    memory = {}
    os.environ["BENCH_FILES"] = str(args.files)
    for impl in ["baseline", "old", "torchvision", "ours, restart"]:
        outs, _ = run_children("memory", impl, root, warm, 1, args.workers)
        memory[impl] = outs[0]

    med = statistics.median
    print(
        "\n"
        f"Start-up of 2 ranks (two processes started together), {args.files} files, median of "
        f"{args.repeats} rounds (min-max)\n"
    )
    print(
        "| implementation | slower rank: dataset ready, s | pair wall time, s (Python + imports "
        "included) |"
    )
    print("|---|---|---|")
    for impl in IMPLS:
        s, w = startup[impl]["slowest"], startup[impl]["wall"]
        print(
            f"| {impl} | {med(s):.2f} ({min(s):.2f}-{max(s):.2f}) | {med(w):.1f} "
            f"({min(w):.1f}-{max(w):.1f}) |"
        )
    print(f"\nOne process walking the tree, median of {args.repeats} (min-max)\n")
    print("| walk | s | files/s |")
    print("|---|---|---|")
    for name, s in walk_s.items():
        print(f"| {name} | {med(s):.3f} ({min(s):.3f}-{max(s):.3f}) | {args.files / med(s):,.0f} |")
    print(
        "\n"
        f"Memory after one pass over a DataLoader with {args.workers} workers (MiB; USS = private "
        "pages)\n"
    )
    print(
        "| implementation | listing in the main process | per worker USS | minus baseline | per "
        "worker PSS |"
    )
    print("|---|---|---|---|---|")
    base = statistics.mean(w["uss"] for w in memory["baseline"]["workers"])
    for impl, m in memory.items():
        uss = [w["uss"] for w in m["workers"]]
        pss = [w["pss"] for w in m["workers"]]
        print(
            f"| {impl} | {m['listing_mib']:.1f} | {statistics.mean(uss):.1f} "
            f"({', '.join(f'{u:.1f}' for u in uss)}) | {statistics.mean(uss) - base:+.1f} | "
            f"{statistics.mean(pss):.1f} |"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
