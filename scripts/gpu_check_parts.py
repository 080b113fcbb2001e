"""The Python parts of scripts/gpu_check.sh: one subcommand each, each printing a markdown section.

    env          versions of what the parts import (names that fail to import go to --missing:
                 the shell skips the parts that need them, by name), the GPU, its measured bf16
                 matmul rate and copy bandwidth
    eager-table  the one-row tables of separate benchmark_model.py runs (a process and a time cap
                 per row) as one table: img/s, ours / this, MFU with the FLOPs counted on ours
    plan         the memory plan of a pretrain job at the largest batch whose estimate stays under
                 --fraction of the GPU (so the run measures a peak instead of running out of memory)
    pretrain     `python -m simmim_swinv2.pretrain OVERRIDES` in this process; peak memory (torch,
                 NVML, RSS) sampled every second into DIR/peak.json, kept when a timeout stops the
                 run; every thread's traceback printed --dump-after seconds in (where it got to)
    run-table    a pretrain run's table (DIR/metrics.csv, DIR/peak.json) against the plan and the
                 eager benchmark row
    target       the normalised target's cost: `normalize_target` and the official 2-D formula
                 alone, and a SimMIM training step with `norm_target` off and on, interleaved

Only the standard library is imported at the top: eager-table and run-table need no torch.

    python scripts/gpu_check_parts.py target --variant base --window 12 --batch 128 --out target.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# the import names whose versions env reports; a part names the ones it needs (scripts/gpu_check.sh)
PACKAGES = (
    "torch",
    "triton",
    "timm",
    "transformers",
    "lightning",
    "hydra",
    "omegaconf",
    "webdataset",
    "simplejpeg",
    "deepspeed",
    "datasets",
    "accelerate",
)
GIB = 2**30


def _write(path: str | None, text: str) -> None:
    print(text, flush=True)
    if path:
        Path(path).write_text(text + "\n")


def env(a: argparse.Namespace) -> int:
    """Versions, the GPU and its measured ceilings; the packages that do not import to `a.missing`,
    1 or 0 (CUDA or not) to `a.cuda_file`, the matmul rate (TFLOP/s) to `a.rate_file`."""
    import platform

    lines = [
        "### env",
        "",
        "| item | value |",
        "|---|---|",
        f"| python | {platform.python_version()} ({sys.executable}) |",
    ]
    missing = []
    for name in PACKAGES:
        t = time.perf_counter()
        try:
            mod = __import__(name)
        except Exception as e:  # noqa: BLE001 - whatever the cause, the parts needing it cannot run
            missing.append(name)
            lines.append(f"| {name} | NOT IMPORTABLE: {type(e).__name__}: {str(e)[:150]} |")
            continue
        where = Path(mod.__file__).parent.parent if getattr(mod, "__file__", None) else "?"
        lines.append(
            f"| {name} | {getattr(mod, '__version__', '?')} ({where}; import "
            f"{time.perf_counter() - t:.1f} s) |"
        )
    Path(a.missing).write_text(" ".join(missing) + "\n")
    import torch

    cuda = torch.cuda.is_available()
    Path(a.cuda_file).write_text("1\n" if cuda else "0\n")
    if cuda:
        import subprocess

        p = torch.cuda.get_device_properties(0)
        lines.append(
            f"| GPU | {p.name}, {p.total_memory / GIB:.1f} GiB, "
            f"{p.multi_processor_count} SMs, cc {p.major}.{p.minor} |"
        )
        query = "--query-gpu=driver_version,clocks.sm,clocks.max.sm,power.limit"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.strip()
        lines.append(f"| driver, SM clock / max, power limit | {smi} |")
    else:
        lines.append("| GPU | none: torch.cuda.is_available() is False |")
    dev, dtype, n = ("cuda", torch.bfloat16, 8192) if cuda else ("cpu", torch.float32, 512)
    x, y = (torch.randn(n, n, device=dev, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3):
        x @ y
    sync()
    t = time.perf_counter()
    for _ in range(10):
        x @ y
    sync()
    rate = 10 * 2 * n**3 / (time.perf_counter() - t) / 1e12
    kind = "bf16" if cuda else "fp32"
    lines.append(f"| {kind} matmul {n}^3, random data, mean of 10 | {rate:.4g} TFLOP/s |")
    Path(a.rate_file).write_text(f"{rate:.4g}\n")
    if cuda:
        x = torch.empty(2 * GIB, dtype=torch.uint8, device=dev)
        y = torch.empty_like(x)
        y.copy_(x)
        sync()
        t = time.perf_counter()
        for _ in range(10):
            y.copy_(x)
        sync()
        bw = 10 * 2 * x.numel() / (time.perf_counter() - t) / 1e12
        lines.append(f"| device-to-device copy, 2 GiB, read + write | {bw:.2f} TB/s |")
    _write(a.out, "\n".join(lines))
    return 0


def _benchmark_rows(path: Path) -> tuple[str, list[list[str]]]:
    """The caption and the rows (cells) of a benchmark_model.py --out table."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in lines
        if line.startswith("| ") and not line.startswith("| implementation")
    ]
    return (lines[0] if lines else ""), rows


