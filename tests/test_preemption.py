"""Preemption: a signal (SIGUSR1, what `sbatch --signal` sends) makes every rank save the same hpc
checkpoint at a batch boundary, requeue the SLURM job, and stop; the next run resumes from it and
trains on exactly as an uninterrupted run would. The SLURM controller is the only stand-in (a
`scontrol` script on PATH)."""

from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.config import FAST, compose_config

from simmim_swinv2.pretrain import pretrain
from simmim_swinv2.training.preemption import Preempted, Preemption

REPO = Path(__file__).resolve().parents[1]
ARGS = [
    *FAST,
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=4",
    "callbacks.reconstructions.every_n_steps=0",
]


@pytest.fixture
def scontrol(tmp_path, monkeypatch):
    """A fake `scontrol` that records its arguments; SLURM_JOB_ID set as inside a job."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls.txt"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    return calls


def losses(run_dir) -> dict[int, float]:
    """The last logged loss of each step (a resumed run logs its steps again)."""
    with open(Path(run_dir) / "metrics.csv") as f:
        return {
            int(r["step"]): float(r["train/loss_step"])
            for r in csv.DictReader(f)
            if r.get("train/loss_step")
        }


@pytest.fixture(scope="module")
def shard_data(tmp_path_factory) -> list[str]:
    """48 images in 3 shards: 6 batches of 8 per epoch, more than the 4 trained."""
    from helpers.data import write_class_folder

    from simmim_swinv2.data.sharding import make_shards

    root = tmp_path_factory.mktemp("shards")
    write_class_folder(root / "images", [24, 24], size=(72, 64))
    make_shards(root / "images", root / "tars", samples_per_shard=16, progress=False)
    return [
        "data=webdataset",
        f"data.urls=[{','.join(sorted(str(p) for p in (root / 'tars').glob('*.tar')))}]",
    ]


@pytest.mark.parametrize("source, step", [("digits", 5), ("shards", 6)])
def test_signal_saves_requeues_stops_and_the_resumed_run_matches(
    source, step, tmp_path, scontrol, caplog, request
):
    """Stopped mid-epoch 1 (2 or 3 of its 4 batches done; with 2 loader workers, so the shard
    workers skip unequal numbers of batches), the resumed run's later losses equal an uninterrupted
    run's."""
    caplog.set_level("INFO")
    args = [
        *ARGS,
        "num_workers=2",
        *(request.getfixturevalue("shard_data") if source == "shards" else []),
    ]
    ref = pretrain(compose_config("pretrain", tmp_path / "ref", args))
    run = tmp_path / "run"
    signalled = [
        *args,
        "+callbacks.signal._target_=helpers.callbacks.SignalAt",
        f"+callbacks.signal.step={step}",
    ]
    with pytest.raises(Preempted) as stop:
        pretrain(compose_config("pretrain", run, signalled))
    assert stop.value.code == 0
    assert max(losses(run)) == step  # the last step trained (and saved) was logged before the stop
    ckpt = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    # signalled as the step began, saved when that batch ended
    assert ckpt["global_step"] == step + 1
    assert scontrol.read_text().split() == ["requeue", "4242"]
    assert "SIGUSR1 received; saving" in caplog.text and "requeued SLURM job 4242" in caplog.text
    assert (
        not (run / "checkpoints" / "last.ckpt").is_file()
        or torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)[
            "global_step"
        ]
        <= step
    )
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handler restored after the run

    caplog.clear()
    resumed = pretrain(compose_config("pretrain", run, args))  # what the requeued job runs
    assert f"resuming from {run / 'hpc_ckpt_1.ckpt'}" in caplog.text
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 12
    # Lightning saw a training loader with a state (state_dict / load_state_dict), the one it does
    # not warn about when a run resumes mid-epoch: it kept that state in the checkpoint
    assert last["loops"]["fit_loop"]["state_dict"].get("combined_loader") == [{}]
    expected, got = losses(tmp_path / "ref"), losses(run)
    assert sorted(expected) == list(range(12))
    for s in range(step + 1, 12):  # trained after the resume, mid-epoch 1 onwards
        assert got[s] == pytest.approx(expected[s], rel=1e-6, abs=1e-7), s
    assert resumed["train/loss_epoch"] == pytest.approx(ref["train/loss_epoch"], rel=1e-6)
    assert not (run / "hpc_ckpt_1.ckpt").exists()  # superseded by the checkpoints written after it


