"""Fine-tuning: `python -m simmim_swinv2.finetune pretrained=PATH [overrides]`.

PATH is anything we or the peers save (see conf/finetune.yaml); the decoder is dropped, window changes go
through `model.pretrained_window_sizes`, and missing/unexpected keys are reported. Prints validation
top-1/top-5 at the end.
"""

from __future__ import annotations

import hydra
from lightning.pytorch import seed_everything
from omegaconf import DictConfig

from . import runtime
from .checkpoint import load_pretrained_encoder
from .data import build_eval_transform, build_finetune_transform, build_mixup
from .models import SwinV2Classifier, SwinV2Encoder
from .tasks import FinetuneTask


def finetune(cfg: DictConfig) -> dict[str, float]:
    """Run a fine-tuning job from a composed config; returns the final logged metrics."""
    if not cfg.num_classes:
        raise runtime.ConfigError("num_classes is unknown for this data source: set num_classes=N")
    model_cfg = runtime.model_config(cfg)  # validated before any data or weights are touched
    run_dir = cfg.paths.run_dir
    runtime.save_resolved_config(cfg, run_dir)
    seed_everything(cfg.seed, workers=True)

    aug = cfg.augment
    train_tf = build_finetune_transform(cfg.img_size, auto_augment=aug.auto_augment, color_jitter=aug.color_jitter,
                                        re_prob=aug.re_prob, scale=aug.scale, hflip=aug.hflip)
    val_tf = build_eval_transform(cfg.img_size, crop_pct=aug.crop_pct)
    train, val = runtime.build_datasets(cfg.data, train_tf, val_tf)

    encoder = SwinV2Encoder(model_cfg)
    if cfg.pretrained:
        load_pretrained_encoder(encoder, cfg.pretrained)
    id2label = getattr(train, "id2label", None)
    model = SwinV2Classifier(encoder, cfg.num_classes, id2label=id2label,
                             label_smoothing=cfg.mixup.label_smoothing)
    mix = cfg.mixup
    mixup = build_mixup(cfg.num_classes, mixup_alpha=mix.mixup_alpha, cutmix_alpha=mix.cutmix_alpha,
                        label_smoothing=mix.label_smoothing, prob=mix.prob, switch_prob=mix.switch_prob)
    optimizer, schedule = runtime.specs(cfg)
    task = FinetuneTask(model, optimizer, schedule, batch_size=cfg.batch_size, mixup=mixup, compile=cfg.compile)
    extra = []
    if cfg.ema:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        extra.append(EMAWeightAveraging(decay=cfg.ema))
    ckpt = runtime.resume_path(cfg, run_dir)
    trainer = runtime.build_trainer(cfg, callbacks=extra, resume=ckpt)
    trainer.fit(task, datamodule=runtime.build_datamodule(cfg, train, val), ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if "val/top1" in metrics:
        print(f"validation: top-1 {metrics['val/top1']:.4f}, top-5 {metrics['val/top5']:.4f} "
              f"(epoch {trainer.current_epoch - 1}, run dir {run_dir})")
    return metrics


@hydra.main(version_base="1.3", config_path=runtime.CONFIG_DIR, config_name="finetune")
def main(cfg: DictConfig) -> None:
    finetune(cfg)


if __name__ == "__main__":
    main()