def eager_table(a: argparse.Namespace) -> int:
    """One table from the one-row tables `a.rows` (files eager_<impl>.md, in the order run)."""
    peaks = [float(p) for p in a.peak_tflops.split(",") if p and float(p) > 0]
    caption, flops, batch, rows = "", None, None, []
    for path in map(Path, a.rows):
        cap, cells = _benchmark_rows(path)
        if m := re.search(r"model FLOPs/step ([\d,.]+) G", cap):
            flops = float(m[1].replace(",", "")) * 1e9
        if batch is None and (m := re.search(r"batch (\d+)", cap)):
            batch = int(m[1])
        caption = caption or re.sub(r"; model FLOPs/step.*", "", cap)
        impl = path.stem.removeprefix("eager_")
        rows += cells or [[impl, "-", "no result (see the summary: timed out or skipped)"]]
    ips = {r[0]: float(r[2]) for r in rows if len(r) > 4 and re.fullmatch(r"[\d.]+", r[2])}
    if flops:
        caption += f"; model FLOPs/step {flops / 1e9:,.1f} G (FlopCounterMode, ours)"
    lines = [
        "### model step, eager (a process and a time cap per row, in the order run)",
        "",
        caption,
        "",
        "| implementation | img/s | ms/step | peak MiB | ours / this |"
        + "".join(f" MFU @{p:g} TFLOP/s |" for p in peaks),
        "|---|---|---|---|---|" + "---|" * len(peaks),
    ]
    for r in rows:
        if r[0] not in ips:
            lines.append(f"| {r[0]} | {r[2] if len(r) > 2 else '-'} | | | |" + " |" * len(peaks))
            continue
        ratio = f"{ips['ours'] / ips[r[0]]:.2f}x" if "ours" in ips else "-"
        mfu = "".join(
            f" {100 * flops * ips[r[0]] / batch / (p * 1e12):.3g}% |" if flops and batch else " - |"
            for p in peaks
        )
        lines.append(f"| {r[0]} | {r[2]} | {r[3]} | {r[4]} | {ratio} |{mfu}")
    _write(a.out, "\n".join(lines))
    return 0


def plan(a: argparse.Namespace) -> int:
    """The plan at the job's batch, or the largest smaller one under `a.fraction` of the GPU; the
    chosen batch to `a.batch_file`."""
    from simmim_swinv2.config.compose import compose_job
    from simmim_swinv2.distributed import planning

    cfg = compose_job("pretrain", a.run_dir, a.overrides)
    first = planning.make_plan(cfg)
    smaller = [b for b in (64, 48, 32, 24, 16, 8, 4, 2, 1) if b < first.batch_size]
    sizes = [first.batch_size, *smaller]
    chosen, why = first, "the job's own (the GPU's memory is unknown)"
    if first.gpu_memory_bytes:
        limit = a.fraction * first.gpu_memory_bytes
        plans = [planning.make_plan(cfg, batch_size=b) for b in sizes]
        fitting = [p for p in plans if p.total_bytes() <= limit]
        chosen = fitting[0] if fitting else plans[-1]
        why = (
            f"the largest of {', '.join(map(str, sizes))} whose estimate is at most "
            f"{a.fraction:.0%} of the GPU's {first.gpu_memory_bytes / GIB:.1f} GiB"
            + ("" if fitting else " (none is: the smallest)")
        )
    Path(a.batch_file).write_text(f"{chosen.batch_size}\n")
    _write(
        a.out,
        f"### plan: {' '.join(a.overrides)}\n\nbatch {chosen.batch_size} per GPU: {why}; "
        f"at the job's own batch {first.batch_size} the estimate is "
        f"{first.total_bytes() / GIB:,.2f} GiB.\n\n{planning.format_plan(chosen)}",
    )
    return 0


