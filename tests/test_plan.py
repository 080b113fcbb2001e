"""The memory plan: numbers for SwinV2-G, ZeRO division, the refusal naming a fitting option, the
command."""

from __future__ import annotations

import pytest
from helpers.config import compose_config

from simmim_swinv2.distributed import planning
from simmim_swinv2.pretrain import pretrain

GIANT = ["model=swinv2_giant", "img_size=192", "batch_size=16", "plan.gpu_memory_gb=80"]


def test_giant_brings_zero3_checkpointing_bf16_and_command_line_wins(tmp_path):
    cfg = compose_config("pretrain", tmp_path, GIANT)
    assert (
        planning.parse_strategy(cfg.trainer.strategy).stage == 3
        and cfg.trainer.precision == "bf16-mixed"
    )
    assert cfg.model.grad_checkpointing is True
    assert (
        compose_config("pretrain", tmp_path, [*GIANT, "trainer=cpu"]).trainer.accelerator == "cpu"
    )
    # real models: GPUs
    assert compose_config("pretrain", tmp_path, ["model=swinv2_base"]).trainer.accelerator == "gpu"
    assert compose_config("pretrain", tmp_path, []).trainer.accelerator == "cpu"  # the quickstart


def test_giant_plan_params_and_zero3_divides_by_eight(tmp_path):
    cfg = compose_config("pretrain", tmp_path, [*GIANT, "trainer.devices=8"])
    plan = planning.make_plan(cfg)
    # Swin V2 paper (arXiv 2111.09883), Table 1: SwinV2-G 3.0B
    assert plan.params == pytest.approx(3.0e9, rel=0.02)
    assert plan.global_batch == 16 * 8 and plan.lr == pytest.approx(cfg.optim.base_lr * 128 / 512)
    full = planning.replace(plan, strategy=planning.Strategy("ddp")).state_bytes()
    assert sum(full.values()) == 16 * plan.params  # mixed-precision Adam: 16 B/param
    st = plan.state_bytes()
    for k in ("weights", "gradients", "optimizer"):
        assert st[k] == pytest.approx(full[k] / 8)
    z1 = planning.replace(plan, strategy=planning.Strategy("z1", 1)).state_bytes()
    assert (
        z1["optimizer"] == pytest.approx(full["optimizer"] / 8)
        and z1["gradients"] == full["gradients"]
    )
    off = planning.replace(plan, strategy=planning.Strategy("z3o", 3, True, True)).state_bytes()
    assert off["optimizer"] == 0 and off["weights"] == 0
    assert plan.fits()


def test_activation_estimate_grows_with_tokens_and_shrinks_with_checkpointing():
    from simmim_swinv2.models import swinv2_config

    a = planning.activation_bytes_per_sample(swinv2_config("tiny", img_size=192))
    b = planning.activation_bytes_per_sample(
        swinv2_config("tiny", img_size=192, grad_checkpointing=True)
    )
    c = planning.activation_bytes_per_sample(swinv2_config("tiny", img_size=96))
    # measured: saved-tensor bytes of a CPU forward (planning.py)
    assert a == pytest.approx(93.8e6, rel=0.1)
    assert b < a / 3 and c < a / 3  # checkpointed: block inputs + one block recomputed


def test_plan_and_model_agree_on_every_stage_of_a_non_square_input(tmp_path):
    """The plan's memory estimate describes the model that trains: a window between a stage's width
    and its height (24 at a 32x16 grid) is clamped by the height only, as transformers' rule and our
    blocks do."""
    from hydra.utils import instantiate

    from simmim_swinv2.models import SwinV2Encoder

    cfg = compose_config("pretrain", tmp_path, ["model.img_size=[128,64]", "model.window_size=24"])
    plan = planning.make_plan(cfg)
    encoder = SwinV2Encoder(instantiate(cfg.model))
    assert plan.grids == ((32, 16), (16, 8), (8, 4), (4, 2)) and plan.windows == (24, 16, 8, 4)
    for s, stage in enumerate(encoder.layers):
        for block in stage.blocks:
            assert tuple(block.input_resolution) == plan.grids[s], s
            assert tuple(block.window_size) == (plan.windows[s],) * 2, s


def test_pretrain_refuses_before_building_and_names_a_fitting_option(tmp_path):
    cfg = compose_config(
        "pretrain",
        tmp_path,
        [
            "model=swinv2_giant",
            "img_size=192",
            "batch_size=64",
            "trainer=ddp",
            "model.grad_checkpointing=false",
            "plan.gpu_memory_gb=80",
        ],
    )
    with pytest.raises(
        planning.DoesNotFitError,
        match=r"fits with: .*(trainer=deepspeed_zero3|grad_checkpointing|batch_size)",
    ):
        pretrain(cfg)
    assert not (tmp_path / "config.yaml").exists()  # refused before anything was written or built
    cfg = compose_config(
        "pretrain",
        tmp_path,
        [
            "model=swinv2_giant",
            "img_size=192",
            "batch_size=64",
            "trainer=ddp",
            "model.grad_checkpointing=false",
            "plan.gpu_memory_gb=80",
            "plan.enforce=false",
        ],
    )
    assert planning.check_fits(cfg) is None


def test_plan_command_prints_the_table(tmp_path):
    from helpers.config import run_cli

    r = run_cli("simmim_swinv2.plan", *GIANT, "trainer.devices=8", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| parameters" in r.stdout and "3.0" in r.stdout and "ZeRO stage 3" in r.stdout
    assert "| fits                   | yes |" in r.stdout


def test_a_cpu_plan_is_per_process_against_the_hosts_memory(tmp_path):
    """`trainer=cpu`: no CUDA context, the per-device rows are per training process, and the node's
    processes together are held against the host's physical memory (they share it)."""
    cpu = planning.make_plan(
        compose_config(
            "pretrain", tmp_path, ["model=swinv2_tiny", "trainer=cpu", "trainer.devices=2"]
        )
    )
    gpu = planning.replace(cpu, on_cpu=False)
    assert cpu.on_cpu and cpu.devices == 2 and cpu.unit == "process"
    assert gpu.total_bytes() - cpu.total_bytes() == planning.CUDA_OVERHEAD_BYTES
    assert cpu.host_memory_bytes > 2**30  # this machine's RAM, from the OS
    need = 2 * cpu.total_bytes()
    assert planning.replace(cpu, host_memory_bytes=need).fits() is True
    assert planning.replace(cpu, host_memory_bytes=need - 1).fits() is False
    text = planning.format_plan(cpu)
    assert "on 2 processes (CPU)" in text and "activations / process" in text
    assert "GPU" not in text and "CUDA" not in text and "host memory" in text
    assert "on 1 GPU |" in planning.format_plan(planning.replace(gpu, devices=1))
