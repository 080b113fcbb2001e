"""What pretraining learns while it runs, on the bundled digits: the kNN monitor's top-1
(`val/knn_top1`, DINO's weighted cosine kNN, k=20, T=0.07, on pooled features of a fixed labelled
train subset) against the epoch, for the quickstart (`python -m simmim_swinv2.pretrain`, 8 epochs)
and a 20-epoch run, with random-init encoders (same protocol, several seeds) as the baseline.

    python scripts/knn_curve.py --out docs/knn_curve.png
        # the real thing: ~20 min on 2 quiet CPU cores
    python scripts/knn_curve.py --quick-epochs 2 --long-epochs 2 --seeds 0 --train-samples 200 \\
        --override trainer.limit_train_batches=2 --out /tmp/knn_curve.png   # a rehearsal, ~2 min

Writes the PNG (drawn with PIL: matplotlib is not a dependency) and prints the tables as Markdown.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simmim_swinv2.config.compose import compose_job  # noqa: E402
from simmim_swinv2.data import build_digits  # noqa: E402
from simmim_swinv2.inference.probe import probe  # noqa: E402
from simmim_swinv2.models import SwinV2Encoder, swinv2_config  # noqa: E402
from simmim_swinv2.pretrain import pretrain  # noqa: E402
from simmim_swinv2.training.knn import eval_transform  # noqa: E402

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv"]


def compose_cfg(name: str, run_dir: Path, overrides: list[str]):
    return compose_job(name, run_dir, [*QUIET, *overrides])


def knn_overrides(train_samples: int) -> list[str]:
    """The monitor every epoch (`++`: added, or set where conf/callbacks already has it)."""
    return [
        "++callbacks.knn._target_=simmim_swinv2.training.knn.KNNMonitor",
        "++callbacks.knn.every_n_epochs=1",
        f"++callbacks.knn.train_samples={train_samples}",
    ]


def knn_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, val/knn_top1) from a run's metrics.csv; epoch 1 = after the first epoch."""
    with open(run_dir / "metrics.csv") as f:
        return [
            (int(r["epoch"]) + 1, float(r["val/knn_top1"]))
            for r in csv.DictReader(f)
            if r.get("val/knn_top1")
        ]


def random_init_knn(seeds: list[int], train_samples: int, img_size: int = 64) -> list[float]:
    """The monitor's protocol on freshly initialised SwinV2-debug encoders (the quickstart's model),
    one per seed."""
    transform = eval_transform((img_size, img_size))
    train, val = (
        build_digits(s, transform=transform, image_size=img_size) for s in ("train", "val")
    )
    values = []
    for seed in seeds:
        torch.manual_seed(seed)
        encoder = SwinV2Encoder(swinv2_config("debug", img_size=img_size, window_size=4))
        values.append(
            probe(encoder, train, val, train_samples=train_samples, linear=False, progress=False)[
                "knn_top1"
            ]
        )
    return values


