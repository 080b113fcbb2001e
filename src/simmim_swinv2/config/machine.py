"""Recipe values that depend on the machine the run starts on, as OmegaConf resolvers (registered
by `config.schema.register`). Each is resolved where the run starts and recorded in its
`config.yaml`; the same key on the command line replaces it.

`mixed_precision`: the recipes' mixed precision, where the hardware computes it. The official
recipes train in mixed precision (microsoft/Swin-Transformer config.py: `AMP_ENABLE = True`); ours
is bfloat16 autocast (`bf16-mixed`), since fp16 overflows in SimMIM pretraining
(microsoft/SimMIM#15, microsoft/Swin-Transformer#82). A GPU with bf16 runs it at tensor core speed.
A CPU runs it fast only where it has bf16 instructions (AVX512-BF16 or AMX-BF16); on any other CPU
PyTorch emulates bf16 and a step is slower than in fp32 (docs/benchmarks.md: 1.7x slower with
AVX-512, 15x with AVX2 only). So a named model's recipe sets `trainer.precision:
${mixed_precision:${trainer.accelerator}}` (conf/recipe/shared/mixed_precision.yaml): `bf16-mixed`,
except on a CPU without bf16 instructions, where it is `32-true`.

`at_most_cpus`: the recipes' loader workers per device (the official 8, config.py
`DATA.NUM_WORKERS`), at most the CPUs this process may run on: more worker processes than CPUs
only compete with each other and with the training step (PyTorch's DataLoader warns of it).
`num_workers=N` on the command line is taken as it is (more workers than CPUs can pay where the
loader waits on a network).
"""

from __future__ import annotations

import os

import torch

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # torch.cpu.get_capabilities() keys (x86)


def native_bf16_cpu() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16), read from PyTorch's
    cpuinfo. Other CPUs (x86 without them, ARM here) count as without: bf16 would be emulated."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        caps = get()
        return any(bool(caps.get(flag)) for flag in NATIVE_BF16_FLAGS)
    # a torch without get_capabilities
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def mixed_precision(accelerator) -> str:
    """The `mixed_precision` resolver: the recipes' precision for `trainer.accelerator`.

    Args:
        accelerator: the trainer's accelerator. Only `cpu` depends on the machine; anything else
            (`gpu`, `auto` under DDP or DeepSpeed) is a GPU recipe's and gets `bf16-mixed`, which
            `config.checks.check_machine` refuses, naming the fix, on a GPU without bf16.

    Returns:
        `bf16-mixed`, or `32-true` on a CPU without bf16 instructions.
    """
    if str(accelerator) == "cpu" and not native_bf16_cpu():
        return "32-true"
    return "bf16-mixed"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what a SLURM job or `taskset` gives
    it), as PyTorch's DataLoader counts them."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def at_most_cpus(n) -> int:
    """The `at_most_cpus` resolver: `n`, at most `available_cpus()`.

    Args:
        n: the recipe's number (of loader workers per device).

    Returns:
        `min(n, available_cpus())`.
    """
    return min(int(n), available_cpus())
