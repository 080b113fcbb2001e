"""Time one SimMIM training step (forward, backward, AdamW step) of our model against transformers'
`Swinv2ForMaskedImageModeling` and timm's `SwinTransformerV2` with a mask token, on the same config,
batch and precision.

Each measurement runs in a fresh process (so peak memory is each implementation's own), and the
implementations take turns round by round (so drift on a shared machine hits them alike). The table
reports the median over rounds. Every implementation runs the same weights: transformers'
initialisation at seed 0, loaded into ours and timm's (their own initialisations zero the residual
post-norms, which a GPU multiplies faster than data). MFU is the FLOPs of one step of the model,
counted once on ours (`simmim_swinv2.training.throughput.step_flops`, as training counts them), over
the step time and each `--peak-tflops`. An implementation that fails is reported as failed, and the
others still run.

    python scripts/benchmark_model.py            # SwinV2-T, 192 px, window 6, batch 4, fp32, CPU
    python scripts/benchmark_model.py --compile  # eager and torch.compile
    python scripts/benchmark_model.py --impls ours,ours_eager,transformers,timm --rounds 9
        # both attention paths
    python scripts/benchmark_model.py --variant base --window 12 --batch 128 --precision bf16
        # on a GPU
    python scripts/benchmark_model.py --impls ours,ours_flex --compile --precision bf16
        # FlexAttention
    python scripts/benchmark_model.py ... --mfu --peak-tflops 989,790 --out table.md
        # MFU against two peaks; a file
    python scripts/benchmark_model.py --impls ours,ours_norm_target --batch 8 --rounds 7

`ours_eager` is our model with `attn_backend="eager"` (timm's attention, the reference), `ours_flex`
with `attn_backend="flex"`; in the eager rows its flex call is still compiled on CUDA
(`simmim_swinv2.models.flex.COMPILE`). FlexAttention has no CPU backward in torch 2.14, so it trains
on CUDA only. `ours_norm_target` is ours with SimMIM's normalised target (47-px window).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simmim_swinv2.models import SimMIM, masked_l1_loss, swinv2_config  # noqa: E402

IMPLS = ("ours", "transformers", "timm")
EXTRA_IMPLS = ("ours_eager", "ours_flex", "ours_norm_target")  # opt-in through --impls


class TimmSimMIM(nn.Module):
    """timm's SwinV2 with the SimMIM pieces added around it: a mask token after the patch embedding,
    the 1×1 conv + PixelShuffle decoder, the masked L1 loss."""

    def __init__(self, cfg) -> None:
        super().__init__()
        from timm.models.swin_transformer_v2 import SwinTransformerV2

        self.encoder = SwinTransformerV2(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            window_size=cfg.window_size,
            num_classes=0,
            drop_path_rate=0.0,
            pretrained_window_sizes=cfg.pretrained_window_sizes,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.num_features, cfg.stride**2 * 3, 1), nn.PixelShuffle(cfg.stride)
        )
        self.patch_size = cfg.patch_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.encoder.patch_embed(x)
        w = mask.unsqueeze(-1).to(z.dtype)
        z = z * (1 - w) + self.mask_token * w
        z = self.encoder.norm(self.encoder.layers(z))
        return masked_l1_loss(x, self.decoder(z.permute(0, 3, 1, 2)), mask, self.patch_size)


def _transformers_model(cfg) -> nn.Module:
    """transformers' `Swinv2ForMaskedImageModeling` for `cfg`, initialised at seed 0."""
    from transformers import Swinv2Config, Swinv2ForMaskedImageModeling

    from simmim_swinv2.convert import config_to_transformers

    hf = config_to_transformers(cfg, "Swinv2ForMaskedImageModeling")
    hf = {
        k: v
        for k, v in hf.items()
        if k not in ("model_type", "architectures", "num_layers", "hidden_size")
    }
    torch.manual_seed(0)
    return Swinv2ForMaskedImageModeling(Swinv2Config(**hf))


def _reference_weights(cfg) -> tuple[dict, dict]:
    """transformers' seed-0 weights in our (= timm's) names: encoder and decoder state dicts."""
    from simmim_swinv2.convert import encoder_from_transformers

    sd = _transformers_model(cfg).state_dict()
    encoder = encoder_from_transformers(
        {k.removeprefix("swinv2."): v for k, v in sd.items() if k.startswith("swinv2.")}
    )
    decoder = {k.removeprefix("decoder."): v for k, v in sd.items() if k.startswith("decoder.")}
    return encoder, decoder


