"""Resume a DeepSpeed ZeRO run on another number of GPUs: turn its sharded checkpoint into a
DeepSpeed *universal* checkpoint (one file per parameter for the fp32 weights and each optimizer
state), which any world size loads.

    python -m simmim_swinv2.reshard RUN_DIR
        # newest checkpoint -> checkpoints/<name>-universal.ckpt
    python -m simmim_swinv2.reshard CKPT_DIR OUT_DIR
        # a given checkpoint, a given place

ZeRO-1 and ZeRO-2 checkpoints only (`STAGE3_PROBLEM` says why not ZeRO-3). Then start the run again
with the new number of devices: `resume=auto` picks the universal checkpoint when it is the newest
in the run directory (or give it: `resume=OUT_DIR`), and the DeepSpeed config gets `load_universal`
by itself. Weights, Adam moments, step, schedule and RNG state carry over. From an end-of-epoch
checkpoint the data go on exactly; from a mid-epoch one (a preemption's) the new world skips as many
batches per process as the old one trained, so until that epoch ends some samples repeat and others
are left out. DeepSpeed's own converter (`deepspeed.checkpoint.ds_to_universal`) does the work; this
lays its output out as Lightning loads it (`latest_universal` naming the folder):
`simmim_swinv2.distributed.reshard`.
"""

from __future__ import annotations

import argparse
import os

from .config.compose import stops_cleanly
from .distributed.reshard import to_universal
from .weights import zero_checkpoint


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m simmim_swinv2.reshard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="ZeRO checkpoint directory (*.ckpt/) or run directory")
    parser.add_argument(
        "out", nargs="?", help="output directory (default: <checkpoint>-universal.ckpt beside it)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes for DeepSpeed's converter (default: up to 4)",
    )
    args = parser.parse_args(argv)
    with stops_cleanly(parser.prog):
        to_universal(zero_checkpoint(args.source), args.out, workers=args.workers)


if __name__ == "__main__":
    main()
