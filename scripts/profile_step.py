"""Where the time of a whole `pretrain` run goes, per optimizer step: the data wait, forward,
backward, the optimizer, each callback (kNN monitor, reconstructions, throughput, ...), validation,
checkpoint writes and logging.

Runs `simmim_swinv2.pretrain` in this process on the composed config (the defaults, or the
overrides given) with Lightning's `SimpleProfiler`, then sums its actions into those parts. Every
part is shown as milliseconds per optimizer step (its total over the run divided by the steps) and
as a share of the run's wall time (the whole `pretrain` call, so epoch-end work such as
validation, the kNN monitor and checkpoints counts, spread over the steps). "rest" is the time no
action accounts for (set-up before `fit`, the loops themselves, the progress bar).

    python scripts/profile_step.py                       # the defaults: SwinV2-debug on digits
    python scripts/profile_step.py trainer.max_epochs=2  # any pretrain override
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from lightning.pytorch.profilers import SimpleProfiler
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simmim_swinv2.config.compose import compose_job  # noqa: E402
from simmim_swinv2.pretrain import pretrain  # noqa: E402

PROFILERS: list[SimpleProfiler] = []


class RecordingProfiler(SimpleProfiler):
    """Lightning's SimpleProfiler, kept where this script reads its durations after `fit`."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        PROFILERS.append(self)


# (part, regular expression over Lightning's action names), first match wins. The closure (forward,
# backward) runs inside the LightningModule's optimizer_step: "optimizer" is that action minus both.
PARTS = [
    ("data wait (train loader next)", r"^\[_TrainingEpochLoop\]\.train_dataloader_next$"),
    ("forward (training_step)", r"^\[Strategy\]\w+\.training_step$"),
    ("backward", r"^\[Strategy\]\w+\.backward$"),
    (
        "optimizer step (+ zero_grad, clip)",
        r"^\[LightningModule\]\w+\.(optimizer_step|optimizer_zero_grad|"
        r"configure_gradient_clipping)$",
    ),
    (
        "validation: loader + steps",
        r"^\[_EvaluationLoop\]\.val_next$|^\[Strategy\]\w+\.validation_step$",
    ),
    ("checkpoint writes", r"^\[Callback\](ModelCheckpoint|WallClockCheckpoint)"),
    ("callback: kNN monitor", r"^\[Callback\]KNNMonitor"),
    ("callback: reconstructions", r"^\[Callback\]ReconstructionImages"),
    ("callback: throughput (img/s, FLOPs, data wait)", r"^\[Callback\]TrainThroughput"),
    ("callback: grad norm", r"^\[Callback\]GradNorm"),
    ("callbacks: others", r"^\[Callback\]"),
    ("LightningModule hooks (logging, lr schedule)", r"^\[LightningModule\]"),
    ("strategy / loop hooks", r"^\[Strategy\]|^\[_\w+Loop\]"),
]
# Actions that contain others (summing them would count twice): the epoch, the batch, the batch's
# transfer, and the checkpoint save that the checkpoint callbacks make.
NESTED = re.compile(r"^run_training_(epoch|batch)$|batch_to_device$|^save_checkpoint$")


def breakdown(durations: dict[str, list[float]], fit_s: float) -> list[tuple[str, float]]:
    """(part, seconds over the run) for each part of PARTS, 'rest' last."""
    parts: dict[str, float] = defaultdict(float)
    for action, times in durations.items():
        total = sum(times)
        if NESTED.search(action):
            continue
        for part, pattern in PARTS:
            if re.search(pattern, action):
                parts[part] += total
                break
        else:
            parts["unmatched: " + action] += total
    inner = parts["forward (training_step)"] + parts["backward"]
    parts["optimizer step (+ zero_grad, clip)"] -= inner  # the closure ran inside it
    rows = [(p, parts[p]) for p, _ in PARTS if parts.get(p)]
    unmatched = ((p, s) for p, s in parts.items() if p.startswith("unmatched"))
    rows += sorted(unmatched, key=lambda r: -r[1])
    rows.append(("rest (loops, progress bar, unprofiled)", fit_s - sum(s for _, s in rows)))
    return rows


def main(overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="profile_step_") as run_dir:
        profile(overrides, Path(run_dir))


def profile(overrides: list[str], run_dir: Path) -> None:
    """Run the pretrain command with ``overrides`` in ``run_dir`` and print where a step goes."""
    cfg = compose_job("pretrain", run_dir, ["resume=never", *overrides])
    with open_dict(cfg):
        cfg.trainer.profiler = {"_target_": f"{__name__}.RecordingProfiler"}
    t0 = time.perf_counter()
    pretrain(cfg)
    fit_s = time.perf_counter() - t0
    durations = PROFILERS[-1].recorded_durations
    steps = len(durations["run_training_batch"])
    rows = breakdown(durations, fit_s)
    print(
        f"\npretrain {' '.join(overrides) or '(defaults)'}: {steps} optimizer steps, "
        f"{fit_s:.1f} s whole run ({1000 * fit_s / steps:.1f} ms per step, everything included)"
        "\n"
    )
    print("| part | ms per step | share of a step |")
    print("|---|---|---|")
    for part, total in rows:
        print(f"| {part} | {1000 * total / steps:.1f} | {100 * total / fit_s:.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
