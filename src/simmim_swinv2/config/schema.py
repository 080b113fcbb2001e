"""The schema of every config: dataclasses registered with Hydra's ConfigStore, so that a value of
the wrong type or an unknown key fails at composition, naming the key, before any data or model is
built.

- `schema/{pretrain,finetune,evaluate,predict}`: the primary configs (conf/<command>.yaml lists its
  schema first in its defaults). They type the groups whose node has one shape: `trainer`
  (`TrainerConfig`: every `lightning.Trainer` argument), `model` (`ModelConfig`: every
  `SwinV2Config` field), `mask`, `optim` and `scheduler` (`OptimConfig`, `ScheduleConfig`:
  training/optim.py), `paths`, `plan`, `augment`, `mixup`, `recipe`.
- `schema/data/<kind>`: a data source's keys (each conf/data/*.yaml attaches its own).
- `schema/target/<name>`: the arguments of what a `_target_` node builds, made from its signature
  (`signature.schema_of`): the data builders (attached at `data.train` / `data.val`), the callbacks,
  the loggers.

The entry points hand the code below them typed objects (`OmegaConf.to_object`): an `OptimConfig`, a
data source's builders, and so on. The DictConfig stays with the Hydra-facing builders
(`training.build`, planning).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, OmegaConf

from ..data import SimMIMTransform, build_eval_transform, build_finetune_transform, build_mixup
from ..models.config import SwinV2Config, variant_spec
from ..training.optim import ConfigEnum, OptimConfig, ScheduleConfig
from .compose import usage
from .machine import at_most_cpus, mixed_precision
from .signature import hints_of, parameters, schema_of

# ----------------------------------------------------------------------------------- _target_ nodes
# ConfigStore name (schema/target/<name>) -> (the `_target_` conf/ uses, keywords of `schema_of`).
# Parameters the code passes when it builds the object (a data set's transform, the Trainer's
# callbacks) are excluded.
TARGETS: dict[str, tuple[str, dict]] = {
    "build_digits": ("simmim_swinv2.data.build_digits", {"exclude": ("transform",)}),
    "build_folder": ("simmim_swinv2.data.build_folder", {"exclude": ("transform",)}),
    "build_hf": ("simmim_swinv2.data.build_hf", {"exclude": ("transform",)}),
    "build_imagenet1k": (
        "simmim_swinv2.data.build_imagenet1k",
        {
            "exclude": ("transform",),
            "follow": "simmim_swinv2.data.build_imagenet",
            "follow_exclude": ("variant",),
        },
    ),
    "build_imagenet22k": (
        "simmim_swinv2.data.build_imagenet22k",
        {
            "exclude": ("transform",),
            "follow": "simmim_swinv2.data.build_imagenet",
            "follow_exclude": ("variant",),
        },
    ),
    "build_synthetic": (
        "simmim_swinv2.data.build_synthetic",
        {"exclude": ("mask_generator", "transform")},
    ),
    "build_webdataset": (
        "simmim_swinv2.data.build_webdataset",
        {"follow": "simmim_swinv2.data.ShardDataset", "follow_exclude": ("transform",)},
    ),
    "MaskGenerator": ("simmim_swinv2.data.MaskGenerator", {}),
    "ModelCheckpoint": ("lightning.pytorch.callbacks.ModelCheckpoint", {}),
    # its own defaults first
    "WallClockCheckpoint": (
        "simmim_swinv2.training.callbacks.WallClockCheckpoint",
        {
            "follow": "lightning.pytorch.callbacks.ModelCheckpoint",
            "defaults": {"save_top_k": 0, "save_last": True, "enable_version_counter": False},
        },
    ),
    "Preemption": ("simmim_swinv2.training.preemption.Preemption", {}),
    "LearningRateMonitor": ("lightning.pytorch.callbacks.LearningRateMonitor", {}),
    # the monitor sets the other two
    "ThroughputMonitor": (
        "lightning.pytorch.callbacks.ThroughputMonitor",
        {
            "follow": "lightning.fabric.utilities.throughput.Throughput",
            "follow_exclude": ("available_flops", "world_size"),
        },
    ),
    "TrainThroughput": ("simmim_swinv2.training.throughput.TrainThroughput", {}),
    "ProgressLog": ("simmim_swinv2.training.progress.ProgressLog", {}),
    "BadSampleMonitor": ("simmim_swinv2.training.bad_samples.BadSampleMonitor", {}),
    "Stability": ("simmim_swinv2.training.stability.Stability", {}),
    "NumericsMonitor": ("simmim_swinv2.training.numerics.NumericsMonitor", {}),
    "ReconstructionImages": ("simmim_swinv2.training.callbacks.ReconstructionImages", {}),
    # the run's data sets
    "KNNMonitor": ("simmim_swinv2.training.knn.KNNMonitor", {"exclude": ("train", "val")}),
    "ResumableCSVLogger": ("simmim_swinv2.training.loggers.ResumableCSVLogger", {}),
    "TensorBoardLogger": ("lightning.pytorch.loggers.TensorBoardLogger", {}),
    # null: from credentials
    "WandbLogger": ("lightning.pytorch.loggers.WandbLogger", {"defaults": {"offline": None}}),
    # callbacks, logger and plugins come from their own groups and training.build
    "Trainer": ("lightning.pytorch.Trainer", {"exclude": ("callbacks", "logger", "plugins")}),
}


def _target_schema(name: str) -> type:
    target, kw = TARGETS[name]
    kw = dict(kw)
    if "follow" in kw:
        kw["follow"] = get_object(kw["follow"])
    # named after it: BuildFolderConfig, TrainerConfig
    return schema_of(get_object(target), target=target, **kw)


TARGET_SCHEMAS: dict[str, type] = {name: _target_schema(name) for name in TARGETS}
TrainerConfig = TARGET_SCHEMAS["Trainer"]
MaskConfig = TARGET_SCHEMAS["MaskGenerator"]

# ------------------------------------------------------------------------------------------ model
# The sizes a variant fixes (models/config.py VARIANTS) default to the variant's, through this
# resolver: `embed_dim: ${swinv2_variant:${.variant},embed_dim}` (overridable like any field:
# model.depths=[2,2,6,2]).
VARIANT_KEYS = ("embed_dim", "depths", "num_heads", "extra_norm_every")
_SWINV2_DEFAULTS = {name: default for name, _, default in parameters(SwinV2Config)}


def variant_value(variant: str, key: str):
    """`SwinV2Config` field `key` of the named variant (`base` or `swinv2_base`); lists for
    tuples."""
    value = variant_spec(variant)[1].get(key, _SWINV2_DEFAULTS[key])
    return list(value) if isinstance(value, tuple) else value


ModelConfig = schema_of(
    SwinV2Config,
    target="simmim_swinv2.models.swinv2_config",
    name="ModelConfig",
    defaults={
        "variant": MISSING,
        **{k: f"${{swinv2_variant:${{.variant}},{k}}}" for k in VARIANT_KEYS},
    },
)

# ------------------------------------------------------------------------------- transforms, mixing
# Pretraining: SimMIMTransform's crop, flip and normalisation (its defaults: microsoft/SimMIM
# data/data_simmim.py). The normalisation (mean, std) is the data's: data.mean / data.std.
PretrainAugmentConfig = schema_of(
    SimMIMTransform,
    exclude=("input_size", "mask_generator", "mean", "std"),
    name="PretrainAugmentConfig",
)
# Fine-tuning: the train transform's arguments and the eval transform's crop_pct.
FinetuneAugmentConfig = schema_of(
    build_finetune_transform,
    exclude=("input_size", "mean", "std"),
    name="FinetuneAugmentConfig",
    extra=parameters(build_eval_transform, exclude=("input_size", "mean", "std")),
)
# data.augment: a source's suggestions
AugmentHints = hints_of(FinetuneAugmentConfig, "AugmentHints")
MixupConfig = schema_of(build_mixup, exclude=("num_classes",), name="MixupConfig")


# ------------------------------------------------------------------------------------- data sources
# Every source's per-channel input normalisation (data/transforms.py check_normalization): null =
# ImageNet's for 3 channels; other channel counts (model.in_chans) give them, one value or one per
# channel (`python -m simmim_swinv2.stats` computes them from the data).
@dataclass
class DataConfig:
    """A source that needs no location (digits, synthetic)."""

    mean: list[float] | None = None
    std: list[float] | None = None
    # fine-tuning: classes of the source (null: set num_classes=N)
    num_classes: int | None = None
    train: Any = MISSING  # the builder's `_target_` node (schema/target/<builder>)
    val: Any = None  # the same, or null: no validation
    # fine-tuning augmentation this source suggests (conf/finetune.yaml)
    augment: AugmentHints | None = None
    # no `val`: hold this fraction of train out (training.build.build_datasets)
    val_split: float | None = None
    # which samples: fixed across runs, ranks and resumes (not the run's seed)
    val_split_seed: int = 0
    # read by none of these sources: there so that `data.root=…` without `data=folder` is refused
    # naming that fix (config.checks), not as an unknown key
    root: str | None = None


@dataclass
class FolderDataConfig:
    """Image folders: a root (required for `data=folder`, from the environment for the ImageNet
    presets), and the listing of their files (data/listing.py)."""

    root: str | None = None
    # image folders for validation, built like `train` (when `val` is null)
    val_root: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_classes: int | None = None
    listing_dir: str | None = None
    listing: str = "auto"
    train: Any = MISSING
    val: Any = None
    augment: AugmentHints | None = None
    val_split: float | None = None
    val_split_seed: int = 0


@dataclass
class ShardDataConfig:
    """WebDataset shards: a brace pattern or a list of them."""

    __unions__ = {"urls": str | list[str]}  # checked by config.checks.check_values
    urls: Any = MISSING
    mean: list[float] | None = None
    std: list[float] | None = None
    num_classes: int | None = None
    train: Any = MISSING
    val: Any = None
    augment: AugmentHints | None = None
    val_split: float | None = None
    val_split_seed: int = 0


@dataclass
class HFDataConfig:
    """A Hugging Face `datasets` data set (data/hf.py): where it is, its splits and its columns."""

    __unions__ = {"val_split": str | float | None}  # checked by config.checks.check_values
    path: str = MISSING
    split: str = "train"
    val_split: Any = None
    val_split_seed: int = 0
    image_column: str | None = "auto"
    label_column: str | None = "auto"
    streaming: bool = False
    max_samples: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_classes: int | None = None
    train: Any = MISSING
    val: Any = None
    augment: AugmentHints | None = None


DATA_SCHEMAS = {
    "plain": DataConfig,
    "folder": FolderDataConfig,
    "shards": ShardDataConfig,
    "hf": HFDataConfig,
}


# ------------------------------------------------------------------------------------- the commands
@dataclass
class PathsConfig:
    root: str = "outputs"
    run_dir: str = MISSING


@dataclass
class PlanConfig:
    gpu_memory_gb: float | None = None  # null: detect (CUDA only)
    # refuse a run whose estimated memory per GPU exceeds the GPU's
    enforce: bool = True


@dataclass
class PretrainRecipe:
    model: str | None = None
    data: str | None = None


@dataclass
class FinetuneRecipe:
    model: str | None = None


@dataclass
class PretrainConfig:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = MISSING
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: ScheduleConfig = field(default_factory=ScheduleConfig)
    logger: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "pretrain"
    run_name: str = MISSING
    seed: int = 0
    resume: str = "auto"
    pretrained: str | None = None
    norm_target_window: int = 47
    compile: bool = False
    recipe: PretrainRecipe = field(default_factory=PretrainRecipe)
    img_size: int = 192
    batch_size: int = 128
    num_workers: int = 8
    norm_target: bool = False
    augment: PretrainAugmentConfig = field(default_factory=PretrainAugmentConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)


@dataclass
class FinetuneConfig:
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: ScheduleConfig = field(default_factory=ScheduleConfig)
    logger: dict[str, Any] = field(default_factory=dict)
    callbacks: dict[str, Any] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "finetune"
    run_name: str = MISSING
    pretrained: str | None = None
    seed: int = 0
    resume: str = "auto"
    compile: bool = False
    num_classes: int | None = None
    ema: float | None = None
    recipe: FinetuneRecipe = field(default_factory=FinetuneRecipe)
    img_size: int = 224
    batch_size: int = 128
    num_workers: int = 8
    augment: FinetuneAugmentConfig = field(default_factory=FinetuneAugmentConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)


@dataclass
class EvaluateConfig:
    data: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "evaluate"
    checkpoint: str = MISSING
    img_size: int | None = None
    batch_size: int = 128
    num_workers: int = 2
    crop_pct: float = 0.875
    seed: int = 0
    logger: dict[str, Any] = field(default_factory=dict)


class OutputFormat(ConfigEnum):
    text = "text"
    json = "json"


@dataclass
class PredictConfig:
    __unions__ = {"images": str | list[str]}  # checked by config.checks.check_values
    checkpoint: str = MISSING
    images: Any = MISSING  # files, folders and globs: one or a list
    top_k: int = 5
    batch_size: int = 32
    output: OutputFormat = OutputFormat.text
    device: str = "auto"


@dataclass
class ProbeConfig:
    data: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "probe"
    checkpoint: str = MISSING
    # what official / timm files do not record
    model_overrides: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None
    batch_size: int = 128
    num_workers: int = 2
    crop_pct: float = 0.875
    train_samples: int | None = None
    k: int = 20
    temperature: float = 0.07
    linear: bool = True
    seed: int = 0
    device: str = "auto"


@dataclass
class VisualizeMask:
    mask_patch_size: int | None = None
    mask_ratio: float | None = None


@dataclass
class VisualizeConfig:
    __unions__ = {"images": str | list[str]}  # checked by config.checks.check_values
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "visualize"
    checkpoint: str = MISSING
    images: Any = MISSING
    output_dir: str = MISSING
    mask: VisualizeMask = field(default_factory=VisualizeMask)
    # which to show (3 as RGB, 1 as grey); null = the first three (or one)
    channels: list[int] | None = None
    norm_target: bool | None = None
    seed: int = 0
    crop_pct: float = 1.0
    device: str = "auto"
    model_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class StatsConfig:
    data: Any = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "stats"
    channels: int = 3
    max_samples: int | None = 10000
    num_workers: int = 2
    img_size: int = 192
    seed: int = 0
    output: str = MISSING


COMMANDS = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "evaluate": EvaluateConfig,
    "predict": PredictConfig,
    "probe": ProbeConfig,
    "visualize": VisualizeConfig,
    "stats": StatsConfig,
}


def to_object(node, cls: type | None = None):
    """The typed object of a composed node (`OmegaConf.to_object`): what the code below the entry
    points gets."""
    obj = OmegaConf.to_object(node)
    if cls is not None and not isinstance(obj, cls):
        raise TypeError(
            f"expected a {cls.__name__} node, got {type(obj).__name__}: compose the config "
            "through its schema (conf/<command>.yaml lists /schema/<command> first)"
        )
    return obj


def register() -> None:
    """Store every schema in Hydra's ConfigStore, and the `swinv2_variant`, `mixed_precision` and
    `at_most_cpus` resolvers (idempotent)."""
    cs = ConfigStore.instance()
    for name, node in COMMANDS.items():
        cs.store(group="schema", name=name, node=node)
    for name, node in DATA_SCHEMAS.items():
        cs.store(group="schema/data", name=name, node=node)
    for name, node in TARGET_SCHEMAS.items():
        cs.store(group="schema/target", name=name, node=node)
    if not OmegaConf.has_resolver("swinv2_variant"):
        OmegaConf.register_new_resolver("swinv2_variant", variant_value)
    if not OmegaConf.has_resolver("mixed_precision"):
        OmegaConf.register_new_resolver("mixed_precision", mixed_precision)
    if not OmegaConf.has_resolver("at_most_cpus"):
        OmegaConf.register_new_resolver("at_most_cpus", at_most_cpus)
    if not OmegaConf.has_resolver("usage"):
        OmegaConf.register_new_resolver("usage", usage)


register()
