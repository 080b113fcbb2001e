"""Evaluate a saved classifier: `python -m simmim_swinv2.evaluate checkpoint=PATH [data=…]`.

PATH: a fine-tuning run directory or `.ckpt` of ours, our `.safetensors` export, or a transformers
directory. Prints top-1 / top-5 (and the loss) on the data source's validation split.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

from .config import ConfigError
from .config.checks import check_machine, check_values, model_normalization
from .config.compose import command
from .config.schema import EvaluateConfig, to_object
from .data import build_eval_transform
from .data.views import ADD_VAL_SPLIT
from .finetune import class_names
from .models import SwinV2Classifier
from .training import FinetuneTask, OptimConfig, ScheduleConfig, build
from .weights import load_model


def evaluate(cfg: DictConfig) -> dict[str, float]:
    check_values(cfg)
    check_machine(cfg)
    model = load_model(cfg.checkpoint)
    if not isinstance(model, SwinV2Classifier):
        raise ConfigError(
            f"{cfg.checkpoint} holds a {type(model).__name__}, not a classifier: "
            "fine-tune it first (python -m simmim_swinv2.finetune pretrained=…)"
        )
    size = cfg.img_size or model.encoder.cfg.img_size[0]
    with open_dict(cfg):
        cfg.img_size = size  # the data config renders images at ${img_size}
    job = to_object(cfg, EvaluateConfig)
    mean, std = model_normalization(model, job.data)
    _, val = build.build_datasets(
        job.data, None, build_eval_transform(size, job.crop_pct, mean, std)
    )
    if val is None:
        raise ConfigError(
            f"evaluate scores a validation split and this data source has none: {ADD_VAL_SPLIT}"
        )
    names = class_names(val)
    if names is not None and len(names) != model.num_classes:
        labels = ", ".join(list(model.id2label.values())[:5])
        raise ConfigError(
            f"{cfg.checkpoint} classifies {model.num_classes} classes ({labels}) and this data "
            f"source names {len(names)}: give it the data it was fine-tuned on "
            "(data=folder data.root=PATH, as for finetune)"
        )
    # validation only
    task = FinetuneTask(model, OptimConfig(), ScheduleConfig(), batch_size=job.batch_size)
    trainer = build.build_trainer(cfg)
    datamodule = build.build_datamodule(
        val,
        val,
        batch_size=job.batch_size,
        num_workers=job.num_workers,
        seed=job.seed,
        validate_only=True,
    )
    (metrics,) = trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in metrics.items()}
    print(
        f"{cfg.checkpoint}: top-1 {metrics['val/top1']:.4f}, top-5 {metrics['val/top5']:.4f}, "
        f"loss {metrics['val/loss']:.4f} on {len(val)} images"
    )
    return metrics


@command("evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
