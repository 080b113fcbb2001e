"""One owner for distribution: the tasks, the models and the SLURM scripts never ask which strategy
runs; our DeepSpeed strategy swaps its saves in whole (a kill mid-save leaves the previous
checkpoint), steps the task's AdamW as DeepSpeedCPUAdam under optimizer offload, keeps ZeRO-3's
untraceable parameters gathered; `train/grad_norm` is logged alike under DDP and ZeRO; the trainers
the memory plan tries are the trainer configs, as Hydra composes them. (Multi-process ZeRO runs,
resharding to another world size and consolidation: tests/test_deepspeed.py.)"""

from __future__ import annotations

import csv
import os
import re
import signal
import warnings
from pathlib import Path

import pytest
import torch
from helpers.config import FAST, run_cli
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
PACKAGE = REPO / "src" / "simmim_swinv2"
ZERO_CPU = [
    "trainer=deepspeed_zero2",
    "trainer.accelerator=cpu",
    "trainer.strategy._target_=simmim_swinv2.distributed.strategy.CPUDeepSpeedStrategy",
]
ENV = {
    "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    "DS_ACCELERATOR": "cpu",
}


def test_training_models_and_slurm_never_test_the_strategy():
    """Which strategy runs is distributed/'s business alone: no mention of DeepSpeed, no test of a
    strategy's type in training/ or models/; the SLURM scripts read no config (the composed config
    picks the trainer)."""
    offences = []
    for folder in ("training", "models"):
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(
                    r"deepspeed|zero_stage|isinstance\([^)]*Strategy\b|strategy\)\s*(==|!=|in\b)",
                    line,
                    re.I,
                ):
                    offences.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    for path in sorted((REPO / "slurm").glob("*.sh")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"conf/|\.ya?ml|\bgrep\b|\bsed\b|\bawk\b", code):
                offences.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offences, "\n".join(offences)


def test_zero_trainers_are_the_trainer_configs_as_composed():
    """The plan's ZeRO choices come from conf/trainer/*.yaml through Hydra (deepspeed_zero3_offload
    inherits its stage from deepspeed_zero3's defaults list), the least partitioned first."""
    from simmim_swinv2.distributed.planning import Strategy, zero_trainers

    name = "SimMIMDeepSpeedStrategy"
    assert zero_trainers() == {
        "deepspeed_zero1": Strategy(name, 1),
        "deepspeed_zero2": Strategy(name, 2),
        "deepspeed_zero3": Strategy(name, 3),
        "deepspeed_zero3_offload": Strategy(name, 3, True, True),
    }


def test_zero3_external_parameters_are_container_modules_own_outside_leaves():
    """What ZeRO-3 keeps gathered for the step: the direct parameters of modules with children
    (SimMIM: the encoder's mask_token), not those inside a module flagged as a ZeRO-3 leaf
    (conf/trainer/deepspeed_zero3.yaml: the SwinV2 block, gathered whole), nor any leaf module's
    own."""
    from deepspeed.utils import set_z3_leaf_modules

    from simmim_swinv2.distributed.strategy import register_zero3_external_parameters
    from simmim_swinv2.models import SimMIM, swinv2_config
    from simmim_swinv2.models.swinv2 import SwinV2Block

    def task():
        root = torch.nn.Module()
        root.model = SimMIM.from_config(swinv2_config("debug", img_size=64, window_size=4))
        return root

    root = task()
    set_z3_leaf_modules(root, [SwinV2Block])
    assert register_zero3_external_parameters(root) == ["model.encoder.mask_token"]
    assert {id(p) for p in root._external_params.values()} == {id(root.model.encoder.mask_token)}
    # without leaves: the attention's own too
    unflagged = register_zero3_external_parameters(task())
    assert unflagged[0] == "model.encoder.mask_token" and len(unflagged) > 1
    assert all(
        n.rsplit(".", 1)[1] in ("mask_token", "logit_scale", "q_bias", "v_bias") for n in unflagged
    )


# DeepSpeedCPUAdam JIT-compiles on first use (~80 s, then cached in ~/.cache/torch_extensions)
@pytest.mark.slow
def test_cpu_adam_like_steps_as_the_task_adamw_with_its_schedule():
    """Under optimizer offload the strategy replaces the task's AdamW by DeepSpeedCPUAdam: the same
    groups (their parameters, LR, weight decay, betas, eps), the schedule re-pointed at it; three
    steps move the weights as torch's AdamW does. SGD, which it cannot stand in for, is refused
    naming the fix."""
    import copy

    from simmim_swinv2.config import ConfigError
    from simmim_swinv2.distributed.strategy import cpu_adam_like, use_cpu_accelerator
    from simmim_swinv2.training import optim

    use_cpu_accelerator()
    torch.manual_seed(0)
    ref = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4)
    )
    model, start = copy.deepcopy(ref), copy.deepcopy(ref)

    def build(m):
        opt = optim.build_optimizer(
            m, name="adamw", base_lr=1e-2, weight_decay=0.05, betas=(0.8, 0.95), eps=1e-6
        )
        return opt, optim.build_scheduler(
            opt, name="cosine", total_steps=3, warmup_steps=1, warmup_lr=1e-3, min_lr=1e-4
        )

    ref_opt, ref_sched = build(ref)
    opt, sched = build(model)
    cpu_adam = cpu_adam_like(opt, sched)
    assert type(cpu_adam).__name__ == "DeepSpeedCPUAdam" and sched.optimizer is cpu_adam
    assert len(cpu_adam.param_groups) == len(ref_opt.param_groups) == 2  # decay, no decay
    for mine, old, theirs in zip(cpu_adam.param_groups, opt.param_groups, ref_opt.param_groups):
        assert [id(p) for p in mine["params"]] == [id(p) for p in old["params"]]
        for key in ("lr", "initial_lr", "weight_decay", "betas", "eps"):
            assert mine[key] == theirs[key], key
    with warnings.catch_warnings():
        # torch's "optimizer.step() has been overridden" check holds for the new one
        warnings.simplefilter("error")
        for step in range(3):
            x = torch.randn(5, 8)
            for m, o, s in ((ref, ref_opt, ref_sched), (model, cpu_adam, sched)):
                o.zero_grad()
                m(x).square().mean().backward()
                o.step()
                s.step()
            assert [g["lr"] for g in cpu_adam.param_groups] == [
                g["lr"] for g in ref_opt.param_groups
            ], step
    for a, b, s in zip(model.parameters(), ref.parameters(), start.parameters()):
        # 3 Adam steps (each moves a weight by ~lr) computed by DeepSpeed's vector code and by
        # torch's: a few roundings per step of values of order 0.1-1, far under 1e-5 of them
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, s)  # it trained

    with pytest.raises(ConfigError, match="DeepSpeedCPUAdam.*not SGD: use optim.name=adamw"):
        cpu_adam_like(optim.build_optimizer(model, name="sgd", base_lr=0.1))


