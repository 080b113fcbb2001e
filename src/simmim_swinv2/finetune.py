"""Fine-tuning: `python -m simmim_swinv2.finetune pretrained=PATH [overrides]`.

PATH is anything we or the peers save (see conf/finetune.yaml); the decoder is dropped, window
changes go through `model.pretrained_window_sizes`, and missing/unexpected keys are reported. The
classifier's labels (`id2label`, exported to transformers and printed by `predict`) are the data
set's class names. Prints validation top-1/top-5 at the end.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from lightning.pytorch import seed_everything
from omegaconf import DictConfig, open_dict

from .config import ConfigError
from .config.checks import (
    check_machine,
    check_schedule,
    check_values,
    data_normalization,
    model_config,
)
from .config.compose import command
from .config.schema import FinetuneConfig, to_object
from .data import build_eval_transform, build_finetune_transform, build_mixup
from .data.views import has_labels
from .models import SwinV2Classifier, SwinV2Encoder
from .training import FinetuneTask, build
from .weights import load_pretrained_encoder
from .weights.meta import set_normalization


def class_names(dataset) -> list[str] | None:
    """The data set's class names, index = label, or None when it has none: `classes` (digits: "0" …
    "9"; folders: the class folder names), else, for WebDataset shards, the `classes.json` list that
    scripts/make_shards.py writes beside them (one file for all shards: folders whose files disagree
    are refused)."""
    classes = getattr(dataset, "classes", None)
    if classes:
        return [str(c) for c in classes]
    shards = getattr(dataset, "shards", None) or []
    found: dict[Path, list[str]] = {}
    for folder in {Path(str(url).removeprefix("file:")).parent for url in shards}:
        if (folder / "classes.json").is_file():
            found[folder] = [str(c) for c in json.loads((folder / "classes.json").read_text())]
    if len({tuple(v) for v in found.values()}) > 1:
        raise ConfigError(
            f"the shards' classes.json files disagree: {sorted(map(str, found))}; "
            "make the shards of one data set with one scripts/make_shards.py run"
        )
    return next(iter(found.values()), None)


def count_classes(train, names: list[str] | None, num_classes: int | None) -> int:
    """The number of classes to fine-tune: the source's class names counted (class folders, a shard
    set's classes.json), checked against `num_classes` when that is given. An unlabelled source is
    refused: fine-tuning needs labels."""
    if has_labels(train) is False:
        if root := getattr(train, "root", None):
            raise ConfigError(
                f"fine-tuning needs labelled images and {root} has no class subfolders: put each "
                "class's images in a subfolder of its own (photos/cat/*.jpg, photos/dog/*.jpg), "
                "or pretrain on it instead (python -m simmim_swinv2.pretrain data=folder "
                "data.root=...)"
            )
        raise ConfigError(
            "fine-tuning needs labelled images and this data source has no labels (data=hf: name "
            "a ClassLabel column with data.label_column=NAME), or pretrain on it instead"
        )
    if names is None:
        if not num_classes:
            raise ConfigError(
                "the data source names no classes, so their number is unknown: set num_classes=N"
            )
        return num_classes
    if num_classes and len(names) != num_classes:
        raise ConfigError(
            f"the data set names {len(names)} classes ({', '.join(names[:5])}"
            f"{', …' if len(names) > 5 else ''}) but num_classes={num_classes}: "
            f"set num_classes={len(names)} (or leave it out: it is counted)"
        )
    return len(names)


def finetune(cfg: DictConfig) -> dict[str, float]:
    """Run a fine-tuning job from a composed config; returns the final logged metrics."""
    check_values(cfg)
    check_machine(cfg)
    model_cfg = model_config(cfg)  # validated before any data or weights are touched
    check_schedule(cfg.scheduler)
    mean, std = data_normalization(cfg.data, model_cfg.in_chans)
    run_dir = cfg.paths.run_dir
    # typed from here on (the Trainer's node stays Hydra's: build_trainer)
    job = to_object(cfg, FinetuneConfig)
    seed_everything(job.seed, workers=True)

    aug = asdict(job.augment)
    val_tf = build_eval_transform(job.img_size, crop_pct=aug.pop("crop_pct"), mean=mean, std=std)
    train_tf = build_finetune_transform(job.img_size, **aug, mean=mean, std=std)
    if len(mean) != 3 and (aug["auto_augment"] or aug["color_jitter"]):
        print(
            f"fine-tuning {len(mean)}-channel data: RandAugment and colour jitter (RGB "
            "operations) are left out"
        )
    train, val = build.build_datasets(job.data, train_tf, val_tf)
    names = class_names(train)
    num_classes = job.num_classes = count_classes(train, names, job.num_classes)
    with open_dict(cfg):
        cfg.num_classes = job.num_classes  # config.yaml records what was counted
    build.save_resolved_config(cfg, run_dir)
    build.record_start(run_dir)

    encoder = SwinV2Encoder(model_cfg)
    if job.pretrained:
        load_pretrained_encoder(encoder, job.pretrained)
    id2label = dict(enumerate(names)) if names is not None else None
    model = SwinV2Classifier(
        encoder, num_classes, id2label=id2label, label_smoothing=job.mixup.label_smoothing
    )
    set_normalization(model, mean, std)  # into its checkpoints, exports and predict
    mixup = build_mixup(num_classes, **asdict(job.mixup))
    task = FinetuneTask(
        model, job.optim, job.scheduler, batch_size=job.batch_size, mixup=mixup, compile=job.compile
    )
    extra = []
    if job.ema:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        extra.append(EMAWeightAveraging(decay=job.ema))
    build.check_disk(cfg, model)
    ckpt = build.resume_path(job.resume, run_dir)
    trainer = build.build_trainer(cfg, callbacks=extra, resume=ckpt)
    datamodule = build.build_datamodule(
        train, val, batch_size=job.batch_size, num_workers=job.num_workers, seed=job.seed
    )
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if "val/top1" in metrics:
        print(
            f"validation: top-1 {metrics['val/top1']:.4f}, top-5 {metrics['val/top5']:.4f} "
            f"(epoch {trainer.current_epoch - 1}, run dir {run_dir})"
        )
    return metrics


@command("finetune")
def main(cfg: DictConfig) -> None:
    finetune(cfg)


if __name__ == "__main__":
    main()
