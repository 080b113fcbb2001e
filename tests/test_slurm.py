"""slurm/pretrain.sh on a real one-node SLURM (scripts/setup_slurm.sh starts one on localhost): a 2-task DDP job on
the CPU, and SIGUSR1 mid-run -> both ranks save hpc_ckpt together (the Preemption callback), the job is requeued,
and the requeued job resumes from it.
Skipped, with the reason, where no SLURM controller answers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Shrink the script's cluster defaults (8 GPUs/node, 8 CPUs/task) to this machine: 2 CPU tasks, no GPU.
LOCAL = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]


def _slurm_reason() -> str | None:
    if not shutil.which("sbatch"):
        return "no sbatch on PATH (install and start a local SLURM: sudo scripts/setup_slurm.sh)"
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if r.returncode or not re.search(r"idle|mixed|allocated", r.stdout):
        return f"no SLURM node up (sinfo: {(r.stdout + r.stderr).strip()[:200]!r}); run scripts/setup_slurm.sh"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_slurm_reason() is not None, reason=str(_slurm_reason()))]


def sbatch(tmp_path, *overrides, wait=False, env=None) -> str:
    (tmp_path / "logs").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SIMMIM_OUTPUT_ROOT": str(tmp_path), "WANDB_MODE": "offline", **(env or {})}
    cmd = ["sbatch", "--parsable", *LOCAL, f"--output={tmp_path}/logs/%x-%j.out", *(["--wait"] if wait else []),
           "slurm/pretrain.sh", "debug=fast", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
           *overrides]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().split(";")[0]


def job_state(job: str) -> str:
    r = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    m = re.search(r"JobState=(\w+)", r.stdout)
    return m.group(1) if m else "GONE"


def test_sbatch_pretrain_two_tasks_ddp(tmp_path):
    job = sbatch(tmp_path, wait=True)
    run = tmp_path / "slurm" / f"simmim-pretrain_{job}"
    log = (tmp_path / "logs" / f"simmim-pretrain-{job}.out").read_text()
    assert "global batch 16 = 8 per device x 2 devices" in log, log[-3000:]
    assert f"Preemption: on SIGUSR1: save hpc_ckpt_<n>.ckpt, requeue SLURM job {job}" in log
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()


def test_sigusr1_saves_requeues_and_resumes(tmp_path):
    job = sbatch(tmp_path, "trainer.max_epochs=3", "trainer.limit_train_batches=60", "trainer.log_every_n_steps=5")
    run = tmp_path / "slurm" / f"simmim-pretrain_{job}"
    log = tmp_path / "logs" / f"simmim-pretrain-{job}.out"
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.ckpt").is_file():  # mid-run: after epoch 0, before the end
        assert time.time() < deadline and job_state(job) in ("PENDING", "RUNNING"), log.read_text()[-3000:]
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)  # what --signal=SIGUSR1@120 sends
    deadline = time.time() + 600
    while job_state(job) not in ("COMPLETED", "FAILED", "CANCELLED", "GONE"):
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(1)
    text = log.read_text()  # --open-mode=append: both runs of the job in one log
    assert job_state(job) == "COMPLETED", text[-3000:]
    saved = re.search(r"Preemption: SIGUSR1 received; saving (\S+) at step (\d+)", text)
    assert saved and "Preemption: requeued SLURM job" in text, text[-3000:]
    assert "(restart 1)" in text, text[-3000:]
    assert f"resuming from {saved[1]}" in text, text[-3000:]
    assert not Path(saved[1]).exists()  # superseded (removed) once the resumed job wrote its own checkpoints
    assert 60 <= int(saved[2]) < 180  # saved mid-run, after the first epoch
    import torch

    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 180 and last["epoch"] == 2  # 3 epochs of 60 steps, finished


def test_scancel_sigterm_saves_within_killwait_without_requeue_and_a_resubmission_resumes(tmp_path):
    """`scancel` (like preemption) sends SIGTERM, then SIGKILL after KillWait (30 s here): both ranks save in time,
    the job ends CANCELLED and is not requeued; resubmitted with the same run dir, it resumes from that save."""
    run = tmp_path / "run"
    args = ["trainer.max_epochs=2", "trainer.limit_train_batches=40", "trainer.log_every_n_steps=5"]
    job = sbatch(tmp_path, *args, env={"SIMMIM_RUN_DIR": str(run)})
    log = tmp_path / "logs" / f"simmim-pretrain-{job}.out"
    deadline = time.time() + 300
    while not (run / "checkpoints" / "last.ckpt").exists():  # after epoch 0, before the end
        assert time.time() < deadline and job_state(job) in ("PENDING", "RUNNING"), log.read_text()[-3000:]
        time.sleep(0.5)
    subprocess.run(["scancel", job], check=True)
    deadline = time.time() + 120
    while job_state(job) not in ("CANCELLED", "COMPLETED", "FAILED", "GONE"):
        assert time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    text = log.read_text()
    saved = re.search(r"Preemption: SIGTERM received; saving (\S+) at step (\d+)", text)
    assert saved and Path(saved[1]).is_file(), text[-3000:]
    assert "requeued" not in text and job_state(job) in ("CANCELLED", "GONE"), text[-3000:]

    again = sbatch(tmp_path, *args, wait=True, env={"SIMMIM_RUN_DIR": str(run)})
    text = (tmp_path / "logs" / f"simmim-pretrain-{again}.out").read_text()
    assert f"resuming from {saved[1]}" in text, text[-3000:]
    import torch

    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 80
