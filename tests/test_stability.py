"""A run survives its own numerics (`callbacks.stability`): a step with a non-finite loss or
gradient is skipped on every rank (one process, two DDP processes, ZeRO-2), and a run resumed from
the checkpoint a kill leaves goes on past the skip exactly; a streak of skips rolls back to the last
good checkpoint, and a run that cannot get past stops with a report; no checkpoint ever holds a
non-finite weight. Per-stage numerics are logged at the log steps. The drills
(`inject_nonfinite_*`) are how."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import FAST, compose_config

from simmim_swinv2.pretrain import pretrain
from simmim_swinv2.training.stability import (
    Diverged,
    NonFiniteWeightsError,
    SpikeDetector,
    Stability,
)

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# 4 steps per epoch; no validation, kNN or pictures: only the training steps matter here
ARGS = [
    *FAST,
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=0",
    "callbacks.knn.every_n_epochs=0",
    "callbacks.reconstructions.every_n_steps=0",
]
SKIP_2_AND_5 = [  # a NaN loss at step 2 (the drill), a NaN gradient at step 5; last.ckpt every step
    *ARGS,
    "callbacks.stability.inject_nonfinite_at=[2]",
    "+callbacks.grad._target_=helpers.callbacks.PoisonGradAt",
    "+callbacks.grad.step=5",
    "callbacks.checkpoint_time.train_time_interval.minutes=0",
]


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def losses(run: Path) -> dict[int, float]:
    """The last logged loss of each step (a resumed run logs its steps again); NaN at a skipped
    step."""
    return {
        int(r["step"]): float(r["train/loss_step"])
        for r in metrics(run)
        if r.get("train/loss_step")
    }


def report(run: Path) -> list[dict]:
    with open(run / "stability.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def adam_steps(ckpt: dict) -> set[int]:
    """The step counts of Adam's state: how many optimizer steps were applied to each parameter."""
    return {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}


def _cli(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
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


def test_spike_rule_is_lightnings_spike_detection():
    """The same verdicts as Lightning's SpikeDetection (its spike test and its statistics update,
    called as its `on_train_batch_end` calls them) on a sequence with a slow drift, an improvement,
    spikes that pass one tolerance but not the other, and a NaN."""
    from lightning.fabric.utilities.spike import SpikeDetection

    values = [1.0, 0.9, 0.95, 0.9, 3.5, 0.85, 0.8, 2.0, 2.6, 0.7, math.nan, 0.75, 5.0, 0.6]
    for atol, rtol in ((None, 2.0), (1.5, 2.0), (0.5, None), (2.0, 1.0)):
        theirs, ours = (
            SpikeDetection(window=3, warmup=2, atol=atol, rtol=rtol),
            SpikeDetector(3, 2, atol, rtol),
        )
        expected, got = [], []
        for i, v in enumerate(values):
            spike = bool(i >= 2 and theirs._is_spike(torch.tensor(v)))
            if not spike:
                theirs._update_stats(torch.tensor(v))
            expected.append(spike)
            got.append(ours.is_spike(v))
            if not got[-1]:
                ours.accept(v)
        assert got == expected, (atol, rtol)
        assert any(got) and not all(got)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"lr_scale_after_rollback": 0.0}, "lr_scale_after_rollback=0.0"),
        ({"max_rollbacks": -1}, "max_rollbacks=-1"),
        ({"spike_window": 0}, "window=0"),
    ],
)
def test_bad_stability_settings_fail_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Stability(**kwargs)


@pytest.fixture(scope="module")
def skipped_run(tmp_path_factory):
    """One run of 8 steps: the loss made NaN at step 2 (the drill), one gradient made NaN at step 5
    with a finite loss; last.ckpt saved after every step, and a copy of the one written after step 4
    (what a kill at step 5 would resume from)."""
    run = tmp_path_factory.mktemp("skip") / "run"
    weights, resume_from = run.parent / "weights", run.parent / "after_step4.ckpt"
    result = pretrain(
        compose_config(
            "pretrain",
            run,
            [
                *SKIP_2_AND_5,
                "+callbacks.w._target_=helpers.callbacks.WeightsAt",
                f"+callbacks.w.dirpath={weights}",
                "+callbacks.w.steps=[2,3,5,6]",
                "+callbacks.copy._target_=helpers.callbacks.CopyLastAt",
                "+callbacks.copy.step=5",
                f"+callbacks.copy.path={resume_from}",
            ],
        )
    )
    return run, result, weights, resume_from


