"""Recipes by name: `model=X data=Y` composes the published recipe of X (conf/recipe/), checked
against the sources the recipe files cite; the quickstart keeps its demo numbers; the command line,
experiment= and debug=fast still win.

Sources: SimMIM paper (arXiv 2111.09886), Swin V2 paper (arXiv 2111.09883, appendix "SwinV2-G
Settings"), the data-scaling paper (Xie et al. 2022, arXiv 2206.04664) and the official configs,
microsoft/Swin-Transformer configs/simmim/*.yaml + config.py and microsoft/SimMIM configs/*.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.config import compose_config
from hydra.utils import instantiate
from omegaconf import OmegaConf

from simmim_swinv2.config import CONFIG_DIR
from simmim_swinv2.config.checks import check_pretrain_config
from simmim_swinv2.distributed import planning
from simmim_swinv2.models import SwinV2Encoder, swinv2_config

CONF = Path(CONFIG_DIR)
REAL = ["tiny", "small", "base", "large", "huge", "giant"]
IMAGENET1K, IMAGENET22K = 1_281_167, 14_197_122  # training images

# microsoft/Swin-Transformer
# configs/simmim/simmim_pretrain__swinv2_base__img192_window12__800ep.yaml
SWINV2_B_800EP = dict(
    img=192,
    window=12,
    mask_patch=32,
    ratio=0.6,
    base_lr=1e-4,
    warmup_epochs=10,
    warmup_lr=5e-7,
    schedule="multistep",
    milestones=[700],
    epochs=800,
    drop_path=0.1,
    weight_decay=0.05,
    grad_clip=5.0,
    batch=128,
    norm_target=True,
)
# microsoft/Swin-Transformer configs/simmim/simmim_pretrain__swin_large__img192_window12__800ep.yaml
SWIN_L_800EP = dict(SWINV2_B_800EP, drop_path=0.0, norm_target=False)
PRETRAIN = {
    # none published for SwinV2-T: SwinV2-B's (the only SwinV2 SimMIM config)
    "tiny": SWINV2_B_800EP,
    # none published for SwinV2-S (microsoft/Swin-Transformer issue #294): SwinV2-B's
    "small": SWINV2_B_800EP,
    "base": SWINV2_B_800EP,
    "large": SWIN_L_800EP,
    # SimMIM paper: SwinV2-H 800 ep at 192 px, no config published: Swin-L's
    "huge": SWIN_L_800EP,
    # Swin V2 paper, appendix "SwinV2-G Settings", stage 1: 192 px, 20 epochs of ImageNet-22K-ext
    # (70M), cosine, 30,000 warmup steps, batch 9216, LR 1.4e-3 (per 512: x 512/9216), weight decay
    # 0.1, gradient clip 100.
    "giant": dict(
        img=192,
        window=12,
        mask_patch=32,
        ratio=0.6,
        base_lr=1.4e-3 * 512 / 9216,
        warmup_epochs=30_000 * 9216 / 70e6,
        warmup_lr=5e-7,
        schedule="cosine",
        milestones=[],
        epochs=20,
        drop_path=0.1,
        weight_decay=0.1,
        grad_clip=100.0,
        batch=72,
        norm_target=False,
    ),
}
# microsoft/Swin-Transformer
# configs/simmim/simmim_finetune__swinv2_base__img224_window14__800ep.yaml
SWINV2_B_FT = dict(
    img=224,
    window=14,
    pretrained_windows=[12, 12, 12, 6],
    layer_decay=0.75,
    base_lr=1.25e-3,
    warmup_epochs=20,
    warmup_lr=2.5e-7,
    min_lr=2.5e-7,
    epochs=100,
    drop_path=0.1,
    weight_decay=0.05,
    batch=128,
)
# microsoft/Swin-Transformer configs/simmim/simmim_finetune__swin_large__img224_window14__800ep.yaml
SWIN_L_FT = dict(SWINV2_B_FT, layer_decay=0.7, drop_path=0.2)
FINETUNE = {
    "tiny": SWINV2_B_FT,
    "small": SWINV2_B_FT,
    "base": SWINV2_B_FT,
    "large": SWIN_L_FT,
    "huge": SWIN_L_FT,
    "giant": dict(SWIN_L_FT, batch=64),
}
# microsoft/Swin-Transformer config.py AUG / MODEL.LABEL_SMOOTHING defaults, which the fine-tune
# configs inherit
OFFICIAL_AUGMENT = {
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "color_jitter": 0.4,
    "re_prob": 0.25,
    "scale": [0.08, 1.0],
    # config.py DATA.INTERPOLATION
    "hflip": 0.5,
    "crop_pct": 0.875,
    "interpolation": "bicubic",
}


def assert_matches(got: dict, want: dict) -> None:
    """Key by key: floats to 0.1% (a per-512 LR converted from another batch), everything else
    exactly."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        expected = pytest.approx(value, rel=1e-3) if isinstance(value, float) else value
        assert got[key] == expected, f"{key}: {got[key]!r} != {value!r}"


