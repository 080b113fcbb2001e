"""Checkpoints for long runs: bounded retention by default, wall-clock saves inside epochs that a
killed run resumes from exactly, the plan's disk estimate, and a warmup longer than a short run
clamped to it."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import FAST, compose_config

from simmim_swinv2.distributed import planning
from simmim_swinv2.finetune import finetune
from simmim_swinv2.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]
ARGS = [*FAST, "trainer.limit_train_batches=4", "callbacks.reconstructions.every_n_steps=0"]


def losses(run_dir) -> dict[int, float]:
    with open(Path(run_dir) / "metrics.csv") as f:
        return {
            int(r["step"]): float(r["train/loss_step"])
            for r in csv.DictReader(f)
            if r.get("train/loss_step")
        }


def test_default_retention_keeps_the_newest_two_last_and_every_nth(tmp_path):
    """5 epochs of 4 steps, `checkpoint_keep` every 2 epochs: the newest two epoch checkpoints,
    last.ckpt (a link to the newest, not a second copy) and the kept ones; nothing else, however
    long the run."""
    run = tmp_path / "run"
    cfg = compose_config(
        "pretrain",
        run,
        [*ARGS, "trainer.max_epochs=5", "callbacks.checkpoint_keep.every_n_epochs=2"],
    )
    pretrain(cfg)
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == [
        "epoch0003-step0000016.ckpt",
        "epoch0004-step0000020.ckpt",
        "last.ckpt",
    ]
    assert (ckpts / "last.ckpt").is_symlink() and (
        ckpts / "last.ckpt"
    ).resolve().name == "epoch0004-step0000020.ckpt"
    assert sorted(p.name for p in (ckpts / "keep").iterdir()) == [
        "epoch0001-step0000008.ckpt",
        "epoch0003-step0000016.ckpt",
    ]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 20

    plan = planning.make_plan(cfg).checkpoint  # what plan prints: at most this many, of this size
    files = [p for p in ckpts.rglob("*.ckpt") if not p.is_symlink()]
    # + last.ckpt, a real file whenever checkpoint_time writes it
    assert plan.count >= len(files) + 1
    assert dict(plan.kept) == {
        "newest 2 (checkpoint)": 2,
        "last.ckpt": 1,
        "every 2 epochs (checkpoint_keep)": 2,
        "preemption save (hpc_ckpt)": 1,
    }
    size = (ckpts / "epoch0004-step0000020.ckpt").stat().st_size
    # 12 B/param; the file adds loop and callback state
    assert plan.bytes_each == pytest.approx(size, rel=0.25)


def test_finetune_keeps_best_and_last(tmp_path):
    run = tmp_path / "ft"
    finetune(compose_config("finetune", run, [*ARGS, "trainer.max_epochs=3"]))
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert len(names) == 2 and "last.ckpt" in names  # the best epoch (val/top1) and the last
    assert not (run / "checkpoints" / "keep").exists()


def test_plan_prints_checkpoint_size_and_disk_of_the_headline_recipe(tmp_path):
    cfg = compose_config(
        "pretrain", tmp_path, ["model=swinv2_base", "img_size=192", "trainer.max_epochs=800"]
    )
    c = planning.make_plan(cfg).checkpoint
    # SwinV2-B + AdamW, ~1.06 GB
    assert c.bytes_per_param == 12 and c.bytes_each == pytest.approx(1.06e9, rel=0.05)
    # newest 2, last, one every 100 of 800 epochs, a preemption save
    assert c.count == 2 + 1 + 8 + 1
    table = planning.format_plan(planning.make_plan(cfg))
    assert "| checkpoint size" in table and "| checkpoint disk" in table
    giant = planning.make_plan(
        compose_config("pretrain", tmp_path, ["model=swinv2_giant", "img_size=192"])
    ).checkpoint
    # ZeRO: +2 B bf16 weights
    assert giant.bytes_per_param == 14 and giant.bytes_each == pytest.approx(42e9, rel=0.05)


def _cli(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run(
        [sys.executable, "-m", "simmim_swinv2.pretrain", *overrides, f"hydra.run.dir={run}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_killed_run_resumes_exactly_from_its_wall_clock_save(tmp_path):
    """`checkpoint_time` (here every 0 minutes: after every step) writes last.ckpt inside the epoch;
    the process is then SIGKILLed mid-epoch 1 (nothing saves on SIGKILL), and the same command
    resumes from last.ckpt at the next batch: every later loss equals an uninterrupted run's."""
    args = [
        *ARGS,
        "trainer.max_epochs=3",
        "num_workers=2",
        "callbacks.checkpoint_time.train_time_interval.minutes=0",
    ]
    ref = tmp_path / "ref"
    pretrain(compose_config("pretrain", ref, args))
    run = tmp_path / "run"
    killed = _cli(
        run, *args, "+callbacks.kill._target_=helpers.callbacks.KillAt", "+callbacks.kill.step=6"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    # mid-epoch 1
    assert not last.is_symlink() and torch.load(last, weights_only=True)["global_step"] == 6
    resumed = _cli(run, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {last}" in resumed.stdout + resumed.stderr
    expected, got = losses(ref), losses(run)
    assert sorted(got) == sorted(expected) == list(range(12))
    for s in range(6, 12):
        assert got[s] == pytest.approx(expected[s], rel=1e-6, abs=1e-7), s


@pytest.mark.parametrize("entry", ["pretrain", "finetune"])
def test_a_run_shorter_than_its_warmup_trains_with_the_warmup_clamped(entry, tmp_path, caplog):
    """`trainer.max_steps=3` with a 5-epoch warmup (15 steps): the warmup spans the 3 steps, with a
    notice."""
    caplog.set_level("INFO")
    run = tmp_path / entry
    fn = pretrain if entry == "pretrain" else finetune
    fn(compose_config(entry, run, [*ARGS, "trainer.max_steps=3", "scheduler.warmup_epochs=5"]))
    assert (
        "warmup of 5 epochs (20 steps) is longer than the run (3 steps): clamped to 3 steps"
        in caplog.text
    )
    with open(run / "metrics.csv") as f:
        lrs = [
            float(v) for r in csv.DictReader(f) for k, v in r.items() if k.startswith("lr-") and v
        ][:3]
    assert lrs == sorted(lrs) and lrs[0] < lrs[-1]  # still warming up: rising at every step
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