def test_a_bad_step_is_skipped_and_the_run_finishes(skipped_run):
    """A NaN loss (step 2) and a NaN gradient under a finite loss (step 5): both steps leave every
    weight and Adam's step count as they were, the run trains the other 6, and the report lists
    both with their reason, gradient norm and the 8 samples of the batch."""
    run, result, weights, _ = skipped_run
    assert math.isfinite(result["train/loss_epoch"])
    got = losses(run)
    assert sorted(got) == list(range(8)) and math.isnan(got[2])
    assert all(math.isfinite(v) for s, v in got.items() if s != 2)
    for step in (2, 5):
        before, after = (
            torch.load(weights / f"step{s}_rank0.pt", weights_only=True) for s in (step, step + 1)
        )
        for name in before:  # the skipped step left every weight as it was
            torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 8 and adam_steps(last) == {6}  # 8 steps, 6 applied
    nan_loss, nan_grad = report(run)
    assert (nan_loss["step"], nan_loss["event"], nan_loss["rank"]) == ("2", "skip", "0")
    assert nan_loss["loss"] == "nan" and nan_loss["reason"].startswith("non-finite loss on 1 of 1")
    assert (nan_grad["step"], nan_grad["reason"]) == ("5", "non-finite gradient norm")
    assert math.isfinite(float(nan_grad["loss"])) and nan_grad["grad_norm"] == "nan"
    assert all(len(r["samples"].split(",")) == 8 for r in (nan_loss, nan_grad))
    skipped = [
        float(r["train/skipped_steps"]) for r in metrics(run) if r.get("train/skipped_steps")
    ]
    assert skipped[:2] == [0.0, 0.0] and skipped[-1] == 2.0


def test_per_stage_numerics_are_logged_at_the_log_steps(skipped_run):
    """Activation RMS, gradient norms and logit scales (10 at initialisation, below the clamp at
    100) of each of the debug model's 4 stages, at every log step (log_every_n_steps=1 in
    debug=fast); NaN gradients at the NaN-loss skip."""
    run = skipped_run[0]
    rows = {int(r["step"]): r for r in metrics(run) if r.get("train/act_rms/stage0")}
    assert sorted(rows) == list(range(8))
    for step, r in rows.items():
        for i in range(4):
            assert float(r[f"train/act_rms/stage{i}"]) > 0
            mean = float(r[f"train/logit_scale_mean/stage{i}"])
            top = float(r[f"train/logit_scale_max/stage{i}"])
            assert 9.9 < mean <= top < 10.1  # a few small Adam steps from log(10)
            norm = float(r[f"train/grad_norm/stage{i}"])
            assert math.isnan(norm) if step == 2 else 0 < norm < math.inf


def test_a_run_resumed_after_a_skip_has_the_same_losses(skipped_run, tmp_path):
    """Resumed from the last.ckpt written after step 4 (what a kill -9 at step 5 leaves; a real
    SIGKILL and restart of the same command: tests/test_checkpoints.py) with the same overrides: the
    step-2 skip is neither repeated nor lost (its count comes back with the checkpoint), step 5's
    bad gradient is skipped again, and steps 5-7 have the uninterrupted run's losses."""
    ref, _, _, resume_from = skipped_run
    run = tmp_path / "run"
    pretrain(compose_config("pretrain", run, [*SKIP_2_AND_5, f"resume={resume_from}"]))
    expected, got = losses(ref), losses(run)
    assert sorted(got) == [5, 6, 7]
    for s in got:  # bitwise in practice; a float tolerance for a different reduction order
        assert got[s] == pytest.approx(expected[s], rel=1e-6, abs=1e-7), s
    assert [(r["step"], r["reason"]) for r in report(run)] == [("5", "non-finite gradient norm")]
    counts = [r["train/skipped_steps"] for r in metrics(run) if r.get("train/skipped_steps")]
    assert float(counts[0]) == 2.0 and float(counts[-1]) == 2.0