def pretrain(tmp_path, *overrides):
    return compose_config("pretrain", tmp_path, list(overrides))


def finetune(tmp_path, *overrides):
    return compose_config("finetune", tmp_path, list(overrides))


@pytest.mark.parametrize("variant", REAL)
def test_pretrain_recipe_is_the_published_one(variant, tmp_path):
    cfg = pretrain(tmp_path, f"model=swinv2_{variant}", "data=imagenet1k")
    want = PRETRAIN[variant]
    s, o = cfg.scheduler, cfg.optim
    got = dict(
        img=cfg.img_size,
        window=cfg.model.window_size,
        mask_patch=cfg.mask.mask_patch_size,
        ratio=cfg.mask.mask_ratio,
        base_lr=o.base_lr,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr,
        schedule=s.name,
        milestones=list(s.milestones),
        epochs=cfg.trainer.max_epochs,
        drop_path=cfg.model.drop_path_rate,
        weight_decay=o.weight_decay,
        grad_clip=o.grad_clip,
        batch=cfg.batch_size,
        norm_target=cfg.norm_target,
    )
    assert_matches(got, want)
    assert (
        cfg.img_size >= 192
        and cfg.mask.mask_patch_size == 32
        and cfg.recipe.model.startswith(f"swinv2_{variant}:")
    )
    assert cfg.recipe.data is None  # no ImageNet-1K specialisation: the recipes are written for it
    check_pretrain_config(cfg)


@pytest.mark.parametrize("variant", REAL)
def test_finetune_recipe_is_the_published_one(variant, tmp_path):
    cfg = finetune(tmp_path, f"model=swinv2_{variant}", "data=imagenet1k", "pretrained=/x")
    want = FINETUNE[variant]
    s, o = cfg.scheduler, cfg.optim
    got = dict(
        img=cfg.img_size,
        window=cfg.model.window_size,
        pretrained_windows=list(cfg.model.pretrained_window_sizes),
        layer_decay=o.layer_decay,
        base_lr=o.base_lr,
        warmup_epochs=s.warmup_epochs,
        warmup_lr=s.warmup_lr,
        min_lr=s.min_lr,
        epochs=cfg.trainer.max_epochs,
        drop_path=cfg.model.drop_path_rate,
        weight_decay=o.weight_decay,
        batch=cfg.batch_size,
    )
    assert_matches(got, want)
    assert s.name == "cosine" and cfg.recipe.model.startswith(f"swinv2_{variant}:")
    assert OmegaConf.to_container(cfg.augment, resolve=True) == OFFICIAL_AUGMENT
    assert (cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha, cfg.mixup.label_smoothing) == (
        0.8,
        1.0,
        0.1,
    )
    # pinned on any data: digits' augmentation suggestions (conf/data/digits.yaml) are the
    # quickstart's only
    digits = finetune(tmp_path, f"model=swinv2_{variant}")
    assert OmegaConf.to_container(digits.augment, resolve=True) == OFFICIAL_AUGMENT


@pytest.mark.parametrize("variant", REAL)
def test_finetune_names_the_windows_its_pretraining_used(variant, tmp_path):
    """SwinV2 moves between windows through model.pretrained_window_sizes: they must be the windows
    the variant's pretraining recipe built, per stage (the 192-px last stage is 6x6, so window 12
    clamps to 6 there)."""
    pre = pretrain(tmp_path, f"model=swinv2_{variant}", "data=imagenet1k")
    with torch.device("meta"):
        encoder = SwinV2Encoder(instantiate(pre.model))
    used = [stage.blocks[0].window_size[0] for stage in encoder.layers]
    ft = finetune(tmp_path, f"model=swinv2_{variant}", "data=imagenet1k")
    assert list(ft.model.pretrained_window_sizes) == used == [12, 12, 12, 6]


