"""Every config option composes and instantiates; bad configs fail before any work, naming the
fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.config import compose_config
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from simmim_swinv2.config import CONFIG_DIR, ConfigError
from simmim_swinv2.config.checks import check_pretrain_config
from simmim_swinv2.models import SwinV2Config
from simmim_swinv2.training.build import build_loggers

CONF = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("model", options("model"))
def test_every_model_option_builds_its_config(model, tmp_path):
    cfg = compose_config("pretrain", tmp_path, [f"model={model}"])
    built = instantiate(cfg.model)
    assert isinstance(built, SwinV2Config) and built.variant == model.removeprefix("swinv2_")
    assert built.img_size == (cfg.img_size, cfg.img_size)


EXPERIMENTS = [("pretrain", None), ("finetune", None)] + [
    ("pretrain" if e.startswith("simmim_pretrain") else "finetune", e)
    for e in options("experiment")
]


@pytest.mark.parametrize("name,experiment", EXPERIMENTS)
def test_every_experiment_composes(name, experiment, tmp_path):
    overrides = [f"experiment={experiment}"] if experiment else []
    cfg = compose_config(name, tmp_path, overrides)
    assert isinstance(instantiate(cfg.model), SwinV2Config)
    if name == "pretrain":
        check_pretrain_config(cfg)


def test_recipes_carry_the_reference_numbers(tmp_path):
    """microsoft/Swin-Transformer
    configs/simmim/simmim_pretrain__swinv2_base__img192_window12__800ep.yaml (window 12, drop path
    0.1, normalised target, base LR 1e-4, warmup 10 ep from 5e-7, x0.1 at 700) and
    simmim_finetune__swinv2_base__img224_window14__800ep.yaml (224 px / window 14 from window 12,
    layer decay 0.75, base LR 1.25e-3, warmup 20; mixup 0.8, cutmix 1.0, smoothing 0.1 from
    config.py). Every variant's recipe: tests/test_recipes.py."""
    pre = compose_config(
        "pretrain", tmp_path, ["experiment=simmim_pretrain__swinv2_base__img192_window12__800ep"]
    )
    assert (pre.img_size, pre.model.window_size, pre.model.drop_path_rate, pre.norm_target) == (
        192,
        12,
        0.1,
        True,
    )
    assert (
        pre.optim.base_lr,
        pre.scheduler.warmup_lr,
        pre.scheduler.name,
        list(pre.scheduler.milestones),
    ) == (1e-4, 5e-7, "multistep", [700])
    assert (
        pre.trainer.max_epochs,
        pre.batch_size,
        pre.mask.mask_patch_size,
        pre.mask.mask_ratio,
    ) == (800, 128, 32, 0.6)
    ft = compose_config(
        "finetune", tmp_path, ["experiment=simmim_finetune__swinv2_base__img224_window14__800ep"]
    )
    assert (ft.img_size, ft.model.window_size, ft.optim.layer_decay, ft.optim.base_lr) == (
        224,
        14,
        0.75,
        1.25e-3,
    )
    assert (
        ft.scheduler.warmup_epochs,
        ft.mixup.mixup_alpha,
        ft.mixup.cutmix_alpha,
        ft.mixup.label_smoothing,
    ) == (20, 0.8, 1.0, 0.1)
    # the fine-tune names the windows the pretraining model actually used (the 6x6 last stage clamps
    # 12 to 6)
    from simmim_swinv2.models import SwinV2Encoder

    with torch.device("meta"):
        pretrained = SwinV2Encoder(instantiate(pre.model))
    used = [stage.blocks[0].window_size[0] for stage in pretrained.layers]
    assert list(ft.model.pretrained_window_sizes) == used == [12, 12, 12, 6]