class KillMidSave(Callback):
    """Test-only: at the end of epoch `epoch`, SIGKILL this process once DeepSpeed has written one
    file of the save of `name` (into its `.partial` directory): a node lost in the middle of a
    checkpoint."""

    def __init__(self, epoch: int, name: str = "last.ckpt") -> None:
        self.epoch, self.name = epoch, name

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch != self.epoch:
            return
        engine = trainer.strategy.deepspeed_engine.checkpoint_engine
        save, written = engine.save, []

        def dying_save(state_dict, path):
            if f"{self.name}.partial" in str(path) and written:
                os.kill(os.getpid(), signal.SIGKILL)
            save(state_dict, path)
            if f"{self.name}.partial" in str(path):
                written.append(path)

        engine.save = dying_save


def _rows(run: Path, key: str) -> list[tuple[int, float]]:
    with open(run / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def _grad_norm_steps(run: Path) -> list[int]:
    """The logged steps of `train/grad_norm` (each finite and > 0)."""
    rows = _rows(run, "train/grad_norm")
    assert rows and all(0 < v < float("inf") for _, v in rows), rows
    return [s for s, _ in rows]


LOGS = [
    "trainer.log_every_n_steps=2",
    "trainer.limit_train_batches=4",
    "callbacks.reconstructions.every_n_steps=0",
]


@pytest.mark.slow
def test_zero_save_is_swapped_in_whole_and_a_kill_mid_save_leaves_the_previous_checkpoint(tmp_path):
    """ZeRO-2 on one CPU process, `last.ckpt` saved as its own directory (save_last=true), killed
    halfway through the epoch-1 save of `last.ckpt`: the epoch-0 `last.ckpt` stays whole
    (resume=auto takes it), a `.partial` beside it; the next run resumes, clears that and swaps its
    own saves in (over the existing directories too). Its `train/grad_norm` (DeepSpeed's own, read
    after the step) is logged at the steps of the DDP test below."""
    from simmim_swinv2.distributed.zero import is_zero_checkpoint, zero_model_states
    from simmim_swinv2.weights import find_resume_checkpoint

    run, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    partial = last.with_name("last.ckpt.partial")
    args = [
        *FAST,
        *ZERO_CPU,
        "trainer.devices=1",
        "callbacks.checkpoint.save_last=true",
        *LOGS,
        f"hydra.run.dir={run}",
    ]

    killed = run_cli(
        "simmim_swinv2.pretrain",
        *args,
        "+callbacks.kill._target_=test_distributed.KillMidSave",
        "+callbacks.kill.epoch=1",
        env=ENV,
    )
    assert killed.returncode == -signal.SIGKILL, (killed.stdout + killed.stderr)[-4000:]
    # no `latest` yet
    assert partial.is_dir() and any(partial.rglob("*.pt")) and not is_zero_checkpoint(partial)
    assert (
        is_zero_checkpoint(last)
        and not last.is_symlink()
        and zero_model_states(last)["global_step"] == 4
    )
    assert find_resume_checkpoint(run) == last  # the previous save, whole

    again = run_cli("simmim_swinv2.pretrain", *args, env=ENV)
    out = again.stdout + again.stderr
    assert again.returncode == 0 and f"resuming from {last}" in out, out[-4000:]
    assert zero_model_states(last)["global_step"] == 8
    # saved again, over the killed run's
    assert is_zero_checkpoint(last.with_name("epoch0001-step0000008.ckpt"))
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith((".partial", ".old"))]
    # the killed run's, as far as they were flushed, then the resumed epoch's
    steps = _grad_norm_steps(run)
    # as under DDP
    assert steps == [s for s, _ in _rows(run, "train/loss_step")] and steps[-2:] == [5, 7], steps
    assert set(steps) <= {1, 3, 5, 7}


@pytest.mark.slow
def test_grad_norm_is_logged_alike_under_ddp(tmp_path):
    """Two DDP processes: `train/grad_norm` (from the all-reduced gradients, before clipping) at the
    steps Lightning writes logs at (log_every_n_steps=2: 1, 3 of steps 0-3), as under ZeRO (the test
    above), and with the loss."""
    run = tmp_path / "ddp"
    result = run_cli(
        "simmim_swinv2.pretrain",
        *FAST,
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        *LOGS,
        f"hydra.run.dir={run}",
        env=ENV,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert _grad_norm_steps(run) == [1, 3] == [s for s, _ in _rows(run, "train/loss_step")]
