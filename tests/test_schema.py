"""The typed schema (simmim_swinv2/config/schema.py): a wrong type or an unknown key stops at
composition naming the key, through the real command line and through `compose`; the schemas are the
signatures they mirror (Lightning's Trainer, SwinV2Config, the data builders, callbacks and
loggers); the code below the entry points gets typed objects; knobs that had no way in (SGD,
grad_clip, SimMIMTransform's crop and flip, the schedule's flags) are reachable."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import fields
from pathlib import Path

import lightning
import pytest
import torch
import yaml
from helpers.config import FAST, compose_config
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from simmim_swinv2.config import CONFIG_DIR, ConfigError, schema
from simmim_swinv2.config.checks import check_pretrain_config, check_values
from simmim_swinv2.distributed import planning
from simmim_swinv2.models import VARIANTS, SwinV2Config, SwinV2Encoder, swinv2_config
from simmim_swinv2.training import optim
from simmim_swinv2.training.optim import OptimConfig, OptimizerName, ScheduleConfig, ScheduleName

CONF = Path(CONFIG_DIR)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# ----------------------------------------------------------------------------- fails at composition
def test_the_command_line_stops_at_composition_naming_the_key(tmp_path):
    """Through the real `hydra.main` in its own process (the cases below compose in this one): the
    error names the key and the value, and nothing is written or built."""
    run = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "simmim_swinv2.pretrain",
            "optim.base_lr=abc",
            f"hydra.run.dir={run}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=os.environ,
        timeout=300,
    )
    # Hydra's exit status for a config that does not compose (a ConfigError of ours exits with 2)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "optim.base_lr" in out.stderr and "abc" in out.stderr, out.stderr[-2000:]
    assert not run.exists()


# What composition raises, as OmegaConf's exception (the cause of Hydra's
# ConfigCompositionException): a value that does not fit the field's type or enum is a
# ValidationError on that key carrying the value; a key the schema lacks is a
# ConfigAttributeError (an override) or ConfigKeyError (a config file) naming the key and the
# schema class.
UNKNOWN_KEY = (ConfigAttributeError, ConfigKeyError)


def wrong(name: str, overrides: list[str], full_key: str):
    """`overrides` give `full_key` a value its type or enum does not take."""
    return pytest.param(name, overrides, ValidationError, full_key, None, id=f"{name}:{full_key}")


def unknown(name: str, overrides: list[str], full_key: str, schema_class: type):
    """`overrides` name `full_key`, which the schema class `schema_class` does not have."""
    return pytest.param(
        name, overrides, UNKNOWN_KEY, full_key, schema_class, id=f"{name}:{full_key}"
    )


BAD = [
    unknown("pretrain", ["optim.base_lrr=1e-3"], "optim.base_lrr", OptimConfig),
    wrong("pretrain", ["trainer.max_epochs=1.5x"], "trainer.max_epochs"),
    wrong("pretrain", ["batch_size=1.5"], "batch_size"),
    wrong("pretrain", ["model.patch_size=big"], "model.patch_size"),
    wrong("pretrain", ["model.drop_path_rate=lots"], "model.drop_path_rate"),
    wrong("pretrain", ["optim.name=lamb"], "optim.name"),  # an enum: adamw, sgd
    wrong("pretrain", ["scheduler.name=linear"], "scheduler.name"),  # cosine, multistep, constant
    wrong("pretrain", ["scheduler.warmup_prefix=maybe"], "scheduler.warmup_prefix"),
    wrong("pretrain", ["mask.mask_ratio=most"], "mask.mask_ratio"),
    wrong("pretrain", ["augment.hflip=often"], "augment.hflip"),
    wrong("pretrain", ["plan.enforce=perhaps"], "plan.enforce"),
    wrong(
        "pretrain",
        ["data=folder", "data.root=/x", "data.train.max_bad_fraction=abc"],
        "data.train.max_bad_fraction",
    ),
    wrong(
        "pretrain",
        ["data=webdataset", "data.urls=/x.tar", "data.train.read_attempts=3.5"],
        "data.train.read_attempts",
    ),
    unknown(
        "pretrain",
        ["data.train.image_sise=64"],
        "data.train.image_sise",
        schema.TARGET_SCHEMAS["build_digits"],
    ),
    wrong("pretrain", ["data.num_classes=ten"], "data.num_classes"),
    wrong("pretrain", ["callbacks.checkpoint.save_top_k=two"], "callbacks.checkpoint.save_top_k"),
    wrong(
        "pretrain",
        ["callbacks.preemption.check_every_n_steps=often"],
        "callbacks.preemption.check_every_n_steps",
    ),
    wrong(
        "pretrain",
        ["logger.csv.flush_logs_every_n_steps=x"],
        "logger.csv.flush_logs_every_n_steps",
    ),
    unknown("pretrain", ["trainer.max_epoch=3"], "trainer.max_epoch", schema.TrainerConfig),
    wrong("finetune", ["mixup.prob=half"], "mixup.prob"),
    wrong("finetune", ["augment.crop_pct=most"], "augment.crop_pct"),
    wrong("finetune", ["ema=yes"], "ema"),
    wrong("evaluate", ["checkpoint=/c", "crop_pct=abc"], "crop_pct"),
    wrong("predict", ["checkpoint=/c", "images=[a.jpg]", "output=xml"], "output"),  # text, json
    wrong("predict", ["checkpoint=/c", "images=[a.jpg]", "top_k=many"], "top_k"),
    wrong("probe", ["checkpoint=/c", "k=abc"], "k"),
    unknown(
        "visualize", ["checkpoint=/c", "images=[a.jpg]", "seedx=1"], "seedx", schema.VisualizeConfig
    ),
    wrong(
        "visualize", ["checkpoint=/c", "images=[a.jpg]", "mask.mask_ratio=most"], "mask.mask_ratio"
    ),
    wrong("pretrain", ["callbacks.knn.every_n_epochs=often"], "callbacks.knn.every_n_epochs"),
    wrong("pretrain", ["optim.reference_batch=big"], "optim.reference_batch"),
]


@pytest.mark.parametrize("name,overrides,error,full_key,schema_class", BAD)
def test_a_wrong_type_or_unknown_key_fails_at_composition(
    name, overrides, error, full_key, schema_class, tmp_path
):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(name, tmp_path, overrides)
    cause = info.value.__cause__
    assert isinstance(cause, error), repr(cause)
    assert (cause.full_key, cause.key) == (full_key, full_key.rsplit(".", 1)[-1])
    if error is ValidationError:  # the value given, as the override wrote it
        given = next(o.split("=", 1)[1] for o in overrides if o.startswith(f"{full_key}="))
        assert str(cause.value) == given
    else:
        assert cause.object_type is schema_class


def test_a_typo_in_a_config_file_fails_at_composition(tmp_path):
    """Not only the command line: a recipe or experiment file with a misspelt key stops composition,
    naming the file and the key (before the schema, it was composed and silently ignored)."""
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "typo.yaml").write_text(
        "# @package _global_\noptim:\n  weight_decy: 0.1\n"
    )
    with pytest.raises(ConfigCompositionException) as info:
        compose_config(
            "pretrain",
            tmp_path,
            [f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "experiment=typo"],
        )
    assert "experiment/typo" in str(info.value)  # the file
    # OmegaConf's error, which Hydra raised this one while handling (no explicit `from`)
    cause = info.value.__cause__ or info.value.__context__
    assert isinstance(cause, UNKNOWN_KEY), repr(cause)
    assert (cause.full_key, cause.key) == ("optim.weight_decy", "weight_decy")
    assert cause.object_type is OptimConfig


@pytest.mark.parametrize(
    "overrides,named",
    [
        (["model.window_size=big"], "model.window_size='big': expected int | tuple[int, ...]"),
        (
            ["trainer.precision=bf17"],
            "trainer.precision='bf17': expected 64 | 32 | 16 | 'transformer-engine'",
        ),
        (
            ["trainer.limit_train_batches=abc"],
            "trainer.limit_train_batches='abc': expected int | float | null",
        ),
        (
            ["model.grad_checkpointing=[true,no]"],
            "model.grad_checkpointing=[True, 'no']: expected bool | tuple[bool, ...]",
        ),
        (["data=webdataset", "data.urls=3"], "data.urls=3: expected str | list[str]"),
    ],
)
def test_unions_omegaconf_cannot_type_are_checked_before_anything_is_built(
    overrides, named, tmp_path
):
    """OmegaConf 2.3 types no unions (`int | list[int]`): those fields are `Any` in the schema and
    checked against the real annotation by `check_values`, the first thing every command does."""
    cfg = compose_config("pretrain", tmp_path, overrides)
    with pytest.raises(ConfigError, match="wrong value") as info:
        check_pretrain_config(cfg)
    assert named in str(info.value)


def test_unions_take_every_form_they_allow(tmp_path):
    cfg = compose_config(
        "pretrain",
        tmp_path,
        [
            "model.window_size=[4,4,4,2]",
            "model.pretrained_window_sizes=0",
            "model.grad_checkpointing=[true,false,true,false]",
            "trainer.precision=bf16-mixed",
            "trainer.limit_train_batches=0.5",
            "trainer.devices=[0]",
            "trainer.val_check_interval=5",
        ],
    )
    check_values(cfg)
    check_values(
        compose_config(
            "pretrain",
            tmp_path,
            ["trainer=deepspeed_zero3", "trainer.precision=16", "logger=wandb"],
        )
    )


# ------------------------------------------------------------------------------- the schemas mirror
def test_trainer_schema_is_the_installed_lightning_trainer():
    """Every `lightning.Trainer` argument (less callbacks, logger, plugins: their own groups) with
    its default, and conf/trainer/default.yaml lists each: a Lightning upgrade that adds an argument
    fails here, one that removes one fails composition."""
    signature = inspect.signature(lightning.pytorch.Trainer.__init__).parameters
    wanted = {
        n: p.default
        for n, p in signature.items()
        if n not in ("self", "callbacks", "logger", "plugins")
    }
    got = {f.name: f.default for f in fields(schema.TrainerConfig)}
    assert got.pop("_target_") == "lightning.pytorch.Trainer"
    assert got == wanted
    listed = set(OmegaConf.load(CONF / "trainer" / "default.yaml")) - {"_target_"}
    assert listed == set(wanted), (
        f"conf/trainer/default.yaml misses {set(wanted) - listed}, has extra {listed - set(wanted)}"
    )


def test_model_schema_is_swinv2config_field_for_field(tmp_path):
    """ModelConfig = SwinV2Config's fields + `_target_`; the sizes a variant fixes default to the
    variant's (so every knob is reachable: model.depths=... builds that depth)."""
    names = [f.name for f in fields(schema.ModelConfig)]
    assert names == ["_target_", *(f.name for f in fields(SwinV2Config))]
    for variant in VARIANTS:
        cfg = compose_config("pretrain", tmp_path, [f"model=swinv2_{variant}", "trainer=cpu"])
        built = instantiate(cfg.model)
        reference = swinv2_config(
            variant,
            img_size=cfg.img_size,
            window_size=cfg.model.window_size,
            drop_path_rate=cfg.model.drop_path_rate,
            grad_checkpointing=cfg.model.grad_checkpointing,
        )
        assert built == reference and built.variant == variant
        assert cfg.model.embed_dim == VARIANTS[variant]["embed_dim"] and list(
            cfg.model.depths
        ) == list(VARIANTS[variant]["depths"])
    custom = instantiate(
        compose_config(
            "pretrain",
            tmp_path,
            ["model.depths=[1,1,1,1]", "model.mlp_ratio=2.0", "model.act_layer=silu"],
        ).model
    )
    assert (custom.depths, custom.mlp_ratio, custom.act_layer, custom.embed_dim) == (
        (1, 1, 1, 1),
        2.0,
        "silu",
        32,
    )


