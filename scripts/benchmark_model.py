"""Time one SimMIM training step (forward, backward, AdamW step) of our model against transformers'
`Swinv2ForMaskedImageModeling` and timm's `SwinTransformerV2` with a mask token, on the same config, batch and
precision.

Each measurement runs in a fresh process (so peak memory is each implementation's own), and the
implementations take turns round by round (so drift on a shared machine hits them alike). The table reports the
median over rounds.

    python scripts/benchmark_model.py                                   # SwinV2-T, 192 px, window 6, batch 4, fp32, CPU
    python scripts/benchmark_model.py --compile                         # eager and torch.compile
    python scripts/benchmark_model.py --variant base --window 12 --batch 128 --precision bf16   # on a GPU
    python scripts/benchmark_model.py --impls ours,ours_flex --compile --precision bf16          # FlexAttention

`ours_flex` is our model with `attn_backend="flex"`; in the eager rows its flex call is still compiled on CUDA
(`simmim_swinv2.models.flex.COMPILE`). FlexAttention has no CPU backward in torch 2.14, so it trains on CUDA only.
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
EXTRA_IMPLS = ("ours_flex",)  # opt-in through --impls


class TimmSimMIM(nn.Module):
    """timm's SwinV2 with the SimMIM pieces added around it: a mask token after the patch embedding, the
    1×1 conv + PixelShuffle decoder, the masked L1 loss."""

    def __init__(self, cfg) -> None:
        super().__init__()
        from timm.models.swin_transformer_v2 import SwinTransformerV2

        self.encoder = SwinTransformerV2(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depths=cfg.depths,
            num_heads=cfg.num_heads, window_size=cfg.window_size, num_classes=0, drop_path_rate=0.0,
            pretrained_window_sizes=cfg.pretrained_window_sizes)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.decoder = nn.Sequential(nn.Conv2d(cfg.num_features, cfg.stride**2 * 3, 1), nn.PixelShuffle(cfg.stride))
        self.patch_size = cfg.patch_size

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = self.encoder.patch_embed(x)
        w = mask.unsqueeze(-1).to(z.dtype)
        z = z * (1 - w) + self.mask_token * w
        z = self.encoder.norm(self.encoder.layers(z))
        return masked_l1_loss(x, self.decoder(z.permute(0, 3, 1, 2)), mask, self.patch_size)


def build(impl: str, cfg) -> tuple[nn.Module, callable]:
    """The model and a `loss(x, mask)` function for one implementation."""
    if impl in ("ours", "ours_flex"):
        model = SimMIM.from_config(cfg.replace(attn_backend="flex") if impl == "ours_flex" else cfg)
        return model, lambda x, m: model(x, m).loss
    if impl == "timm":
        model = TimmSimMIM(cfg)
        return model, model
    if impl == "transformers":
        from transformers import Swinv2Config, Swinv2ForMaskedImageModeling

        from simmim_swinv2.convert import config_to_transformers

        hf = config_to_transformers(cfg, "Swinv2ForMaskedImageModeling")
        hf = {k: v for k, v in hf.items() if k not in ("model_type", "architectures", "num_layers", "hidden_size")}
        model = Swinv2ForMaskedImageModeling(Swinv2Config(**hf))
        return model, lambda x, m: model(x, bool_masked_pos=m.flatten(1).bool()).loss
    raise ValueError(impl)


def step_flops(loss_fn, x, mask) -> float:
    """FLOPs of one forward + backward, counted by torch's FlopCounterMode (SDPA included)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        loss_fn(x, mask).backward()
    return float(counter.get_total_flops())


def measure(impl: str, args: argparse.Namespace, compiled: bool, queue: mp.Queue) -> None:
    """Runs in a child process: build, warm up, time `args.steps` steps; put the result on `queue`."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    cfg = swinv2_config(args.variant, img_size=args.img_size, window_size=args.window)
    model, loss_fn = build(impl, cfg)
    model.to(device).train()
    if compiled:
        loss_fn = torch.compile(loss_fn)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    tokens = args.img_size // cfg.patch_size
    mask = (torch.rand(args.batch, tokens, tokens, device=device) < 0.6).long()
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
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
    flops = None
    if args.mfu and not compiled:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            flops = step_flops(loss_fn, x, mask)
    queue.put(dict(impl=impl, compiled=compiled, ips=args.batch * args.steps / elapsed,
                   ms=1000 * elapsed / args.steps, peak_mib=peak, warmup_s=warmup_s, flops=flops))


def run_isolated(impl: str, args: argparse.Namespace, compiled: bool) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(impl, args, compiled, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{impl} (compiled={compiled}) failed with exit code {proc.exitcode}")
    return queue.get()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps (compiled: the first ones compile)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--impls", default=",".join(IMPLS),
                        help="comma-separated subset of " + ",".join(IMPLS + EXTRA_IMPLS))
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    parser.add_argument("--compile-only", action="store_true", help="time only torch.compile'd steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--mfu", action="store_true", help="count FLOPs and report model FLOPs utilisation")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="device peak for MFU (H100/H200 bf16)")
    args = parser.parse_args(argv)
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    if unknown := set(impls) - set(IMPLS + EXTRA_IMPLS):
        parser.error(f"unknown --impls {sorted(unknown)}; choose from {','.join(IMPLS + EXTRA_IMPLS)}")
    if "ours_flex" in impls and args.device == "cpu":
        parser.error("ours_flex trains on CUDA only (FlexAttention has no CPU backward in torch 2.14)")
    modes = [True] if args.compile_only else ([False, True] if args.compile else [False])

    results: dict[tuple[str, bool], list[dict]] = {}
    for r in range(args.rounds):
        for compiled in modes:
            for impl in impls:
                res = run_isolated(impl, args, compiled)
                results.setdefault((impl, compiled), []).append(res)
                print(f"round {r + 1}/{args.rounds} {impl:12s} {'compiled' if compiled else 'eager':8s} "
                      f"{res['ips']:8.2f} img/s  peak {res['peak_mib']:8.0f} MiB  (warm-up {res['warmup_s']:.1f} s)",
                      flush=True)

    device = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"\nSimMIM training step: swinv2_{args.variant}, {args.img_size} px, window {args.window}, batch "
          f"{args.batch}, {args.precision}, {args.device} ({device}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; median of {args.rounds} rounds x {args.steps} steps")
    mem = "peak GPU MiB" if args.device == "cuda" else "peak RSS growth MiB"
    print(f"| implementation | mode | img/s | ms/step | {mem} | ours / this |" + (" MFU |" if args.mfu else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.mfu else ""))
    for compiled in modes:
        ours = results.get(("ours", compiled))
        ours_ips = statistics.median(r["ips"] for r in ours) if ours else None
        for impl in impls:
            rs = results[(impl, compiled)]
            ips = statistics.median(r["ips"] for r in rs)
            ms = statistics.median(r["ms"] for r in rs)
            peak = statistics.median(r["peak_mib"] for r in rs)
            ratio = f"{ours_ips / ips:.2f}x" if ours_ips else "-"
            row = f"| {impl} | {'compiled' if compiled else 'eager'} | {ips:.2f} | {ms:.1f} | {peak:.0f} | {ratio} |"
            if args.mfu:
                flops = next((r["flops"] for r in results.get((impl, False), []) if r["flops"]), None)
                row += f" {flops * ips / args.batch / (args.peak_tflops * 1e12):.1%} |" if flops else " - |"
            print(row)


if __name__ == "__main__":
    main()