def _load(module: nn.Module, sd: dict, ignore: tuple[str, ...] = ()) -> None:
    result = module.load_state_dict(sd, strict=False)
    buffers = (
        "relative_position_index",
        "relative_coords_table",
        "attn_mask",
        "k_bias",
        "window_order",
    )
    missing = [k for k in result.missing_keys if not k.endswith(buffers)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(ignore)]
    if missing or unexpected:
        raise RuntimeError(
            f"{type(module).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def build(impl: str, cfg) -> tuple[nn.Module, callable]:
    """The model, with the same weights for every implementation, and a `loss(x, mask)` function."""
    if impl == "transformers":
        model = _transformers_model(cfg)
        return model, lambda x, m: model(x, bool_masked_pos=m.flatten(1).bool()).loss
    encoder, decoder = _reference_weights(cfg)
    if impl.startswith("ours"):
        backend = {"ours_eager": "eager", "ours_flex": "flex"}.get(impl, cfg.attn_backend)
        norm_target = impl == "ours_norm_target"
        model = SimMIM.from_config(cfg.replace(attn_backend=backend), norm_target=norm_target)
        _load(model.encoder, encoder)
        model.decoder.load_state_dict(decoder)
        return model, lambda x, m: model(x, m).loss
    if impl == "timm":
        model = TimmSimMIM(cfg)
        _load(model.encoder, encoder, ignore=("mask_token",))
        model.mask_token.data.copy_(encoder["mask_token"])
        model.decoder.load_state_dict(decoder)
        return model, model
    raise ValueError(impl)


def _setup(impl: str, args: argparse.Namespace):
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    cfg = swinv2_config(args.variant, img_size=args.img_size, window_size=args.window)
    model, loss_fn = build(impl, cfg)
    model.to(device).train()
    torch.manual_seed(1)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    tokens = args.img_size // cfg.patch_size
    mask = (torch.rand(args.batch, tokens, tokens, device=device) < 0.6).long()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    autocast = lambda: torch.autocast(  # noqa: E731
        device.type, dtype=dtype, enabled=dtype is not None
    )
    return model, loss_fn, x, mask, device, autocast


def count_flops(args: argparse.Namespace) -> dict:
    """The model FLOPs of one training step (forward + backward), counted on ours: the same for
    every row."""
    # the count training logs FLOP/s and MFU with
    from simmim_swinv2.training.throughput import step_flops

    cfg = swinv2_config(args.variant, img_size=args.img_size, window_size=args.window)
    return dict(flops=step_flops(SimMIM.from_config(cfg), args.batch))


def measure(impl: str, args: argparse.Namespace, compiled: bool) -> dict:
    """Build, warm up, time `args.steps` steps (forward, backward, AdamW step)."""
    model, loss_fn, x, mask, device, autocast = _setup(impl, args)
    if compiled:
        loss_fn = torch.compile(loss_fn)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step() -> None:
        with autocast():
            loss = loss_fn(x, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # peak RSS growth over the process's start (KiB on Linux)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return dict(
        ips=args.batch * args.steps / elapsed,
        ms=1000 * elapsed / args.steps,
        peak_mib=peak,
        warmup_s=warmup_s,
    )


def _child(fn, fn_args: tuple, queue: mp.Queue) -> None:
    try:
        queue.put(fn(*fn_args))
    except Exception as e:  # reported in the table; the other implementations still run
        queue.put(dict(error=f"{type(e).__name__}: {e}"))
        raise


def run_isolated(fn, *fn_args) -> dict:
    """`fn(*fn_args)` in a fresh process; its result, or `{"error": ...}` when it raised or died."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, fn_args, queue))
    proc.start()
    proc.join()
    if not queue.empty():
        return queue.get()
    return dict(error=f"exit code {proc.exitcode} (killed: out of memory?)")


def table(
    args: argparse.Namespace,
    impls: list[str],
    modes: list[bool],
    results: dict,
    flops: float | None,
) -> str:
    """The markdown table (with its caption) of the medians so far."""
    device = (
        torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    )
    peaks = (
        [p for p in (float(v) for v in args.peak_tflops.split(",")) if p > 0] if args.mfu else []
    )
    mem = "peak GPU MiB" if args.device == "cuda" else "peak RSS growth MiB"
    lines = [
        (
            f"SimMIM training step: swinv2_{args.variant}, {args.img_size} px, window "
            f"{args.window}, batch {args.batch}, {args.precision}, {args.device} ({device}), "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}; median of "
            f"{args.rounds} rounds x {args.steps} steps"
        )
        + (f"; model FLOPs/step {flops / 1e9:,.1f} G (FlopCounterMode, ours)" if flops else ""),
        "",
        (
            f"| implementation | mode | img/s | ms/step | {mem} | ours / this | per round: median "
            "(range) |"
        )
        + "".join(f" MFU @{p:g} TFLOP/s |" for p in peaks),
        "|---|---|---|---|---|---|---|" + "---|" * len(peaks),
    ]
    for compiled in modes:
        mode = "compiled" if compiled else "eager"
        ok = {i: [r for r in results.get((i, compiled), []) if "error" not in r] for i in impls}
        ours_ips = statistics.median(r["ips"] for r in ok["ours"]) if ok.get("ours") else None
        for impl in impls:
            rs = ok[impl]
            if not rs:
                errors = [r["error"] for r in results.get((impl, compiled), [])]
                if errors:
                    lines.append(
                        f"| {impl} | {mode} | failed: {errors[-1][:200].replace('|', '/')} |"
                        + " |" * (4 + len(peaks))
                    )
                continue
            ips = statistics.median(r["ips"] for r in rs)
            ratio = f"{ours_ips / ips:.2f}x" if ours_ips else "-"
            # the same round's ratio (the implementations take turns, so drift on the machine
            # cancels): its spread
            pairs = [
                a["ips"] / b["ips"]
                for a, b in zip(
                    results.get(("ours", compiled), []), results.get((impl, compiled), [])
                )
                if "error" not in a and "error" not in b
            ]
            per_round = (
                f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f})"
                if pairs
                else "-"
            )
            row = (
                f"| {impl} | {mode} | {ips:.2f} | {statistics.median(r['ms'] for r in rs):.1f} | "
                f"{statistics.median(r['peak_mib'] for r in rs):.0f} | {ratio} | {per_round} |"
            )
            row += "".join(
                f" {100 * flops * ips / args.batch / (p * 1e12):.3g}% |" if flops else " - |"
                for p in peaks
            )
            lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed steps (compiled: the first ones compile)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help="comma-separated subset of " + ",".join(IMPLS + EXTRA_IMPLS),
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument(
        "--compile-only", action="store_true", help="time only torch.compile'd steps"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's choice)"
    )
    parser.add_argument(
        "--mfu", action="store_true", help="count the model's FLOPs and report FLOPs utilisation"
    )
    parser.add_argument(
        "--peak-tflops",
        default="989",
        help="device peak(s) for MFU, comma-separated (H100/H200 bf16 dense datasheet: 989)",
    )
    parser.add_argument(
        "--out", help="also write the table here (rewritten after every measurement)"
    )
    args = parser.parse_args(argv)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if unknown := set(impls) - set(IMPLS + EXTRA_IMPLS):
        parser.error(
            f"unknown --impls {sorted(unknown)}; choose from {','.join(IMPLS + EXTRA_IMPLS)}"
        )
    if "ours_flex" in impls and args.device == "cpu":
        parser.error(
            "ours_flex trains on CUDA only (FlexAttention has no CPU backward in torch 2.14)"
        )
    modes = [True] if args.compile_only else ([False, True] if args.compile else [False])

    flops = None
    if args.mfu:
        res = run_isolated(count_flops, args)
        flops = res.get("flops")
        print(
            f"model FLOPs per step: {flops / 1e9:,.1f} GFLOP"
            if flops
            else f"FLOP count failed: {res['error']}",
            flush=True,
        )
    results: dict[tuple[str, bool], list[dict]] = {}
    for r in range(args.rounds):
        for compiled in modes:
            for impl in impls:
                res = run_isolated(measure, impl, args, compiled)
                results.setdefault((impl, compiled), []).append(res)
                what = (
                    f"round {r + 1}/{args.rounds} {impl:12s} "
                    f"{'compiled' if compiled else 'eager':8s}"
                )
                if "error" in res:
                    print(f"{what} FAILED: {res['error']}", flush=True)
                else:
                    print(
                        f"{what} {res['ips']:8.2f} img/s  peak {res['peak_mib']:8.0f} MiB  "
                        f"(warm-up {res['warmup_s']:.1f} s)",
                        flush=True,
                    )
                if args.out:
                    Path(args.out).write_text(table(args, impls, modes, results, flops) + "\n")
    print("\n" + table(args, impls, modes, results, flops))


if __name__ == "__main__":
    main()