@pytest.mark.parametrize("trainer", options("trainer"))
def test_every_trainer_option_composes_and_cpu_ones_instantiate(trainer, tmp_path):
    cfg = compose_config("pretrain", tmp_path, [f"trainer={trainer}"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        assert cfg.trainer.precision == "bf16-mixed"
        return
    if "deepspeed" in str(cfg.trainer.strategy):
        return  # built in the DeepSpeed tests
    trainer_obj = instantiate(cfg.trainer, accelerator="cpu", logger=False)
    assert trainer_obj.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("logger", options("logger"))
def test_every_logger_option_instantiates(logger, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_config("pretrain", tmp_path, [f"logger={logger}"])
    loggers = build_loggers(cfg)
    names = sorted(type(lg).__name__ for lg in loggers)
    expected = {
        "csv": ["ResumableCSVLogger"],
        "tensorboard": ["TensorBoardLogger"],
        "none": [],
        "wandb": ["ResumableCSVLogger", "WandbLogger"],
    }[logger]
    assert names == expected
    if logger == "wandb":  # no credentials here: offline, never a network call
        wandb_logger = next(lg for lg in loggers if type(lg).__name__ == "WandbLogger")
        assert wandb_logger._offline is True


@pytest.mark.parametrize("data", options("data"))
def test_every_data_option_composes(data, tmp_path):
    cfg = compose_config("pretrain", tmp_path, [f"data={data}"])
    assert "train" in cfg.data and "num_classes" in cfg.data


def test_digits_and_synthetic_instantiate(tmp_path):
    for data in ("digits", "synthetic"):
        cfg = compose_config("pretrain", tmp_path, [f"data={data}"])
        train = instantiate(cfg.data.train)
        assert len(train) > 0


def test_missing_imagenet_root_fails_before_any_model_and_says_how_to_make_shards(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("SIMMIM_IMAGENET1K_ROOT", raising=False)
    from simmim_swinv2 import pretrain as entry

    built = []
    monkeypatch.setattr(entry.SimMIM, "from_config", lambda *a, **k: built.append(1))
    cfg = compose_config("pretrain", tmp_path, ["data=imagenet1k"])
    # Hydra's error from instantiating data.train, around build_imagenet1k's own
    with pytest.raises(InstantiationException) as info:
        entry.pretrain(cfg)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert "SIMMIM_IMAGENET1K_ROOT" in str(info.value.__cause__)
    assert "make_shards" in str(info.value.__cause__)
    assert not built
    cfg = compose_config(
        "pretrain", tmp_path, ["data=imagenet1k", f"data.root={tmp_path / 'empty'}"]
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(InstantiationException) as info:
        entry.pretrain(cfg)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert str(tmp_path / "empty") in str(info.value.__cause__)
    assert "make_shards" in str(info.value.__cause__)
    assert not built


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["img_size=100"], "multiple of the encoder stride 32"),
        (["mask.input_size=128"], "mask.input_size"),
        (["mask.model_patch_size=8"], "patch size"),
        (["batch_size=0"], "batch_size"),
        (["resume=/nowhere/last.ckpt"], "no such checkpoint"),
    ],
)
def test_bad_pretrain_configs_fail_before_work(overrides, match, tmp_path):
    cfg = compose_config("pretrain", tmp_path, overrides)
    with pytest.raises(ConfigError, match=match):
        check_pretrain_config(cfg)


def test_default_pretrain_is_the_cpu_quickstart(tmp_path):
    cfg = compose_config("pretrain", tmp_path)
    assert cfg.trainer.accelerator == "cpu" and cfg.model.variant == "debug"
    assert cfg.data.train._target_.endswith("build_digits")
    assert "csv" in cfg.logger and cfg.resume == "auto"


def test_finetune_augmentation_is_the_official_recipe_unless_the_data_suggests_its_own(tmp_path):
    official = {
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "color_jitter": 0.4,
        "re_prob": 0.25,
        "scale": [0.08, 1.0],
        "hflip": 0.5,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
    }

    def augment(*overrides):
        return OmegaConf.to_container(
            compose_config("finetune", tmp_path, list(overrides)).augment, resolve=True
        )

    assert augment("data=folder") == official
    assert augment() == {
        **official,
        "auto_augment": None,
        "re_prob": 0.0,
        "scale": [0.35, 1.0],
        "hflip": 0.0,
    }  # digits
    # the command line beats the data's suggestion
    assert augment("augment.hflip=0.25")["hflip"] == 0.25
    for name in options("experiment"):
        # the recipes keep the official augmentation on any data
        if name.startswith("simmim_finetune"):
            assert augment(f"experiment={name}") == official, name