@pytest.mark.parametrize("name", sorted(schema.TARGETS))
def test_target_schemas_are_their_signatures(name):
    """Each generated schema has exactly the target's named parameters (those it passes on through
    **kwargs included), with its defaults, less what the code passes itself."""
    target, kw = schema.TARGETS[name]
    fn = schema.get_object(target)
    follow = schema.get_object(kw["follow"]) if "follow" in kw else None
    skip = {"self", *kw.get("exclude", ())}
    expected = {
        n: p.default
        for n, p in inspect.signature(fn).parameters.items()
        if n not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    if follow is not None:
        expected |= {
            n: p.default
            for n, p in inspect.signature(follow).parameters.items()
            if n not in skip | set(kw.get("follow_exclude", ())) | set(expected)
            and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
    expected |= kw.get("defaults", {})
    got = {
        f.name: f.default if f.default_factory is NO_DEFAULT else f.default_factory()
        for f in fields(schema.TARGET_SCHEMAS[name])
    }
    assert got.pop("_target_") == target
    normalise = lambda v: (  # noqa: E731
        "???" if v is inspect.Parameter.empty else list(v) if isinstance(v, tuple) else v
    )
    assert {k: normalise(v) for k, v in got.items()} == {
        k: normalise(v) for k, v in expected.items()
    }


def _target_nodes(node: DictConfig, path: str = ""):
    """(path, node) of every `_target_` node, outermost first (a target's own arguments are its
    schema's)."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            if "_target_" in child:
                yield f"{path}{key}", child
            else:
                yield from _target_nodes(child, f"{path}{key}.")


@pytest.mark.parametrize("group", ["data", "callbacks", "logger", "trainer", "model"])
def test_every_target_node_of_every_option_is_typed_by_its_target(group, tmp_path):
    """Each `_target_` node of each option (data.train/val, every callback and logger, the trainer,
    the model, the mask) composes against the schema of what it builds."""
    for option in options(group):
        overrides = [
            f"{group}={option}",
            *{"folder": ["data.root=/x"], "webdataset": ["data.urls=/x.tar"]}.get(option, []),
        ]
        cfg = compose_config("pretrain", tmp_path, overrides)
        nodes = dict(_target_nodes(cfg))
        assert {"trainer", "model", "mask", "data.train", "callbacks.checkpoint"} <= set(nodes), (
            option,
            set(nodes),
        )
        for path, node in nodes.items():
            kind = OmegaConf.get_type(node)
            target = (
                next((f.default for f in fields(kind) if f.name == "_target_"), None)
                if kind is not dict
                else None
            )
            assert target == node._target_, (
                f"{group}={option}: {path} ({node._target_}) is typed {kind.__name__}"
            )


def test_every_data_option_has_its_source_schema(tmp_path):
    kinds = {
        "digits": schema.DataConfig,
        "synthetic": schema.DataConfig,
        "folder": schema.FolderDataConfig,
        "imagenet1k": schema.FolderDataConfig,
        "imagenet22k": schema.FolderDataConfig,
        "webdataset": schema.ShardDataConfig,
        "hf": schema.HFDataConfig,
    }
    assert set(kinds) == set(options("data"))
    for data, kind in kinds.items():
        cfg = compose_config("finetune", tmp_path, [f"data={data}"])
        assert OmegaConf.get_type(cfg.data) is kind, data


def test_every_command_and_experiment_converts_to_its_typed_object(tmp_path):
    """What the entry points do first: the whole composed config becomes its dataclass, each group
    its own."""
    cases = [
        ("pretrain", []),
        ("finetune", []),
        ("evaluate", ["checkpoint=/c", "img_size=64"]),
        ("predict", ["checkpoint=/c", "images=[a.jpg]"]),
        ("pretrain", ["model=swinv2_giant", "data=imagenet22k"]),
    ]
    cases += [
        (
            "pretrain" if e.startswith("simmim_pretrain") else "finetune",
            [f"experiment={e}", "data=imagenet1k"],
        )
        for e in options("experiment")
    ]
    for name, overrides in cases:
        job = schema.to_object(compose_config(name, tmp_path, overrides), schema.COMMANDS[name])
        if name in ("pretrain", "finetune"):
            assert isinstance(job.optim, OptimConfig) and isinstance(job.scheduler, ScheduleConfig)
            assert isinstance(job.optim.name, OptimizerName) and isinstance(
                job.scheduler.name, ScheduleName
            )
            assert (
                type(job.model) is schema.ModelConfig and type(job.trainer) is schema.TrainerConfig
            )
            assert type(job.data.train).__name__.startswith("Build")
    with pytest.raises(TypeError, match="expected a OptimConfig node"):
        schema.to_object(compose_config("pretrain", tmp_path).scheduler, OptimConfig)


# ----------------------------------------------------------------------------------- one definition
def test_the_optimizer_and_schedule_schema_is_the_one_the_code_reads(tmp_path):
    """The `optim` / `scheduler` nodes are typed by the very dataclasses the tasks receive and
    `build_optimizer` / `scheduler_from_config` read; every field reaches the optimizer or the
    schedule."""
    assert {f.name: f.type for f in fields(schema.PretrainConfig)}["optim"] in (
        "OptimConfig",
        OptimConfig,
    )
    cfg = compose_config(
        "pretrain",
        tmp_path,
        [
            "optim.name=sgd",
            "optim.momentum=0.8",
            "optim.base_lr=0.1",
            "optim.weight_decay=0.01",
            "optim.grad_clip=1.5",
            "scheduler=constant",
            "scheduler.warmup_epochs=0",
            "scheduler.scale_warmup_min=false",
        ],
    )
    assert cfg.trainer.gradient_clip_val == 1.5  # grad_clip: the Trainer clips
    job = schema.to_object(cfg, schema.PretrainConfig)
    model = SwinV2Encoder(swinv2_config("debug", img_size=64, window_size=4))
    opt = optim.build_optimizer(model, job.optim, lr_factor=2.0)
    assert (
        isinstance(opt, torch.optim.SGD)
        and opt.defaults["momentum"] == 0.8
        and opt.defaults["nesterov"]
    )
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.01} and opt.param_groups[0][
        "lr"
    ] == 0.2
    sched, warmup = optim.scheduler_from_config(
        opt, job.scheduler, total_steps=10, steps_per_epoch=5, lr_factor=2.0
    )
    assert (
        warmup == 0
        and sched.lr_lambdas[0].name == "constant"
        and type(sched.lr_lambdas[0].name) is str
    )
    adamw = optim.build_optimizer(model, OptimConfig(betas=[0.8, 0.9], eps=1e-6))
    assert (
        isinstance(adamw, torch.optim.AdamW)
        and adamw.defaults["betas"] == (0.8, 0.9)
        and adamw.defaults["eps"] == 1e-6
    )


def test_the_reference_batch_is_defined_once_and_reachable(tmp_path):
    """512 (the official recipes' `TOTAL_BATCH / 512`) is the schema's default;
    `optim.reference_batch=N` reaches the plan's LR as it reaches the task's (`scale_lr`)."""
    assert OptimConfig().reference_batch == optim.REFERENCE_BATCH == 512
    assert (
        inspect.signature(optim.scale_lr).parameters["reference_batch"].default
        == optim.REFERENCE_BATCH
    )
    for ref in (512, 256):
        cfg = compose_config(
            "pretrain",
            tmp_path,
            [
                "model=swinv2_base",
                "data=imagenet1k",
                "batch_size=128",
                f"optim.reference_batch={ref}",
            ],
        )
        plan = planning.make_plan(cfg)
        assert plan.reference_batch == ref
        assert plan.lr == pytest.approx(
            optim.scale_lr(float(cfg.optim.base_lr), plan.global_batch, ref)
        )
        assert f"/{ref}" in planning.format_plan(plan)


@pytest.mark.parametrize(
    "overrides,name",
    [
        # the recipe says multistep: the group choice wins
        (["model=swinv2_base", "scheduler=cosine"], "cosine"),
        (
            [
                "model=swinv2_giant",
                "data=imagenet22k",
                "scheduler=multistep",
                "scheduler.milestones=[50]",
            ],
            "multistep",
        ),
        (
            ["experiment=simmim_pretrain__swinv2_base__img192_window6__800ep", "scheduler=cosine"],
            "cosine",
        ),
        (["experiment=simmim_pretrain__swinv2_base__img192_window6__100ep"], "cosine"),
        (["experiment=simmim_pretrain__swinv2_base__img192_window6__800ep"], "multistep"),
        (["model=swinv2_base"], "multistep"),
        ([], "cosine"),
    ],
)
def test_a_scheduler_choice_is_never_silently_ignored(overrides, name, tmp_path):
    cfg = compose_config("pretrain", tmp_path, overrides)
    assert cfg.scheduler.name == name
    if "scheduler=cosine" in overrides:  # the recipe's other numbers stay
        assert cfg.scheduler.warmup_lr == 5e-7 and cfg.optim.base_lr == 1e-4


def test_multistep_without_milestones_fails_before_work_naming_them(tmp_path):
    cfg = compose_config("pretrain", tmp_path, ["scheduler=multistep"])
    with pytest.raises(ConfigError, match=r"scheduler.milestones=\[700\]"):
        check_pretrain_config(cfg)


@pytest.mark.slow
def test_a_run_reads_the_typed_knobs_and_writes_plain_yaml_and_safe_checkpoints(
    tmp_path, monkeypatch
):
    """End to end: optim.name=sgd, a scheduler choice and SimMIMTransform's crop/flip reach the
    objects built; the task holds the typed configs; config.yaml is plain resolved YAML; checkpoints
    load with weights_only=True."""
    from simmim_swinv2 import pretrain as entry

    seen, tasks = {}, []
    real_transform, real_task = entry.SimMIMTransform, entry.PretrainTask
    monkeypatch.setattr(
        entry, "SimMIMTransform", lambda **kw: (seen.update(kw), real_transform(**kw))[1]
    )

    class Recording(real_task):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            tasks.append(self)

    monkeypatch.setattr(entry, "PretrainTask", Recording)
    run = tmp_path / "run"
    entry.pretrain(
        compose_config(
            "pretrain",
            run,
            [
                *FAST,
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=2",
                "optim.name=sgd",
                "scheduler=multistep",
                "scheduler.milestones=[0.5]",
                "scheduler.warmup_epochs=0",
                "augment.scale=[0.9,1.0]",
                "augment.hflip=0.0",
                "augment.ratio=[1.0,1.0]",
            ],
        )
    )
    assert (seen["scale"], seen["ratio"], seen["hflip"]) == ([0.9, 1.0], [1.0, 1.0], 0.0)
    (task,) = tasks
    assert (
        type(task.optimizer_config) is OptimConfig
        and task.schedule_config.name is ScheduleName.multistep
    )
    assert isinstance(task.trainer.optimizers[0], torch.optim.SGD)
    saved = (run / "config.yaml").read_text()
    loaded = yaml.safe_load(saved)  # plain YAML: no Python tags, nothing left to resolve
    assert (
        "${" not in saved
        and loaded["optim"]["name"] == "sgd"
        and loaded["scheduler"]["name"] == "multistep"
    )
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    factor = ckpt["lr_schedulers"][0]["lr_lambdas"][0]
    assert factor["name"] == "multistep" and type(factor["name"]) is str
