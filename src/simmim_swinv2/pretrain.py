"""SimMIM pretraining: `python -m simmim_swinv2.pretrain [overrides]`.

With no overrides it pretrains SwinV2-debug on the bundled digits on the CPU in a few minutes; with
`experiment=…` it runs an official recipe. The run directory (`hydra.run.dir`) holds the resolved
config, `metrics.csv`, `checkpoints/` and `reconstructions/`; start again with the same run
directory and it resumes. `pretrained=PATH` starts from released or earlier weights instead
(continued pretraining: the encoder, and the decoder when the source has one; a fresh optimizer and
schedule): training/init_from.py.
"""

from __future__ import annotations

from dataclasses import asdict

from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from omegaconf import DictConfig

from .config.checks import check_machine, check_pretrain_config, data_normalization
from .config.compose import command
from .config.schema import PretrainConfig, to_object
from .data import SimMIMTransform
from .distributed import planning
from .models import SimMIM
from .training import PretrainTask, build
from .training.init_from import load_pretrained_simmim, pretrained_start
from .weights.meta import set_normalization


def pretrain(cfg: DictConfig) -> dict[str, float]:
    """Run a pretraining job from a composed config; returns the final logged metrics."""
    check_pretrain_config(cfg)  # the config in itself (recipes for GPUs check here too)
    check_machine(cfg)  # and against the machine it starts on
    planning.check_fits(cfg)  # memory per GPU, before the model is built (plan.enforce)
    run_dir = cfg.paths.run_dir
    # before config.yaml is rewritten
    from_pretrained = pretrained_start(cfg.pretrained, cfg.resume, run_dir)
    build.save_resolved_config(cfg, run_dir)
    build.record_start(run_dir)
    # typed from here on (the Trainer's node stays Hydra's: build_trainer)
    job = to_object(cfg, PretrainConfig)
    seed_everything(job.seed, workers=True)

    mean, std = data_normalization(job.data, job.model.in_chans)
    transform = SimMIMTransform(
        input_size=job.img_size,
        mask_generator=instantiate(job.mask),
        mean=mean,
        std=std,
        **asdict(job.augment),
    )
    train, val = build.build_datasets(job.data, transform, transform)
    model = SimMIM.from_config(
        instantiate(job.model),
        norm_target=job.norm_target,
        norm_target_window=job.norm_target_window,
    )
    set_normalization(model, mean, std)  # into its checkpoints and exports
    # continued pretraining: the weights only; optimizer and schedule start fresh
    if from_pretrained:
        load_pretrained_simmim(model, job.pretrained)
    task = PretrainTask(
        model, job.optim, job.scheduler, batch_size=job.batch_size, compile=job.compile
    )
    build.check_disk(cfg, model)
    ckpt = build.resume_path(job.resume, run_dir)
    trainer = build.build_trainer(cfg, resume=ckpt)
    datamodule = build.build_datamodule(
        train, val, batch_size=job.batch_size, num_workers=job.num_workers, seed=job.seed
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@command("pretrain")
def main(cfg: DictConfig) -> None:
    pretrain(cfg)


if __name__ == "__main__":
    main()
