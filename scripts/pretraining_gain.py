"""Does SimMIM pretraining help? Both arms on the bundled digits, same budget, same seeds:

1. fine-tune from the SimMIM-pretrained encoder vs from random initialisation (several seeds);
2. the frozen-feature probes of `python -m simmim_swinv2.probe` (kNN top-1, DINO's k=20 / T=0.07,
   and a logistic regression on standardised pooled features): pretrained encoder vs random
   encoders.

    python scripts/pretraining_gain.py                       # ~30 min on 2 CPU cores
    python scripts/pretraining_gain.py --finetune-epochs 0   # the probes only, ~15 min
    python scripts/pretraining_gain.py --seeds 0 1 2 3 4 --pretrain-epochs 30

Prints a table (mean ± std over seeds); the README's numbers come from here (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simmim_swinv2.config.compose import compose_job  # noqa: E402
from simmim_swinv2.data import build_digits, build_eval_transform  # noqa: E402
from simmim_swinv2.finetune import finetune  # noqa: E402
from simmim_swinv2.inference.probe import probe  # noqa: E402
from simmim_swinv2.models import SwinV2Encoder, swinv2_config  # noqa: E402
from simmim_swinv2.pretrain import pretrain  # noqa: E402
from simmim_swinv2.weights import load_pretrained_encoder  # noqa: E402

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]


def compose_cfg(name: str, run_dir: Path, overrides: list[str]):
    return compose_job(name, run_dir, [*QUIET, *overrides])


def probes(encoder: SwinV2Encoder, img_size: int) -> dict[str, float]:
    """kNN and linear-probe top-1 of `encoder` on digits, train split -> val split (whole images:
    crop_pct 1)."""
    transform = build_eval_transform(img_size, crop_pct=1.0)
    train, val = (
        build_digits(split, transform=transform, image_size=img_size) for split in ("train", "val")
    )
    return probe(encoder, train, val, batch_size=128, progress=False)


def summary(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {std:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=10, help="0: the probes only")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="keep the runs here (default: a temp dir, removed at the end)",
    )
    args = parser.parse_args(argv)
    if args.out_dir is not None:
        return compare(args, args.out_dir)
    with tempfile.TemporaryDirectory(prefix="pretraining_gain_") as root:
        return compare(args, Path(root))


def compare(args: argparse.Namespace, root: Path) -> None:
    """Pretrain, probe and fine-tune both arms for every seed, in run directories under ``root``."""

    img_size = 64
    cfg = swinv2_config("debug", img_size=img_size, window_size=4)
    arms = ("SimMIM-pretrained", "random init")
    finetuned: dict[str, list[float]] = {a: [] for a in arms}
    probed: dict[str, dict[str, list[float]]] = {
        m: {a: [] for a in arms} for m in ("knn_top1", "linear_top1")
    }
    # one pretraining run per seed: the pretrained arm varies as much as the random one
    for seed in args.seeds:
        pre_dir = root / f"pretrain_{seed}"
        pre = pretrain(
            compose_cfg(
                "pretrain",
                pre_dir,
                [
                    f"trainer.max_epochs={args.pretrain_epochs}",
                    f"seed={seed}",
                    "callbacks.knn.every_n_epochs=0",
                ],
            )
        )
        print(
            f"pretrained {args.pretrain_epochs} epochs, seed {seed}: val/loss "
            f"{pre.get('val/loss', float('nan')):.4f} ({pre_dir})",
            flush=True,
        )
        pretrained_encoder = SwinV2Encoder(cfg)
        load_pretrained_encoder(pretrained_encoder, pre_dir)
        torch.manual_seed(seed)
        for arm, encoder in (
            ("SimMIM-pretrained", pretrained_encoder),
            ("random init", SwinV2Encoder(cfg)),
        ):
            for metric, value in probes(encoder, img_size).items():
                if metric in probed:
                    probed[metric][arm].append(value)
        for arm, source in (("SimMIM-pretrained", str(pre_dir)), ("random init", "null")):
            if args.finetune_epochs <= 0:
                continue
            run = root / f"finetune_{arm.split()[0].lower()}_{seed}"
            ft = compose_cfg(
                "finetune",
                run,
                [
                    f"pretrained={source}",
                    f"seed={seed}",
                    f"trainer.max_epochs={args.finetune_epochs}",
                ],
            )
            top1 = finetune(ft)["val/top1"]
            finetuned[arm].append(top1)
            print(f"fine-tune {arm:18s} seed {seed}: top-1 {top1:.4f}", flush=True)

    print(
        "\n"
        f"Digits (1,437 train / 360 val), SwinV2-debug at {img_size} px; SimMIM "
        f"{args.pretrain_epochs} epochs; fine-tune {args.finetune_epochs} epochs; seeds "
        f"{args.seeds}"
    )
    print("| evaluation | SimMIM-pretrained | random init | gain |")
    print("|---|---|---|---|")
    tables = [("kNN top-1", probed["knn_top1"]), ("linear probe top-1", probed["linear_top1"])]
    for name, table in (
        [("fine-tune top-1", finetuned)] if args.finetune_epochs > 0 else []
    ) + tables:
        gain = statistics.mean(table["SimMIM-pretrained"]) - statistics.mean(table["random init"])
        print(
            f"| {name} | {summary(table['SimMIM-pretrained'])} | {summary(table['random init'])} "
            f"| {gain:+.4f} |"
        )
    print(
        "(per seed: one SimMIM pretraining run, seeded alike, and one random encoder; mean ± std "
        "over seeds)"
    )


if __name__ == "__main__":
    main()
