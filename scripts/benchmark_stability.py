"""What `callbacks.stability` and `callbacks.numerics` cost per training step, against the step
itself.

The step: SimMIM forward, backward and AdamW step of a SwinV2 (default SwinV2-T, 192 px, window 6,
batch 4, fp32). The additions, run by the callbacks' own code (a stand-in trainer of one process):

- every step, `Stability`: `judge_loss` (the loss statistics; under DDP also one all-reduce of two
  numbers, absent here) and `before_optimizer_step` (the global gradient norm and its check);
- every log step (`trainer.log_every_n_steps`, default 10), `NumericsMonitor`: the RMS of each
  stage's output (its forward hooks), the per-stage gradient norms and the logit scales.

Each addition is timed on its own (median over repetitions, the step's real tensors), and the step
with and without the additions is timed too, the two taking turns (medians; on a shared machine
this difference is the noisier measure). Overhead at the defaults = stability + numerics / 10.

    python scripts/benchmark_stability.py                 # SwinV2-T, 192 px, batch 4, CPU fp32
    python scripts/benchmark_stability.py --variant base --window 12 --batch 8 --rounds 7
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simmim_swinv2.models import SimMIM, swinv2_config  # noqa: E402
from simmim_swinv2.training.numerics import NumericsMonitor  # noqa: E402
from simmim_swinv2.training.stability import Stability  # noqa: E402


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--window", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant and round")
    parser.add_argument("--log-every", type=int, default=10, help="trainer.log_every_n_steps")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = swinv2_config(args.variant, img_size=args.img_size, window_size=args.window)
    model = SimMIM.from_config(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    tokens = args.img_size // cfg.patch_size
    mask = (torch.rand(args.batch, tokens, tokens) < 0.6).long()

    trainer = SimpleNamespace(
        global_step=0,
        global_rank=0,
        world_size=1,
        precision="32-true",
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    task = SimpleNamespace(model=model, parameters=model.parameters, log_dict=lambda *a, **k: None)
    stability, numerics = Stability(), NumericsMonitor(every_n_steps=1)
    numerics.setup(trainer, task, "fit")  # its forward hooks on the encoder's stages

    def step(guard: bool, log_step: bool) -> None:
        numerics._active = log_step
        loss = model(x, mask).loss
        if guard:
            loss = stability.judge_loss(trainer, task, loss)
        loss.backward()
        if log_step:
            numerics.on_before_optimizer_step(trainer, task, opt)
        if guard:
            stability.before_optimizer_step(trainer, task)
        opt.step()
        opt.zero_grad(set_to_none=True)
        trainer.global_step += 1
        if log_step:
            numerics.on_train_batch_end(trainer, task, None, None, 0)
        if guard:
            stability._reason, stability._means, stability._local = None, [], []

    variants = {
        "step": (False, False),
        "step + stability": (True, False),
        "step + stability + numerics (a log step)": (True, True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    step(True, True)  # warm-up
    for _ in range(args.rounds):
        for name, flags in variants.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(*flags)
                times[name].append(1000 * (time.perf_counter() - t0))
    whole = {name: statistics.median(v) for name, v in times.items()}

    # each addition alone, on the step's real tensors
    repeat = 20
    loss = model(x, mask).loss
    loss.backward()
    outputs = []
    hooks = [
        s.register_forward_hook(lambda m, i, o: outputs.append(o.detach())) for s in numerics.stages
    ]
    with torch.no_grad():
        model(x, mask)
    for h in hooks:
        h.remove()
    parts = {
        "stability: judge_loss": median_ms(
            lambda: stability.judge_loss(trainer, task, loss.detach()), repeat
        ),
        "stability: gradient norm + check": median_ms(
            lambda: stability.before_optimizer_step(trainer, task), repeat
        ),
        "numerics: stage RMS (4 hooks)": median_ms(
            lambda: [o.float().square().mean().sqrt() for o in outputs], repeat
        ),
        "numerics: stage gradient norms": median_ms(
            lambda: (
                setattr(numerics, "_active", True),
                numerics.on_before_optimizer_step(trainer, task, opt),
            ),
            repeat,
        ),
    }
    numerics._active = True
    numerics._step = trainer.global_step - 1
    parts["numerics: logit scales + log"] = median_ms(
        lambda: (
            setattr(numerics, "_active", True),
            numerics.on_train_batch_end(trainer, task, None, None, 0),
        ),
        repeat,
    )
    base = whole["step"]
    stab = parts["stability: judge_loss"] + parts["stability: gradient norm + check"]
    nums = sum(v for k, v in parts.items() if k.startswith("numerics"))
    print(
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}. SwinV2-{args.variant} {args.img_size} px window "
        f"{args.window}, batch {args.batch}, fp32 CPU; {args.rounds} rounds x {args.steps} steps.\n"
    )
    print("| measured | ms | of a step |\n|---|---:|---:|")
    for name, v in whole.items():
        print(f"| {name} | {v:.1f} | {v / base:.2%} |")
    for name, v in parts.items():
        print(f"| {name} (alone) | {v:.2f} | {v / base:.2%} |")
    print(f"| **every step: stability** | {stab:.2f} | {stab / base:.2%} |")
    print(f"| **every {args.log_every} steps: numerics** | {nums:.2f} | {nums / base:.2%} |")
    total = stab + nums / args.log_every
    print(
        f"| **at the defaults: stability + numerics / {args.log_every}** | {total:.2f} | "
        f"{total / base:.2%} |"
    )


if __name__ == "__main__":
    main()
