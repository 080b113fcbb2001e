"""slurm/pretrain.sh on a real one-node SLURM (scripts/setup_slurm.sh starts one on localhost): one
2-task DDP job on the CPU through every way a cluster stops it. SIGUSR1 mid-run (what
`--signal=SIGUSR1@120` sends before the time limit) -> both ranks save hpc_ckpt together (the
Preemption callback), the job is requeued, and the requeued job resumes from it; `scancel` mid-run
(SIGTERM, SIGKILL after KillWait) -> both ranks save in time, the job ends CANCELLED and is not
requeued; submitted again with the same run dir, it resumes from that save and finishes. Skipped,
with the reason, where no SLURM controller answers."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Shrink the script's cluster defaults (8 GPUs/node, 8 CPUs/task) to this machine: 2 CPU tasks, no
# GPU.
LOCAL = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]


def _slurm_reason() -> str | None:
    if not shutil.which("sbatch"):
        return "no sbatch on PATH (install and start a local SLURM: sudo scripts/setup_slurm.sh)"
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if r.returncode or not re.search(r"idle|mixed|allocated", r.stdout):
        return (
            f"no SLURM node up (sinfo: {(r.stdout + r.stderr).strip()[:200]!r}); run "
            "scripts/setup_slurm.sh"
        )
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_slurm_reason() is not None, reason=str(_slurm_reason())),
]


def sbatch(tmp_path, *overrides, wait=False, env=None) -> str:
    (tmp_path / "logs").mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SIMMIM_OUTPUT_ROOT": str(tmp_path),
        "WANDB_MODE": "offline",
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    cmd = [
        "sbatch",
        "--parsable",
        *LOCAL,
        f"--output={tmp_path}/logs/%x-%j.out",
        *(["--wait"] if wait else []),
        "slurm/pretrain.sh",
        "debug=fast",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
        *overrides,
    ]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip().split(";")[0]


def job_state(job: str) -> str:
    r = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    m = re.search(r"JobState=(\w+)", r.stdout)
    return m.group(1) if m else "GONE"


def _wait(what, job: str, log: Path, timeout: float = 300, states=("PENDING", "RUNNING")) -> None:
    """Until `what()` holds, as long as the job is in one of `states`."""
    deadline = time.time() + timeout
    while not what():
        text = log.read_text() if log.exists() else ""
        assert time.time() < deadline and job_state(job) in states, text[-3000:]
        time.sleep(0.2)


def _release_requeued(job: str, log: Path) -> None:
    """Slurm holds a requeued job for ~2 minutes (Reason=BeginTime, slurm/README.md); the test lets
    it start at once (`scontrol update StartTime=now`): that wait is Slurm's own, it says nothing
    about the run."""

    def held() -> bool:
        shown = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True
        ).stdout
        return "JobState=PENDING" in shown and "Reason=BeginTime" in shown

    _wait(held, job, log, states=("RUNNING", "COMPLETING", "PENDING", "REQUEUED", "REQUEUE_HOLD"))
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)


def _gate(gate: Path, step: int) -> Callable[[], bool]:
    return lambda: all((gate / f"ready_{step}_{rank}").exists() for rank in (0, 1))


def test_a_job_is_requeued_on_sigusr1_cancelled_on_sigterm_and_resumes_each_time(tmp_path):
    """3 epochs of 4 steps on 2 tasks; the ranks wait at steps 5 and 9 (`helpers.callbacks.WaitAt`)
    until the test has signalled the job, so each signal lands mid-run at a known step on a machine
    of any speed."""
    run, gate = tmp_path / "run", tmp_path / "gate"
    args = [
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "trainer.log_every_n_steps=1",
        "callbacks.reconstructions.every_n_steps=0",
        "callbacks.progress_log.every_n_steps=2",
        "+callbacks.wait._target_=helpers.callbacks.WaitAt",
        f"+callbacks.wait.dirpath={gate}",
        "+callbacks.wait.steps=[5,9]",
    ]
    env = {"SIMMIM_RUN_DIR": str(run)}
    job = sbatch(tmp_path, *args, env=env)
    log = tmp_path / "logs" / f"simmim-pretrain-{job}.out"

    # SIGUSR1 at step 5: saved after it, requeued; the requeued job resumes and waits at step 9
    _wait(_gate(gate, 5), job, log)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    (gate / "go_5").touch()
    _release_requeued(job, log)
    _wait(
        _gate(gate, 9),
        job,
        log,
        states=("PENDING", "RUNNING", "REQUEUED", "COMPLETING", "REQUEUE_HOLD"),
    )
    text = log.read_text()  # --open-mode=append: every run of the job in one log
    assert "global batch 16 = 8 per device x 2 devices" in text, text[-3000:]
    assert f"Preemption: on SIGUSR1: save hpc_ckpt_<n>.ckpt, requeue SLURM job {job}" in text, text[
        -3000:
    ]
    first = re.search(r"Preemption: SIGUSR1 received; saving (\S+) at step (\d+)", text)
    assert first and int(first[2]) == 6 and "Preemption: requeued SLURM job" in text, text[-3000:]
    assert "(restart 1)" in text and f"resuming from {first[1]}" in text, text[-3000:]

    # scancel at step 9: SIGTERM, both ranks save within KillWait, CANCELLED, not requeued
    subprocess.run(["scancel", job], check=True)
    (gate / "go_9").touch()
    _wait(
        lambda: job_state(job) in ("CANCELLED", "COMPLETED", "FAILED", "GONE"),
        job,
        log,
        timeout=120,
        states=("RUNNING", "COMPLETING", "CANCELLED"),
    )
    text = log.read_text()
    second = re.search(r"Preemption: SIGTERM received; saving (\S+) at step (\d+)", text)
    assert second and int(second[2]) == 10 and Path(second[1]).is_file(), text[-3000:]
    assert job_state(job) in ("CANCELLED", "GONE") and text.count("requeued SLURM job") == 1, text[
        -3000:
    ]
    import torch

    # the SIGTERM save
    assert torch.load(second[1], map_location="cpu", weights_only=True)["global_step"] == 10

    # submitted again with the same run dir: resumes from the SIGTERM save and finishes
    again = sbatch(tmp_path, *args, wait=True, env=env)
    text = (tmp_path / "logs" / f"simmim-pretrain-{again}.out").read_text()
    assert f"resuming from {second[1]}" in text, text[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 12 and last["epoch"] == 2, text[-3000:]
    assert (run / "config.yaml").is_file()
    # the log is no terminal: progress as lines (training/progress.py), the ETA from the resume
    line = r"epoch 2/2 \| step 12/12 \(100.0%\) \| loss [\d.]+ \| lr \S+ \| \d+ img/s \| eta 00:00"
    assert re.search(line, text) and "epoch 2/2 done | step 12/12 (100.0%) | val/" in text, text[
        -3000:
    ]
