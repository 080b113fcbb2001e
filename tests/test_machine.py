"""Recipe values that depend on the machine (`simmim_swinv2/config/machine.py`): the recipes' mixed
precision (conf/recipe/shared/mixed_precision.yaml: bf16-mixed on GPUs and on CPUs with bf16
instructions, fp32 on the others, a warning where bf16 would be emulated), and their loader workers,
at most the CPUs the process may use."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch
from helpers.config import FAST, compose_config

from simmim_swinv2.config import ConfigError, machine
from simmim_swinv2.config.checks import check_machine

REAL = ("tiny", "small", "base", "large", "huge", "giant")
EXPERIMENT = "simmim_pretrain__swinv2_base__img192_window6__100ep"
CHECKS_NATIVE = "simmim_swinv2.config.checks.native_bf16_cpu"  # what check_machine asks


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="the kernel's flags: Linux only")
def test_native_bf16_is_what_the_kernel_reports():
    """PyTorch's cpuinfo against the kernel's own list of the CPU's instruction sets."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert machine.native_bf16_cpu() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize("native", [True, False], ids=["cpu_with_bf16", "cpu_without_bf16"])
def test_named_recipes_bring_mixed_precision_a_cpu_only_where_it_computes_bf16(
    native, monkeypatch, tmp_path
):
    monkeypatch.setattr(machine, "native_bf16_cpu", lambda: native)
    on_cpu = "bf16-mixed" if native else "32-true"
    for command in ("pretrain", "finetune"):
        for variant in REAL:
            model = f"model=swinv2_{variant}"
            assert compose_config(command, tmp_path, [model]).trainer.precision == "bf16-mixed"
            cpu = compose_config(command, tmp_path, [model, "trainer=cpu"]).trainer
            assert (cpu.accelerator, cpu.precision) == ("cpu", on_cpu), (command, variant)
    # a GPU recipe under any trainer keeps it: trainer=ddp was fp32 before the recipes said it
    ddp = compose_config("pretrain", tmp_path, ["model=swinv2_base", "trainer=ddp"]).trainer
    assert (ddp.strategy, ddp.precision) == ("ddp", "bf16-mixed")
    # the quickstart's SwinV2-debug is no published recipe: fp32 on every CPU
    for overrides in ([], ["trainer=cpu"], FAST):
        assert compose_config("pretrain", tmp_path, overrides).trainer.precision == "32-true"
    # the command line wins
    for value in ("32-true", "bf16-mixed"):
        cli = ["model=swinv2_tiny", "trainer=cpu", f"trainer.precision={value}"]
        assert compose_config("pretrain", tmp_path, cli).trainer.precision == value


def _warned(cfg) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_machine(cfg)
    return [str(w.message) for w in caught if "bf16 instructions" in str(w.message)]


def test_bf16_on_a_cpu_without_bf16_instructions_warns_and_names_fp32(monkeypatch, tmp_path):
    bf16 = compose_config("pretrain", tmp_path, [*FAST, "trainer.precision=bf16-mixed"])
    fp16 = compose_config("pretrain", tmp_path, [*FAST, "trainer.precision=16-mixed"])
    monkeypatch.setattr(CHECKS_NATIVE, lambda: False)
    (message,) = _warned(bf16)
    assert "trainer.precision=32-true" in message
    with pytest.raises(ConfigError) as err:
        check_machine(fp16)
    assert "trainer.precision=32-true" in str(err.value)
    assert "trainer.precision=bf16-mixed" not in str(err.value)

    monkeypatch.setattr(CHECKS_NATIVE, lambda: True)
    assert _warned(bf16) == []
    with pytest.raises(ConfigError) as err:
        check_machine(fp16)
    assert "trainer.precision=bf16-mixed" in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a GPU recipe without a GPU")
@pytest.mark.parametrize("native", [True, False], ids=["cpu_with_bf16", "cpu_without_bf16"])
def test_a_gpu_recipe_without_a_gpu_says_what_trainer_cpu_will_run(native, monkeypatch, tmp_path):
    cfg = compose_config("pretrain", tmp_path, ["model=swinv2_base"])
    monkeypatch.setattr(CHECKS_NATIVE, lambda: native)
    with pytest.raises(ConfigError) as err:
        check_machine(cfg)
    assert "add trainer=cpu" in str(err.value)
    assert ("(in bf16-mixed" in str(err.value), "(in 32-true" in str(err.value)) == (
        native,
        not native,
    )


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity: Linux")
def test_the_recipes_loader_workers_are_at_most_the_cpus_the_process_may_use(tmp_path):
    """The official 8 workers per device, capped by the process's real affinity mask (what SLURM's
    --cpus-per-task or taskset gives it); a number on the command line is taken as it is."""
    runs = {
        "quickstart": ("pretrain", []),
        "recipe": ("pretrain", ["model=swinv2_base", "trainer=cpu"]),
        "experiment": ("pretrain", ["experiment=" + EXPERIMENT]),
        "finetune": ("finetune", ["model=swinv2_large"]),
    }
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # one CPU
        one = {k: compose_config(c, tmp_path, o).num_workers for k, (c, o) in runs.items()}
        cli = compose_config("pretrain", tmp_path, ["model=swinv2_base", "num_workers=6"])
        assert cli.num_workers == 6
    finally:
        os.sched_setaffinity(0, before)
    assert one == {"quickstart": 1, "recipe": 1, "experiment": 1, "finetune": 1}
    every = {k: compose_config(c, tmp_path, o).num_workers for k, (c, o) in runs.items()}
    # the quickstart's own 2 workers, capped alike
    assert every == {k: min(8 if k != "quickstart" else 2, len(before)) for k in runs}
