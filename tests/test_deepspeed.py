"""DeepSpeed ZeRO on the CPU, two processes (Lightning's launcher, gloo): train, save sharded
checkpoints, resume, consolidate to one fp32 safetensors file equal to the live fp32 master weights,
and load that file where fine-tuning and the transformers export read weights.

The CPU path is `simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy` (ours, on the CPU, which
Lightning refuses); the `conf/trainer/deepspeed_*.yaml` configs are otherwise used as they are. The
offload case JIT-builds DeepSpeedCPUAdam on first use (~80-240 s on 2 cores, then cached in
~/.cache/torch_extensions).
    pytest tests/test_deepspeed.py -m slow
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import torch
from helpers.config import FAST, run_cli
from helpers.zero import FINAL, check_consolidated
from lightning.pytorch.callbacks import Callback

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
CPU = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy",
]
NO_PIN = [
    f"trainer.strategy.config.zero_optimization.{k}.pin_memory=false"  # pinning needs CUDA
    for k in ("offload_optimizer", "offload_param")
]


class TrainingState(Callback):
    """Test-only: every rank joins in gathering the fp32 master weights (and, with `moments`, the
    Adam moments; DeepSpeed 0.19 links those of a second parameter group only after a universal
    load) when training starts (after a resume restored them) or ends; rank 0 saves them, with the
    step, to `path`."""

    def __init__(self, path: str, when: str = "end", moments: bool = False) -> None:
        self.path, self.when, self.moments = path, when, moments

    def dump(self, trainer, pl_module) -> None:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        state = {"step": torch.tensor(trainer.global_step)}
        for name, p in pl_module.model.named_parameters():
            state[name] = safe_get_full_fp32_param(p).detach().cpu().clone()
            for key in ("exp_avg", "exp_avg_sq") if self.moments else ():
                state[f"{name}/{key}"] = (
                    safe_get_full_optimizer_state(p, key).detach().cpu().clone()
                )
        if trainer.is_global_zero:
            torch.save(state, self.path)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.when == "start":
            self.dump(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.when == "end":
            self.dump(trainer, pl_module)


def _run(run_dir: Path, trainer_cfg: str, *extra: str):
    env = {
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "DS_ACCELERATOR": "cpu",
    }
    result = run_cli(
        "simmim_swinv2.pretrain",
        *FAST,
        f"trainer={trainer_cfg}",
        *CPU,
        *extra,
        f"hydra.run.dir={run_dir}",
        env=env,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    return out


def _losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv") as f:
        return [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


def test_zero_train_save_resume_consolidate(tmp_path):
    """ZeRO-3 with the optimizer and the parameters offloaded: train, save sharded, resume,
    consolidate. The same checks run on ZeRO-2's resumed run (the next test) and on the plain ZeRO-3
    run of the kNN monitor's test (tests/test_knn.py); ZeRO-3's checkpoint layout is the same with
    or without offload."""
    from simmim_swinv2.weights import find_resume_checkpoint

    run, trainer_cfg, extra = tmp_path / "run", "deepspeed_zero3_offload", NO_PIN
    out = _run(run, trainer_cfg, "trainer.max_epochs=1", *extra)
    assert "global batch 16 = 8 per device x 2 devices" in out and "CPUDeepSpeedStrategy" in out
    assert (
        "ZeRO-Offload: optimizer AdamW -> DeepSpeedCPUAdam (adamw_mode=True), the same 2 "
        "parameter groups"
    ) in out
    ckpt = find_resume_checkpoint(run)
    # sharded: one directory per checkpoint
    assert ckpt == run / "checkpoints" / "last.ckpt" and ckpt.is_dir()

    # resume=auto on the same run dir: continues from last.ckpt/ for the second epoch
    final = tmp_path / "final_fp32.pt"
    out = _run(
        run, trainer_cfg, "trainer.max_epochs=2", *extra, *FINAL, f"+callbacks.final.path={final}"
    )
    assert f"resuming from {ckpt}" in out
    losses = _losses(run)
    assert len(losses) == 6 and all(l == l for l in losses)  # 3 steps per epoch, none repeated
    check_consolidated(run, final, tmp_path)


def test_zero_preemption_resume_and_finetune(tmp_path):
    """ZeRO-2 on two processes: SIGUSR1 on rank 1 alone mid-epoch -> both ranks write one sharded
    hpc_ckpt directory and stop; the next start resumes from it and finishes, and its checkpoint
    consolidates as ZeRO-3's do (`helpers.zero.check_consolidated`); fine-tuning under ZeRO-2
    (layer-decay parameter groups) starts from that run."""
    from simmim_swinv2.distributed.zero import is_zero_checkpoint
    from simmim_swinv2.weights import find_resume_checkpoint

    run = tmp_path / "run"
    out = _run(
        run,
        "deepspeed_zero2",
        "+callbacks.signal._target_=helpers.callbacks.SignalAt",
        "+callbacks.signal.step=3",
        "+callbacks.signal.rank=1",
    )
    assert "Preemption: SIGUSR1 (on another rank) received; saving" in out, out[-3000:]
    hpc = run / "hpc_ckpt_1.ckpt"
    assert is_zero_checkpoint(hpc) and find_resume_checkpoint(run) == hpc
    assert len(_losses(run)) < 6  # stopped early

    final = tmp_path / "final_fp32.pt"
    out = _run(run, "deepspeed_zero2", *FINAL, f"+callbacks.final.path={final}")
    assert f"resuming from {hpc}" in out and "global batch 16 = 8 per device x 2 devices" in out
    with open(run / "metrics.csv") as f:
        steps = {int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")}
    assert steps == set(range(6))  # every step trained once, the resumed ones included
    check_consolidated(run, final, tmp_path)

    env = {
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "DS_ACCELERATOR": "cpu",
    }
    result = run_cli(
        "simmim_swinv2.finetune",
        *FAST,
        "trainer=deepspeed_zero2",
        *CPU,
        f"pretrained={run}",
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'ft'}",
        env=env,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "validation: top-1" in result.stdout and "CPUDeepSpeedStrategy" in out


def test_reshard_resumes_on_another_world_size_with_the_same_state(tmp_path):
    """Two processes train an epoch; `simmim_swinv2.reshard` makes the run's checkpoint universal;
    one process resumes it (resume=auto) and starts from exactly the fp32 weights and Adam moments
    the two ended with."""
    from simmim_swinv2.distributed.zero import is_universal_checkpoint, zero_checkpoint_world_size
    from simmim_swinv2.weights import find_resume_checkpoint

    run, trainer_cfg = tmp_path / "run", "deepspeed_zero2"
    _run(
        run,
        trainer_cfg,
        "trainer.max_epochs=1",
        "+callbacks.state._target_=test_deepspeed.TrainingState",
        f"+callbacks.state.path={tmp_path / 'end.pt'}",
    )
    # the command, 2 workers
    result = run_cli("simmim_swinv2.reshard", str(run), env={"DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    universal = run / "checkpoints" / "last-universal.ckpt"
    assert f"-> {universal}" in result.stdout and is_universal_checkpoint(universal)
    assert find_resume_checkpoint(run) == universal  # the newest: resume=auto takes it

    out = _run(
        run,
        trainer_cfg,
        "trainer.devices=1",
        "trainer.max_epochs=2",
        "+callbacks.state._target_=test_deepspeed.TrainingState",
        f"+callbacks.state.path={tmp_path / 'start.pt'}",
        "+callbacks.state.when=start",
        "+callbacks.state.moments=true",
    )
    assert f"resuming from {universal}" in out and "8 per device x 1 devices" in out
    end, start = (torch.load(tmp_path / f, weights_only=True) for f in ("end.pt", "start.pt"))
    assert int(end["step"]) == int(start["step"]) == 3
    for name in end:  # the fp32 master weights the two processes ended with
        torch.testing.assert_close(start[name], end[name], rtol=0, atol=0, msg=name)
    tag = universal / (universal / "latest_universal").read_text()
    # the Adam moments DeepSpeed's converter took out of the two shards
    for key, value in start.items():
        if "/" in key:
            name, moment = key.split("/")
            saved = torch.load(tag / "zero" / f"model.{name}" / f"{moment}.pt", weights_only=False)[
                "param"
            ]
            torch.testing.assert_close(value, saved.view_as(value), rtol=0, atol=0, msg=key)
    # every parameter has both moments
    assert sum("/" in k for k in start) == 2 * (len(start) - 1) // 3
    # real optimizer state
    assert all(start[k].abs().sum() > 0 for k in start if k.endswith("exp_avg_sq"))
    assert len(_losses(run)) == 6  # and it trained on: 3 steps on two processes, 3 on one
    # last.ckpt/, written again by one process, holds one process's shards (the stale second one is
    # gone)
    assert zero_checkpoint_world_size(run / "checkpoints" / "last.ckpt") == 1
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith((".partial", ".old"))]


def test_reshard_refuses_what_it_cannot_convert_or_load_correctly(tmp_path):
    """Not a checkpoint; a ZeRO-3 checkpoint (DeepSpeed's ZeRO-3 universal loader would give every
    parameter group the first group's weight decay and LR scale); a universal checkpoint resumed
    under ZeRO-3 or without DeepSpeed."""
    from helpers.config import compose_config

    from simmim_swinv2.config import ConfigError
    from simmim_swinv2.distributed.reshard import to_universal
    from simmim_swinv2.training.build import build_trainer
    from simmim_swinv2.weights import zero_checkpoint

    with pytest.raises(FileNotFoundError, match="neither a ZeRO checkpoint"):
        zero_checkpoint(tmp_path)  # what `python -m simmim_swinv2.reshard RUN_DIR` resolves first
    with pytest.raises(FileNotFoundError, match="not a ZeRO checkpoint directory"):
        to_universal(tmp_path)
    run = tmp_path / "z3"
    _run(run, "deepspeed_zero3", "trainer.max_epochs=1", "trainer.limit_train_batches=1")
    with pytest.raises(
        ValueError, match="ZeRO-3 checkpoint: DeepSpeed's ZeRO-3 universal loader gives every"
    ):
        to_universal(zero_checkpoint(run))
    fake = tmp_path / "u.ckpt"
    (fake / "checkpoint" / "zero").mkdir(parents=True)
    (fake / "checkpoint" / "mp_rank_00_model_states.pt").touch()
    (fake / "latest_universal").write_text("checkpoint")
    for trainer, match in [
        ("deepspeed_zero3", "under ZeRO-3 is refused"),
        ("cpu", "with a DeepSpeed trainer"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_trainer(
                compose_config("pretrain", tmp_path / "x", [f"trainer={trainer}"]), resume=str(fake)
            )