# ----------------------------------------------------------------------------------------- the plot
def line_plot(
    series: dict[str, list[tuple[float, float]]],
    baseline: tuple[str, float, float],
    path: Path,
    title: str,
    size: tuple[int, int] = (900, 560),
) -> None:
    """A line plot of `series` (name → (x, y) points) over a horizontal band `baseline` (name, mean,
    std)."""
    width, height = size
    left, right, top, bottom = 80, 30, 75, 70
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=13)
    xs = [x for pts in series.values() for x, _ in pts] or [1]
    ys = [y for pts in series.values() for _, y in pts] + [
        baseline[1] - baseline[2],
        baseline[1] + baseline[2],
    ]
    x_max = max(xs)
    y_lo, y_hi = (
        max(0.0, math.floor(min(ys) * 20 - 1) / 20),
        min(1.0, math.ceil(max(ys) * 20 + 1) / 20),
    )  # 0.05s

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + x / x_max * (width - left - right),
            height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom),
        )

    name, mean, std = baseline
    x0, y0 = px(0, mean + std)
    x1, y1 = px(x_max, mean - std)
    draw.rectangle([x0, y0, x1, y1], fill=(225, 225, 225))
    dash = x_max / 60
    for i in range(0, 60, 2):  # the baseline's mean, dashed
        draw.line([px(i * dash, mean), px((i + 1) * dash, mean)], fill=(110, 110, 110), width=2)
    for x in range(0, int(x_max) + 1, max(1, int(x_max) // 10)):  # x ticks
        tx, ty = px(x, y_lo)
        draw.line([(tx, ty), (tx, ty + 5)], fill="black")
        draw.text((tx, ty + 8), str(x), fill="black", font=small, anchor="mt")
    steps = round((y_hi - y_lo) / 0.05)
    for i in range(steps + 1):  # y ticks every 0.05, and the grid
        y = y_lo + 0.05 * i
        tx, ty = px(0, y)
        draw.line([(tx - 5, ty), (width - right, ty)], fill=(235, 235, 235))
        draw.text((tx - 8, ty), f"{y:.2f}", fill="black", font=small, anchor="rm")
    draw.line([px(0, y_lo), px(x_max, y_lo)], fill="black", width=1)
    draw.line([px(0, y_lo), px(0, y_hi)], fill="black", width=1)
    colours = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]
    legend = [(f"{name} (mean ± std)", (110, 110, 110))]
    drawn = list(zip(series.items(), colours))
    # each later one thinner, on top: coinciding lines stay visible
    for i, ((_, pts), colour) in enumerate(drawn):
        points = [px(x, y) for x, y in pts]
        r = 3 + 2 * (len(drawn) - 1 - i)
        if len(points) > 1:
            draw.line(points, fill=colour, width=2 + 2 * (len(drawn) - 1 - i))
        for p in points:
            draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=colour)
    legend += [(label, colour) for (label, _), colour in drawn]
    for i, (label, colour) in enumerate(legend):
        y = top + 10 + 22 * i
        draw.line([(width - right - 300, y), (width - right - 270, y)], fill=colour, width=3)
        draw.text((width - right - 262, y), label, fill="black", font=small, anchor="lm")
    draw.text((width / 2, 20), title, fill="black", font=font, anchor="mm")
    draw.text(
        ((left + width - right) / 2, height - 25), "epoch", fill="black", font=font, anchor="mm"
    )
    draw.text((15, top - 22), "val/knn_top1", fill="black", font=font, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick-epochs", type=int, default=None, help="default: the quickstart's (its recipe: 8)"
    )
    parser.add_argument("--long-epochs", type=int, default=20)
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="random-init baseline seeds"
    )
    parser.add_argument(
        "--train-samples", type=int, default=2000, help="the monitor's labelled train subset"
    )
    parser.add_argument(
        "--override", action="append", default=[], help="extra Hydra override for both runs"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/knn_curve.png"))
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="keep the runs here (default: a temp dir, removed at the end)",
    )
    args = parser.parse_args(argv)
    if args.out_dir is not None:
        return curves_and_plot(args, args.out_dir)
    with tempfile.TemporaryDirectory(prefix="knn_curve_") as root:
        return curves_and_plot(args, Path(root))


def curves_and_plot(args: argparse.Namespace, root: Path) -> None:
    """Pretrain both runs under ``root``, plot their kNN curves and print the table."""

    curves = {}
    for label, epochs in (
        (f"quickstart ({args.quick_epochs or 8} epochs)", args.quick_epochs),
        (f"{args.long_epochs} epochs", args.long_epochs),
    ):
        run = root / label.split()[0]
        extra = [f"trainer.max_epochs={epochs}"] if epochs else []
        pretrain(
            compose_cfg(
                "pretrain", run, [*knn_overrides(args.train_samples), *extra, *args.override]
            )
        )
        curves[label] = knn_curve(run)
        print(f"{label}: {run}", flush=True)
    baseline = random_init_knn(args.seeds, args.train_samples)
    mean = statistics.mean(baseline)
    std = statistics.stdev(baseline) if len(baseline) > 1 else 0.0
    title = (
        f"SimMIM on digits, SwinV2-debug 64 px: kNN top-1 (k=20, T=0.07, {args.train_samples} "
        "train samples max) of pooled features"
    )
    line_plot(curves, ("random init", mean, std), args.out, title)

    labels = list(curves)
    epochs = sorted({e for pts in curves.values() for e, _ in pts})
    print(f"\n| epoch | {' | '.join(labels)} |")
    print("|---|" + "---|" * len(labels))
    for e in epochs:
        cells = [next((f"{v:.4f}" for x, v in curves[label] if x == e), "") for label in labels]
        print(f"| {e} | {' | '.join(cells)} |")
    print(
        f"\nrandom-init encoder, seeds {args.seeds}: kNN top-1 {mean:.4f} ± {std:.4f} "
        f"({', '.join(f'{v:.4f}' for v in baseline)})"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
