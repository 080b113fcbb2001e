"""Which attention kernels run our model's attention, forward and backward, in one SimMIM training
step.

Profiles one step (forward, loss, backward) of our SimMIM with the default fused attention
(`attn_backend="sdpa"`) and lists every attention operator torch ran, with its count:
`F.scaled_dot_product_attention` dispatches to the flash, memory-efficient, cuDNN or math kernel,
and only the first three are fused. Then it runs the step again with the math kernel disabled
(`torch.nn.attention.sdpa_kernel`), which raises if no fused kernel takes our inputs (a float
position bias + shift mask that needs a gradient, head dim 32).

On CUDA it fails (exit code 1) when the math kernel ran or no fused kernel could. On the CPU our
training step calls no SDPA at all (SDPA's CPU kernel takes no mask that needs a gradient;
`SwinV2Block._window_attention` computes the same attention directly there), which it reports.

    python scripts/sdpa_backend.py --variant base --window 12 --batch 8 --precision bf16 --out sdpa.md
"""  # noqa: E501 - a command line longer than 100 characters

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simmim_swinv2.models import SimMIM, swinv2_config  # noqa: E402

FUSED = ("flash", "efficient", "cudnn")


def attention_ops(step) -> Counter:
    """Counts of the attention operators (aten ops whose name says attention) that `step()` runs."""
    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    )
    with profile(activities=activities) as prof:
        step()
    return Counter(
        {
            e.key: e.count
            for e in prof.key_averages()
            if e.key.startswith("aten::") and "attention" in e.key
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="base")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--window", type=int, default=12)
    parser.add_argument(
        "--batch", type=int, default=8, help="windows per kernel call scale with it; the choice not"
    )
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="also write the report (markdown) here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cfg = swinv2_config(args.variant, img_size=args.img_size, window_size=args.window)
    model = SimMIM.from_config(cfg).to(device).train()
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    tokens = args.img_size // cfg.patch_size
    mask = (torch.rand(args.batch, tokens, tokens, device=device) < 0.6).long()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x, mask).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    ops = attention_ops(step)
    lines = [
        (
            f"Attention kernels in one SimMIM training step: swinv2_{args.variant}, "
            f"{args.img_size} px, window {args.window}, batch {args.batch}, {args.precision}, "
            f"{args.device}"
        )
        + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
        + f", torch {torch.__version__}",
        "",
        "| operator | calls |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {n} |" for name, n in sorted(ops.items())] or [
        "| (no attention operator) | 0 |"
    ]
    math = sum(n for name, n in ops.items() if "math" in name)
    fused = {name: n for name, n in ops.items() if any(k in name for k in FUSED)}
    try:
        with sdpa_kernel(
            [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
        ):
            step()
        forced = "ran" + (
            " (a fused kernel takes our inputs)" if ops else " (no SDPA call to restrict)"
        )
    except RuntimeError as e:
        forced = f"FAILED: {str(e).splitlines()[0][:300]}"
    lines += ["", f"With the math kernel disabled: {forced}"]
    failed = False
    if device.type == "cuda":
        if math or not fused or forced.startswith("FAILED"):
            failed = True
            lines.append(
                "\n"
                f"**FAIL**: the math fallback ran ({math} calls) or no fused kernel did: our "
                "fused attention is not fused on this GPU."
            )
        else:
            lines.append(f"\nOK: fused kernels only ({', '.join(fused)}), no math fallback.")
    else:
        lines.append(
            "\n"
            "CPU: no SDPA call in training is expected (the explicit path; SDPA's CPU kernel "
            "takes no mask that needs a gradient)."
        )
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
