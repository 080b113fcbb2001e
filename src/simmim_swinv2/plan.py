"""`python -m simmim_swinv2.plan [the overrides you would give pretrain]`: parameters, global batch,
derived LR, strategy and the estimated memory per GPU (on the CPU: per training process, the
node's processes against the host's memory), without training (the model is built on the meta
device).

    python -m simmim_swinv2.plan model=swinv2_giant trainer.devices=8 batch_size=32 plan.gpu_memory_gb=80
"""  # noqa: E501 - a command line longer than 100 characters

from __future__ import annotations

from omegaconf import DictConfig

from .config.checks import check_values
from .config.compose import command
from .distributed import planning


@command("pretrain")
def main(cfg: DictConfig) -> None:
    check_values(cfg)
    plan = planning.make_plan(cfg)
    print(planning.format_plan(plan))
    if plan.fits() is False:
        options = planning.fitting_options(cfg, plan)
        print(
            "does not fit; options that fit:"
            if options
            else "does not fit; nothing tried fits (more GPUs?)"
        )
        for option in options:
            print(f"  {option}")


if __name__ == "__main__":
    main()