def test_without_slurm_it_saves_and_stops_without_requeueing(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    caplog.set_level("INFO")
    signalled = [
        *ARGS,
        "trainer.max_epochs=1",
        "+callbacks.signal._target_=helpers.callbacks.SignalAt",
        "+callbacks.signal.step=1",
    ]
    with pytest.raises(Preempted):
        pretrain(compose_config("pretrain", tmp_path, signalled))
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 2
    assert (
        "the same command resumes from the checkpoint" in caplog.text
        and "requeued" not in caplog.text
    )

    # resumed, then stopped again at its last step
    again = [*signalled[:-1], "+callbacks.signal.step=3"]
    with pytest.raises(Preempted):
        pretrain(compose_config("pretrain", tmp_path, again))
    # the superseded one is gone
    assert [p.name for p in tmp_path.glob("hpc_ckpt_*")] == ["hpc_ckpt_2.ckpt"]
    assert torch.load(tmp_path / "hpc_ckpt_2.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"requeue": "sometimes"}, "requeue='sometimes'"),
        ({"signals": ["SIGNOPE"]}, "unknown signal"),
        ({"check_every_n_steps": 0}, "must be >= 1"),
    ],
)
def test_bad_preemption_settings_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Preemption(**kwargs)


@pytest.mark.slow
def test_signal_on_one_rank_only_stops_both_ranks_at_one_checkpoint(tmp_path):
    """Two DDP processes; SIGUSR1 reaches rank 1 alone. Saving from inside the handler (Lightning's
    auto_requeue) would meet rank 0 in a different collective and hang; here both stop after the
    same batch."""
    run = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("SLURM_JOB_ID", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simmim_swinv2.pretrain",
            *ARGS,
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            f"hydra.run.dir={run}",
            "+callbacks.signal._target_=helpers.callbacks.SignalAt",
            "+callbacks.signal.step=4",
            "+callbacks.signal.rank=1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "SIGUSR1 (on another rank) received; saving" in out, out[-3000:]
    assert [p.name for p in run.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 5
    assert not (run / "checkpoints" / "epoch0002-step0000012.ckpt").exists()  # it did stop


def _pretrain_process(run: Path, *overrides: str, log: Path, extra_env=None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        **(extra_env or {}),
    }
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would block the run
        return subprocess.Popen(
            [sys.executable, "-m", "simmim_swinv2.pretrain", *overrides, f"hydra.run.dir={run}"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )


def _wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_from_outside_saves_does_not_requeue_exits_143_and_the_run_resumes(
    tmp_path, scontrol
):
    """What SLURM preemption, `scancel` and Kubernetes send: a real SIGTERM to a real training
    process, from another process, mid-run (the run waits at step 5 until the signal is sent:
    `helpers.callbacks.WaitAt`). It saves once, does not requeue (the scheduler's call, even inside
    a SLURM job), and exits with 143 (128 + SIGTERM: a run to restart, not a finished one); the same
    command then resumes from the save and trains every remaining step once."""
    run, log, gate = tmp_path / "run", tmp_path / "log.txt", tmp_path / "gate"
    args = [
        *ARGS,
        "+callbacks.wait._target_=helpers.callbacks.WaitAt",
        f"+callbacks.wait.dirpath={gate}",
        "+callbacks.wait.steps=[5]",
    ]
    proc = _pretrain_process(run, *args, log=log, extra_env={"SLURM_JOB_ID": "4242"})
    _wait_for(gate / "ready_5_0", proc, log)
    proc.send_signal(signal.SIGTERM)
    (gate / "go_5").touch()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    out = log.read_text()
    assert "SIGTERM received; saving" in out and "requeued" not in out
    assert not scontrol.exists()  # scontrol never ran
    # after the signalled step
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 6

    proc = _pretrain_process(run, *args, log=log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    assert f"resuming from {run / 'hpc_ckpt_1.ckpt'}" in log.read_text()
    # every step trained; the resumed ones from step 6 on
    assert sorted(losses(run)) == list(range(12))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    assert not (run / "hpc_ckpt_1.ckpt").exists()  # superseded by the later checkpoints


@pytest.mark.slow
def test_sigterm_on_rank_0_only_stops_both_ddp_ranks_at_one_checkpoint(tmp_path):
    """Kubernetes signals the container's first process: under Lightning's launcher that is rank 0
    alone. Both ranks still save one checkpoint together and exit with 143."""
    run = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("SLURM_JOB_ID", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simmim_swinv2.pretrain",
            *ARGS,
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            f"hydra.run.dir={run}",
            "+callbacks.signal._target_=helpers.callbacks.SignalAt",
            "+callbacks.signal.step=4",
            "+callbacks.signal.rank=0",
            "+callbacks.signal.signal=SIGTERM",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "SIGTERM received; saving" in out, out[-3000:]
    assert [p.name for p in run.glob("hpc_ckpt_*.ckpt")] == ["hpc_ckpt_1.ckpt"]
    assert torch.load(run / "hpc_ckpt_1.ckpt", weights_only=True)["global_step"] == 5
