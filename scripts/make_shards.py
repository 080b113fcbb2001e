#!/usr/bin/env python
"""Convert an image folder (ImageFolder layout, e.g. ImageNet-1K/22K train/) into WebDataset tar
shards.

Folders of ``.npy`` arrays and (multi-band) TIFF files are taken too: each is checked and stored as
it is.

Example:
    python scripts/make_shards.py /data/imagenet/train /data/imagenet-shards/train \\
        --samples-per-shard 1000 --workers 16 --resize-shorter 320

Writes 000000.tar, 000001.tar, … (jpg — npy / tif for arrays — + cls per sample), classes.json and
sizes.json into OUT_DIR. Re-running resumes: complete shards are kept. Unreadable images are listed
(path and reason) on stderr and in OUT_DIR/bad_files.tsv, and left out.
"""

from __future__ import annotations

import argparse
import sys

from simmim_swinv2.data.sharding import make_shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "src_dir",
        metavar="SRC_DIR",
        help="image folder: class subfolders, or a plain tree (no labels)",
    )
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", help="where the shards go (created if missing)"
    )
    parser.add_argument(
        "--samples-per-shard", type=int, default=1000, help="max samples per shard (default 1000)"
    )
    parser.add_argument(
        "--max-shard-bytes",
        type=float,
        default=None,
        help="also cap shard size, estimated from the source file sizes (e.g. 1e9)",
    )
    parser.add_argument(
        "--resize-shorter",
        type=int,
        default=None,
        help="shrink images whose shorter side exceeds N pixels (re-encoded as JPEG q95)",
    )
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for shuffling files across shards (default 0)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    summary = make_shards(
        args.src_dir,
        args.out_dir,
        args.samples_per_shard,
        int(args.max_shard_bytes) if args.max_shard_bytes else None,
        args.resize_shorter,
        args.workers,
        args.seed,
        progress=not args.no_progress,
    )
    for path, reason in summary["bad"]:
        print(f"unreadable, left out: {path}: {reason}", file=sys.stderr)
    print(
        f"{summary['samples']} samples in {summary['shards']} shards ({summary['skipped_shards']} "
        f"already done), {summary['classes']} classes, {len(summary['bad'])} unreadable files "
        f"left out -> {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