def test_a_loss_spike_is_skipped_like_a_non_finite_loss(tmp_path, monkeypatch):
    """A finite loss 10x the others at step 4 (the spike rule set to window 2, warm-up 2, rtol 1: a
    loss at least twice the running mean; the debug model's loss moves by a few % a step): that
    step alone is skipped, and the spike is not taken into the running mean."""
    from simmim_swinv2.training.base import TrainTask

    real = TrainTask.check_loss

    def spiking(self, loss):
        return real(self, loss * 10 if self.global_step == 4 else loss)

    monkeypatch.setattr(TrainTask, "check_loss", spiking)
    run = tmp_path / "run"
    spikes = ["window=2", "warmup=2", "atol=null", "rtol=1.0"]
    pretrain(
        compose_config(
            "pretrain", run, [*ARGS, *(f"callbacks.stability.spike_{s}" for s in spikes)]
        )
    )
    [row] = report(run)
    assert (row["step"], row["event"]) == ("4", "skip") and row["reason"].startswith("loss spike")
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert adam_steps(last) == {7} and last["callbacks"]["Stability"]["skipped"] == 1
    assert max(last["callbacks"]["Stability"]["spikes"]["values"]) < float(row["loss"]) / 5


@pytest.mark.slow
def test_nan_on_one_ddp_rank_is_skipped_by_both_and_their_weights_stay_equal(tmp_path):
    """Two DDP processes (gloo); the loss is NaN on rank 1 only at step 2: both skip it (one
    all-reduce), neither applies it, and they end with identical weights that trained the other 7
    steps."""
    run, w = tmp_path / "run", tmp_path / "weights"
    result = _cli(
        run,
        *ARGS,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "callbacks.stability.inject_nonfinite_at=[2]",
        "callbacks.stability.inject_ranks=[1]",
        "+callbacks.dump._target_=helpers.callbacks.SaveFinalWeights",
        f"+callbacks.dump.dirpath={w}",
        "+callbacks.w._target_=helpers.callbacks.WeightsAt",
        f"+callbacks.w.dirpath={w}",
        "+callbacks.w.steps=[2,3]",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    for rank in (0, 1):
        before, after = (
            torch.load(w / f"step{s}_rank{rank}.pt", weights_only=True) for s in (2, 3)
        )
        assert all(torch.equal(after[n], before[n]) for n in before), rank
    w0, w1 = (torch.load(w / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in w0:
        torch.testing.assert_close(w0[name], w1[name], rtol=0, atol=0, msg=name)
    rows = report(run)
    assert [(r["step"], r["rank"]) for r in rows] == [
        ("2", "0"),
        ("2", "1"),
    ]  # one skip, both ranks' samples
    assert math.isfinite(float(rows[0]["loss"])) and rows[1]["loss"] == "nan"
    assert rows[0]["reason"].startswith("non-finite loss on 1 of 2 ranks")
    assert adam_steps(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)) == {7}


@pytest.mark.slow
def test_zero2_skips_the_step_deepspeed_owns(tmp_path):
    """ZeRO-2 (one CPU process): DeepSpeed steps its own optimizer over partitioned gradients; the
    drill's step is still skipped — the fp32 master weights before and after it are equal, and
    DeepSpeed counted it."""
    from simmim_swinv2.distributed.zero import zero_model_states

    run, w = tmp_path / "run", tmp_path / "weights"
    result = _cli(
        run,
        *ARGS,
        "trainer=deepspeed_zero2",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy",
        "trainer.max_epochs=1",
        "callbacks.stability.inject_nonfinite_at=[2]",
        "+callbacks.w._target_=helpers.callbacks.WeightsAt",
        f"+callbacks.w.dirpath={w}",
        "+callbacks.w.steps=[2,3]",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    before, after = (torch.load(w / f"step{s}_rank0.pt", weights_only=True) for s in (2, 3))
    assert all(torch.equal(after[n], before[n]) for n in before)
    states = zero_model_states(run / "checkpoints" / "last.ckpt")
    assert states["skipped_steps"] == 1 and states["global_step"] == 4
    assert [r["step"] for r in report(run)] == ["2"]


def test_persistent_failure_rolls_back_then_stops_with_a_report(tmp_path):
    """NaN from step 3 on, at most 1 skip in a row and 2 rollbacks: steps 3, 4 skipped -> rollback
    to the epoch-0 checkpoint (step 3); 5, 6 -> rollback to the first rollback's save; 7, 8 -> stop
    (`Diverged`: exit status 1 with the report), bounded. The rollback saves hold the good weights
    and a halved LR; no checkpoint holds a non-finite weight; starting the run again stops at once
    instead of replaying the failure."""
    run = tmp_path / "run"
    args = [
        *ARGS,
        "trainer.limit_train_batches=3",
        "trainer.max_epochs=10",
        "callbacks.stability.inject_nonfinite_from=3",
        "callbacks.stability.max_consecutive_skips=1",
        "callbacks.stability.max_rollbacks=2",
    ]
    with pytest.raises(Diverged) as stop:
        pretrain(compose_config("pretrain", run, args))
    assert "training stopped at step 8" in str(stop.value.code) and "2 rollbacks" in str(
        stop.value.code
    )
    rows = [(r["step"], r["event"]) for r in report(run)]
    assert rows == [
        ("3", "skip"),
        ("4", "skip"),
        ("4", "rollback"),
        ("5", "skip"),
        ("6", "skip"),
        ("6", "rollback"),
        ("7", "skip"),
        ("8", "skip"),
        ("8", "stop"),
    ]
    ckpts = run / "checkpoints"
    epoch0 = torch.load(ckpts / "epoch0000-step0000003.ckpt", weights_only=True)
    save = torch.load(
        ckpts / "rollback-step0000007.ckpt", weights_only=True
    )  # the second rollback's
    assert (ckpts / "last.ckpt").resolve() == (
        ckpts / "rollback-step0000007.ckpt"
    ).resolve()  # resume=auto's
    assert not (ckpts / "rollback-step0000005.ckpt").exists()  # superseded by the second
    for name, value in epoch0["state_dict"].items():
        torch.testing.assert_close(save["state_dict"][name], value, rtol=0, atol=0, msg=name)
    scale = [
        b / a
        for a, b in zip(
            epoch0["lr_schedulers"][0]["base_lrs"], save["lr_schedulers"][0]["base_lrs"]
        )
    ]
    assert scale == pytest.approx([0.25, 0.25])  # x0.5 per rollback
    assert save["global_step"] == 7 and save["stability"]["good"]
    for path in ckpts.glob("*.ckpt"):
        sd = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point()), path

    with pytest.raises(Diverged, match="resume_after_stop=true"):  # a requeue does not replay it
        pretrain(compose_config("pretrain", run, args))
    assert len(report(run)) == len(rows)


def test_a_checkpoint_with_a_non_finite_weight_is_never_written(tmp_path):
    """A weight made NaN after step 1's optimizer step: the save after that step (every step here)
    is refused, the previous last.ckpt stays."""
    run = tmp_path / "run"
    args = [
        *ARGS,
        "trainer.max_epochs=1",
        "callbacks.checkpoint_time.train_time_interval.minutes=0",
        "+callbacks.poison._target_=helpers.callbacks.PoisonWeightsAt",
        "+callbacks.poison.step=1",
    ]
    with pytest.raises(NonFiniteWeightsError, match="at step 2"):
        pretrain(compose_config("pretrain", run, args))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
