"""What SimMIM's normalised target (`norm_target=True`) adds to a training step, and what the target
itself costs: ours (running sums, `models.simmim.normalize_target`) against the official formula
(stride-1 average pools, microsoft/Swin-Transformer models/simmim.py `norm_targets`).

One process, one model: training steps (forward, backward, AdamW) with the target off and on take
turns, round by round (so drift on a shared machine hits both alike); the table gives medians of
wall time and of the process's CPU time per step (steadier when other jobs share the cores), and the
per-round ratio. The target alone is timed the same way on the batch.

    python scripts/benchmark_norm_target.py  # SwinV2-T, 192 px, window 6, batch 8, fp32, CPU
    python scripts/benchmark_norm_target.py --device cuda --precision bf16 --batch 128 --variant base --window 12
"""  # noqa: E501 - a command line longer than 100 characters

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simmim_swinv2.models import SimMIM, normalize_target, swinv2_config  # noqa: E402


def official_norm_targets(x: torch.Tensor, window: int = 47) -> torch.Tensor:
    """microsoft/Swin-Transformer models/simmim.py `norm_targets`: three stride-1 average pools."""
    pool = dict(kernel_size=window, stride=1, padding=window // 2)
    mean = F.avg_pool2d(x, count_include_pad=False, **pool)
    mean_sq = F.avg_pool2d(x**2, count_include_pad=False, **pool)
    count = F.avg_pool2d(torch.ones_like(x), count_include_pad=True, **pool) * window**2
    var = (mean_sq - mean**2) * (count / (count - 1))
    return (x - mean) / (var + 1e-6) ** 0.5


def timed(fn, sync) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    cfg = swinv2_config(args.variant, img_size=args.img_size, window_size=args.window)
    model = SimMIM.from_config(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    tokens = args.img_size // cfg.patch_size
    mask = (torch.rand(args.batch, tokens, tokens, device=device) < 0.6).long()
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step(norm_target: bool):
        def run() -> None:
            model.norm_target = norm_target
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(x, mask).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    cases = {
        "step, norm_target=False": step(False),
        "step, norm_target=True": step(True),
        "target: ours (running sums)": lambda: normalize_target(x),
        "target: official (avg_pool2d)": lambda: official_norm_targets(x),
    }
    for fn in cases.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for r in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(timed(fn, sync))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v[-1][0] * 1000:.0f} ms" for k, v in times.items()),
            flush=True,
        )

    def median(name: str, i: int) -> float:
        return statistics.median(t[i] for t in times[name]) * 1000

    off, on = "step, norm_target=False", "step, norm_target=True"
    print(
        "\n"
        f"{args.variant}, {args.img_size} px, window {args.window}, batch {args.batch}, "
        f"{args.precision}, {device.type} ({torch.get_num_threads()} threads), torch "
        f"{torch.__version__}; median of {args.rounds} rounds, cases in turn\n"
    )
    print(
        "| case | wall ms | CPU ms | vs the step without target: wall, per round median (range) | "
        "CPU |"
    )
    print("|---|---|---|---|---|")
    for name in cases:
        ratios = [a[0] / b[0] for a, b in zip(times[name], times[off])]
        cpu = statistics.median(a[1] / b[1] for a, b in zip(times[name], times[off]))
        print(
            f"| {name} | {median(name, 0):.1f} | {median(name, 1):.1f} | "
            f"{statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f}) | {cpu:.3f}x "
            "|"
        )
    added = statistics.median(a[0] / b[0] for a, b in zip(times[on], times[off])) - 1
    print(
        "\n"
        f"norm_target=True adds {100 * added:+.1f}% to a training step (wall, per-round median; "
        "goal: <= 10%)."
    )


if __name__ == "__main__":
    main()
