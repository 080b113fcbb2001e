"""SimMIM pretraining: `python -m simmim_swinv2.pretrain [overrides]`.

With no overrides it pretrains SwinV2-debug on the bundled digits on the CPU in a few minutes; with
`experiment=…` it runs an official recipe. The run directory (`hydra.run.dir`) holds the resolved config,
`metrics.csv`, `checkpoints/` and `reconstructions/`; start again with the same run directory and it resumes.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from omegaconf import DictConfig

from .config import CONFIG_DIR
from .config.checks import check_pretrain_config
from .data import SimMIMTransform
from .distributed import planning
from .models import SimMIM
from .training import PretrainTask, build


def pretrain(cfg: DictConfig) -> dict[str, float]:
    """Run a pretraining job from a composed config; returns the final logged metrics."""
    check_pretrain_config(cfg)
    planning.check_fits(cfg)  # memory per GPU, before the model is built (plan.enforce)
    run_dir = cfg.paths.run_dir
    build.save_resolved_config(cfg, run_dir)
    seed_everything(cfg.seed, workers=True)

    transform = SimMIMTransform(input_size=cfg.img_size, mask_generator=instantiate(cfg.mask))
    train, val = build.build_datasets(cfg.data, transform, transform)
    model = SimMIM.from_config(instantiate(cfg.model), norm_target=cfg.norm_target,
                               norm_target_window=cfg.norm_target_window)
    optimizer, schedule = build.specs(cfg)
    task = PretrainTask(model, optimizer, schedule, batch_size=cfg.batch_size, compile=cfg.compile)
    ckpt = build.resume_path(cfg, run_dir)
    trainer = build.build_trainer(cfg, resume=ckpt)
    trainer.fit(task, datamodule=build.build_datamodule(cfg, train, val), ckpt_path=ckpt)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="pretrain")
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()