def test_imagenet22k_keeps_the_published_number_of_steps(tmp_path):
    """ImageNet-22K (14.2M images) is not the recipes' data: the (model, data) recipe keeps their
    steps. SwinV2-G: the Swin V2 paper's 20 epochs of 70M images at batch 9216 (151,900 steps,
    30,000 of warmup); the 800-epoch ImageNet-1K recipes: 500k iterations at batch 2048, as the
    data-scaling paper runs ImageNet-22K (its released models, microsoft/Swin-Transformer
    MODELHUB_simmim.md), the x0.1 step at 7/8 of the run."""
    g = pretrain(tmp_path, "model=swinv2_giant", "data=imagenet22k")
    steps = lambda epochs, batch: epochs * IMAGENET22K / batch  # noqa: E731
    assert steps(g.trainer.max_epochs, 9216) == pytest.approx(20 * 70e6 / 9216, rel=0.01)
    assert steps(g.scheduler.warmup_epochs, 9216) == pytest.approx(30_000, rel=0.01)
    assert (g.img_size, g.scheduler.name, g.recipe.data.split(":")[0]) == (
        192,
        "cosine",
        "swinv2_giant__imagenet22k",
    )
    for variant in ("tiny", "small", "base", "large", "huge"):
        one = pretrain(tmp_path, f"model=swinv2_{variant}", "data=imagenet1k")
        cfg = pretrain(tmp_path, f"model=swinv2_{variant}", "data=imagenet22k")
        assert (
            steps(cfg.trainer.max_epochs, 2048)
            == pytest.approx(one.trainer.max_epochs * IMAGENET1K / 2048, rel=0.01)
            == pytest.approx(500_000, rel=0.01)
        )
        assert steps(cfg.scheduler.warmup_epochs, 2048) == pytest.approx(
            10 * IMAGENET1K / 2048, rel=0.05
        )
        assert list(cfg.scheduler.milestones) == [cfg.trainer.max_epochs * 7 // 8]
        assert (cfg.optim.base_lr, cfg.model.window_size) == (
            one.optim.base_lr,
            one.model.window_size,
        )


def test_giant_imagenet22k_plan_is_the_192px_recipe(tmp_path):
    """`python -m simmim_swinv2.plan model=swinv2_giant data=imagenet22k` plans the composed recipe:
    192-px activations with checkpointing, ZeRO-3, and on 16 nodes of 8 GPUs the paper's batch 9216
    at LR 1.4e-3."""
    cfg = pretrain(
        tmp_path,
        "model=swinv2_giant",
        "data=imagenet22k",
        "trainer.devices=8",
        "trainer.num_nodes=16",
    )
    plan = planning.make_plan(cfg)
    at = lambda img: planning.activation_bytes_per_sample(  # noqa: E731
        swinv2_config("giant", img_size=img, window_size=12, grad_checkpointing=True), "bf16-mixed"
    )
    assert plan.act_bytes_per_sample == pytest.approx(at(192)) and at(64) < at(192) / 5
    assert (
        plan.params == pytest.approx(3.0e9, rel=0.02)
        and plan.strategy.stage == 3
        and plan.grad_checkpointing
    )
    assert plan.global_batch == 9216 and plan.lr == pytest.approx(1.4e-3, rel=1e-4)
    text = planning.format_plan(plan)
    assert "9216 = 72 per device x 8 devices x 16 nodes" in text and "0.0014 = base" in text
    assert "| input                  | 192x192 px, windows 12/12/12/6 per stage |" in text


def test_quickstart_keeps_the_demo_numbers(tmp_path):
    """No overrides: the CPU demo (conf/recipe/{pretrain,finetune}/swinv2_debug.yaml), exactly as
    before recipes."""
    pre = pretrain(tmp_path)
    assert (
        pre.model.variant,
        pre.trainer.accelerator,
        pre.data.train._target_.rsplit(".", 1)[-1],
    ) == ("debug", "cpu", "build_digits")
    assert (
        pre.img_size,
        pre.model.window_size,
        pre.mask.mask_patch_size,
        pre.optim.base_lr,
        pre.trainer.max_epochs,
        pre.scheduler.warmup_epochs,
        pre.batch_size,
        pre.scheduler.name,
    ) == (64, 4, 16, 5e-3, 8, 1, 64, "cosine")
    ft = finetune(tmp_path)
    assert (
        ft.img_size,
        ft.model.window_size,
        ft.trainer.max_epochs,
        ft.optim.base_lr,
        ft.optim.layer_decay,
        ft.model.drop_path_rate,
        ft.mixup.mixup_alpha,
        ft.mixup.cutmix_alpha,
        ft.trainer.accelerator,
    ) == (64, 4, 10, 5e-3, 0.9, 0.1, 0.0, 0.0, "cpu")
    assert pre.recipe.model.startswith("swinv2_debug:") and ft.recipe.model.startswith(
        "swinv2_debug:"
    )


@pytest.mark.parametrize("data", ["data.root=/x", "data.urls=/x.tar"])
def test_debug_fast_stays_tiny_on_other_data(data, tmp_path):
    """The test suite's fast runs on data it writes itself (tests/test_preemption.py: shards)."""
    cfg = pretrain(
        tmp_path, "debug=fast", "data=folder" if "root" in data else "data=webdataset", data
    )
    assert (
        cfg.img_size,
        cfg.batch_size,
        cfg.model.window_size,
        cfg.mask.mask_patch_size,
        cfg.trainer.max_epochs,
        cfg.trainer.limit_train_batches,
        cfg.trainer.accelerator,
    ) == (64, 8, 4, 16, 2, 3, "cpu")


def test_real_models_train_on_gpus_and_the_command_line_still_wins(tmp_path):
    """A real variant brings a GPU trainer (conf/model/swinv2_*.yaml), never the CPU default;
    trainer=, img_size=, scheduler.name=, experiment= and debug=fast all beat the recipe."""
    for variant in REAL:
        for name in ("pretrain", "finetune"):
            cfg = compose_config(name, tmp_path, [f"model=swinv2_{variant}", "data=imagenet1k"])
            assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed", (
                variant,
                name,
            )
            stage = planning.parse_strategy(cfg.trainer.strategy).stage
            assert stage == (3 if variant in ("huge", "giant") else 0), (variant, name)
    cli = pretrain(
        tmp_path,
        "model=swinv2_giant",
        "data=imagenet22k",
        "trainer=cpu",
        "img_size=224",
        "scheduler.name=multistep",
        "optim.base_lr=1e-3",
        "trainer.max_epochs=5",
    )
    assert (
        cli.trainer.accelerator,
        cli.img_size,
        cli.mask.input_size,
        cli.scheduler.name,
        cli.optim.base_lr,
        cli.trainer.max_epochs,
    ) == ("cpu", 224, 224, "multistep", 1e-3, 5)
    assert pretrain(tmp_path, "model=swinv2_base", "trainer=ddp").trainer.strategy == "ddp"
    exp = pretrain(tmp_path, "experiment=simmim_pretrain__swinv2_base__img192_window6__100ep")
    assert (
        exp.model.window_size,
        exp.scheduler.name,
        exp.optim.base_lr,
        exp.trainer.max_epochs,
    ) == (6, "cosine", 2e-4, 100)
    fast = pretrain(tmp_path, "model=swinv2_base", "debug=fast")
    assert (fast.img_size, fast.model.window_size, fast.trainer.max_epochs, fast.batch_size) == (
        64,
        4,
        2,
        8,
    )


def test_every_recipe_file_names_a_real_option():
    """The recipe groups are optional: a misnamed file would silently never apply. Each one must be
    reachable, and every model must have its pretraining and fine-tuning recipe."""
    models = {p.stem for p in (CONF / "model").glob("*.yaml")}
    data = {p.stem for p in (CONF / "data").glob("*.yaml")}
    assert {p.stem for p in (CONF / "recipe" / "pretrain").glob("*.yaml")} == models
    assert {p.stem for p in (CONF / "recipe" / "finetune").glob("*.yaml")} == models
    pairs = [p.stem.split("__") for p in (CONF / "recipe" / "pretrain_data").glob("*.yaml")]
    assert pairs and all(len(p) == 2 and p[0] in models and p[1] in data for p in pairs), pairs
