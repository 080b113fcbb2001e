"""Where one SimMIM training step spends its time, operator by operator: ours against transformers'
on the CPU.

One process, the same weights for all (transformers' seed-0 initialisation, as in
`benchmark_model.py`), the same input and mask. Each round times one step (forward, masked L1 loss,
backward; `--optimizer` adds the AdamW step) of every implementation, alternating their order, then
profiles one more step of each with `torch.profiler`. The wall times give the speed ratio per round
(their median is robust to drift on a shared machine); the profiles give each aten operator's self
CPU time (median over rounds) and call count, and the operators whose time differs most.

    python scripts/profile_model.py  # SwinV2-T, 192 px, window 6, batch 4, fp32
    python scripts/profile_model.py --precision bf16  # under bfloat16 autocast
    python scripts/profile_model.py --rounds 9 --top 20 --out profile.md
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_model import build, swinv2_config  # noqa: E402

IMPLS = ("ours", "ours_eager", "transformers")  # ours_eager: attn_backend=eager (timm's)


def make(impl: str, cfg):
    model, loss_fn = build("ours" if impl == "ours_eager" else impl, cfg)
    if impl == "ours_eager":
        for block in model.modules():
            if hasattr(block, "attn_backend"):
                block.attn_backend = "eager"
    return model.train(), loss_fn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--top", type=int, default=15, help="operators listed per comparison")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--optimizer", action="store_true", help="include the AdamW step")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: forward and loss under CPU bfloat16 autocast (Lightning's bf16-mixed)",
    )
    parser.add_argument("--out", help="also write the report (markdown) here")
    args = parser.parse_args(argv)
    impls = args.impls.split(",")
    cfg = swinv2_config(args.variant, img_size=args.img_size, window_size=args.window)
    models = {impl: make(impl, cfg) for impl in impls}
    opts = {impl: torch.optim.AdamW(m.parameters(), lr=1e-6) for impl, (m, _) in models.items()}
    torch.manual_seed(1)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    tokens = args.img_size // cfg.patch_size
    mask = (torch.rand(args.batch, tokens, tokens) < 0.6).long()

    def step(impl: str) -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16"):
            loss = models[impl][1](x, mask)
        loss.backward()
        if args.optimizer:
            opts[impl].step()
        opts[impl].zero_grad(set_to_none=True)

    for impl in impls * 2:  # warm-up
        step(impl)
    wall, faults = defaultdict(list), defaultdict(list)
    self_us: dict[str, dict[str, list[float]]] = {i: defaultdict(list) for i in impls}
    calls: dict[str, dict[str, int]] = {i: {} for i in impls}
    for r in range(args.rounds):
        order = impls if r % 2 == 0 else impls[::-1]
        for impl in order:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            step(impl)
            wall[impl].append(time.perf_counter() - t0)
            faults[impl].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        for impl in order:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(impl)
            for e in prof.key_averages():
                if e.key.startswith("aten::"):
                    self_us[impl][e.key].append(e.self_cpu_time_total)
                    calls[impl][e.key] = e.count
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{i} {1000 * wall[i][-1]:.0f} ms" for i in impls),
            flush=True,
        )

    ref = "transformers"
    med = {
        i: {
            op: statistics.median(v + [0.0] * (args.rounds - len(v))) / 1000
            for op, v in self_us[i].items()
        }
        for i in impls
    }
    lines = [
        (
            "One SimMIM training step "
            f"({'forward, loss, backward' + (', AdamW' if args.optimizer else '')}): "
            f"swinv2_{args.variant}, {args.img_size} px, window {args.window}, batch "
            f"{args.batch}, {args.precision}, CPU, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; {args.rounds} interleaved rounds, same weights"
        ),
        "",
        (
            "| implementation | ms/step (median) | speed vs transformers (median of per-round "
            "ratios) | aten calls | aten self time, ms | page faults/step |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for i in impls:
        ratio = (
            statistics.median(t / o for t, o in zip(wall[ref], wall[i]))
            if ref in wall
            else float("nan")
        )
        lines.append(
            f"| {i} | {1000 * statistics.median(wall[i]):.1f} | {ratio:.3f}x | "
            f"{sum(calls[i].values())} | {sum(med[i].values()):.1f} | "
            f"{statistics.median(faults[i]):.0f} |"
        )
    for i in impls:
        if i == ref or ref not in med:
            continue
        ops = sorted(
            set(med[i]) | set(med[ref]), key=lambda o: -abs(med[i].get(o, 0) - med[ref].get(o, 0))
        )
        lines += [
            "",
            f"{i} against {ref}: the {args.top} aten operators whose self CPU time differs most "
            "(median over rounds; calls per step)",
            "",
            f"| operator | {i} ms | {ref} ms | difference ms | {i} calls | {ref} calls |",
            "|---|---|---|---|---|---|",
        ]
        for op in ops[: args.top]:
            a, b = med[i].get(op, 0.0), med[ref].get(op, 0.0)
            lines.append(
                f"| `{op}` | {a:.2f} | {b:.2f} | {a - b:+.2f} | {calls[i].get(op, 0)} | "
                f"{calls[ref].get(op, 0)} |"
            )
    report = "\n".join(lines)
    print("\n" + report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