def pretrain(a: argparse.Namespace) -> int:
    """`python -m simmim_swinv2.pretrain` in this process, peaks sampled into `a.dir`/peak.json."""
    import atexit
    import faulthandler
    import resource
    import runpy
    import signal
    import threading

    import torch

    run = Path(a.dir)
    run.mkdir(parents=True, exist_ok=True)
    t0, peak = time.perf_counter(), {}
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVML (the CPU): torch's and the host's numbers only
        handle = None

    def sample() -> None:
        if handle is not None:
            used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / GIB
            peak["nvml_used_gib"] = max(peak.get("nvml_used_gib", 0.0), used)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            peak["allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
            peak["reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        peak["rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        peak["wall_s"] = time.perf_counter() - t0
        (run / "peak.json").write_text(json.dumps({k: round(v, 3) for k, v in peak.items()}) + "\n")

    def sampler() -> None:
        while True:
            sample()
            time.sleep(1.0)

    threading.Thread(target=sampler, daemon=True).start()
    atexit.register(sample)
    # SIGTERM from the part's timeout: exit through atexit (the last peaks) until Lightning installs
    # its own handler; after that the sampler's file, at most a second old, is what remains
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.dump_after > 0:
        faulthandler.dump_traceback_later(a.dump_after, exit=False)
    sys.argv = ["simmim_swinv2.pretrain", *a.overrides, f"hydra.run.dir={run}"]
    runpy.run_module("simmim_swinv2.pretrain", run_name="__main__")
    return 0


def run_table(a: argparse.Namespace) -> int:
    """A pretrain run's throughput and peaks, against the plan's estimate and the eager row."""
    run = Path(a.dir)
    rows = list(csv.DictReader(open(run / "metrics.csv"))) if (run / "metrics.csv").exists() else []

    def col(suffix: str) -> list[float]:
        keys = [k for k in (rows[0] if rows else {}) if k.endswith(suffix)]
        return [float(r[k]) for r in rows for k in keys[:1] if r.get(k)]

    ips, steps, loss = col("device/samples_per_sec"), col("step"), col("train/loss_step")
    peak = json.loads((run / "peak.json").read_text()) if (run / "peak.json").exists() else {}
    lines = [
        f"### {a.title}",
        "",
        "| item | value |",
        "|---|---|",
        f"| steps logged | {int(max(steps)) + 1 if steps else 0} |",
    ]
    lines.append(
        f"| img/s per device (the throughput callback) | last {ips[-1]:.1f}, median "
        f"{statistics.median(ips):.1f} of {len(ips)} logs |"
        if ips
        else "| img/s | none logged |"
    )
    lines.append(
        f"| loss, first / last logged | {loss[0]:.4f} / {loss[-1]:.4f} |"
        if loss
        else "| loss | none logged |"
    )
    for suffix, what in (("data_wait", "loader wait, share of step time"), ("device/mfu", "MFU")):
        if values := col(suffix):  # logged where the throughput callback has them
            lines.append(
                f"| {what} ({suffix}) | last {values[-1]:.3g}, median "
                f"{statistics.median(values):.3g} |"
            )
    names = {
        "allocated_gib": "peak GPU allocated (torch)",
        "reserved_gib": "peak GPU reserved (torch)",
        "nvml_used_gib": "peak GPU memory used (NVML: the whole process, context included)",
        "rss_gib": "peak host RSS",
        "wall_s": "wall time of the process, start-up included",
    }
    lines += [
        f"| {names[k]} | {v:.2f} {'s' if k == 'wall_s' else 'GiB'} |"
        for k, v in peak.items()
        if k in names
    ]
    plan_md = Path(a.plan) if a.plan else None
    if (
        plan_md
        and plan_md.exists()
        and (m := re.search(r"^\| total / GPU +\| ([\d.,]+) GiB", plan_md.read_text(), re.M))
    ):
        est = float(m[1].replace(",", ""))
        lines.append(f"| plan's estimate, total / GPU | {est:.2f} GiB |")
        if measured := peak.get("nvml_used_gib") or peak.get("reserved_gib"):
            source = "NVML" if "nvml_used_gib" in peak else "reserved"
            lines.append(f"| plan / measured ({source}) | {est / measured:.2f} |")
    eager = Path(a.eager) if a.eager else None
    if (
        eager
        and eager.exists()
        and ips
        and (m := re.search(r"^\| ours \| ([\d.]+) \|", eager.read_text(), re.M))
    ):
        ratio = ips[-1] / float(m[1])
        lines.append(f"| vs the eager benchmark's ours ({m[1]} img/s) | {ratio:.2f}x |")
    _write(a.out, "\n".join(lines))
    return 0


def official_target(target, window: int = 47):
    """SimMIM's normalised target as the official code computes it: stride-1 2-D average pools that
    ignore the padding, unbiased variance. `(B, C, H, W)` -> the same shape."""
    import torch.nn.functional as F

    pool = dict(kernel_size=window, stride=1, padding=window // 2)
    mean = F.avg_pool2d(target, count_include_pad=False, **pool)
    mean_sq = F.avg_pool2d(target**2, count_include_pad=False, **pool)
    ones = target.new_ones(target[:, :1].shape)
    count = F.avg_pool2d(ones, count_include_pad=True, **pool) * window**2
    var = ((mean_sq - mean**2) * (count / (count - 1))).clamp(min=0.0)
    return (target - mean) / (var + 1e-6).sqrt()


def target(a: argparse.Namespace) -> int:
    """The normalised target alone and inside a training step: medians over interleaved rounds."""
    import torch

    from simmim_swinv2.models import SimMIM, normalize_target, swinv2_config

    torch.manual_seed(0)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = swinv2_config(a.variant, img_size=a.img_size, window_size=a.window)
    model = SimMIM.from_config(cfg, norm_target_window=a.target_window).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(a.batch, 3, a.img_size, a.img_size, device=device)
    tokens = a.img_size // cfg.patch_size
    mask = (torch.rand(a.batch, tokens, tokens, device=device) < 0.6).long()
    dtype = {"fp32": None, "bf16": torch.bfloat16}[a.precision]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step(norm_target: bool) -> None:
        model.norm_target = norm_target
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(x, mask).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn, grad: bool) -> float:
        with torch.set_grad_enabled(grad):
            for _ in range(a.warmup):
                fn()
            sync()
            t = time.perf_counter()
            for _ in range(a.steps):
                fn()
            sync()
        return 1000 * (time.perf_counter() - t) / a.steps

    off, on = "training step, norm_target=false", "training step, norm_target=true"
    w = a.target_window
    fns = {
        "normalize_target (src), fp32": lambda: normalize_target(x.float(), w),
        "official formula (2-D avg_pool2d), fp32": lambda: official_target(x.float(), w),
        off: lambda: step(False),
        on: lambda: step(True),
    }
    ms: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(a.rounds):
        for name, fn in fns.items():
            ms[name].append(timed(fn, grad=name in (off, on)))
        last = ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in ms.items())
        print(f"round {r + 1}/{a.rounds}: {last}", flush=True)
    med = {k: statistics.median(v) for k, v in ms.items()}
    gpu = f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""
    lines = [
        f"### normalised target: swinv2_{a.variant}, {a.img_size} px, window {a.window}, "
        f"batch {a.batch}, {a.precision}, target window {w}, {device}{gpu}, "
        f"torch {torch.__version__}; median of {a.rounds} interleaved rounds x {a.steps}",
        "",
        "| what | ms per batch | against the step without the target |",
        "|---|---|---|",
    ]
    for name, v in med.items():
        if name == off:
            versus = "-"
        elif name == on:
            versus = f"{100 * (v / med[off] - 1):+.1f}%"  # what the target adds to a step
        else:
            versus = f"{100 * v / med[off]:.1f}% of it"  # the target alone, against a plain step
        lines.append(f"| {name} | {v:.2f} | {versus} |")
    _write(a.out, "\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("--out")
    p.add_argument("--missing", required=True, help="file: the import names that failed")
    p.add_argument("--cuda-file", required=True, help="file: 1 when CUDA is available, else 0")
    p.add_argument("--rate-file", required=True, help="file: the measured matmul rate, TFLOP/s")
    p = sub.add_parser("eager-table")
    p.add_argument("--out")
    p.add_argument("--peak-tflops", default="989")
    p.add_argument("rows", nargs="+", help="benchmark_model.py --out files named eager_<impl>.md")
    p = sub.add_parser("plan")
    p.add_argument("--out")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--batch-file", required=True)
    p.add_argument("--fraction", type=float, default=0.85)
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("pretrain")
    p.add_argument("--dir", required=True)
    dump_after = float(os.environ.get("GPU_CHECK_DUMP_AFTER", 0))
    p.add_argument(
        "--dump-after",
        type=float,
        default=dump_after,
        help="seconds (default: $GPU_CHECK_DUMP_AFTER, set by gpu_check.sh); 0: none",
    )
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("run-table")
    p.add_argument("--out")
    p.add_argument("--title", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--plan")
    p.add_argument("--eager")
    p = sub.add_parser("target")
    p.add_argument("--out")
    p.add_argument("--variant", default="base")
    p.add_argument("--img-size", type=int, default=192)
    p.add_argument("--window", type=int, default=12)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--target-window", type=int, default=47)
    p.add_argument("--device")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args(argv)
    commands = {
        "env": env,
        "eager-table": eager_table,
        "plan": plan,
        "pretrain": pretrain,
        "run-table": run_table,
        "target": target,
    }
    return commands[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
