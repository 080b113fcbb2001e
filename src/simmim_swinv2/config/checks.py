"""Checks of a composed config that fail fast, naming the fix, before any data or model is built:
what a value's type cannot say (the schema, `config.schema`, has checked types and keys at
composition)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import ConfigError
from .machine import native_bf16_cpu
from .signature import describe, matches

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # data.transforms'


def data_normalization(data, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel `(mean, std)` of a data source's config (`data.mean` / `data.std`, a node or
    its typed object) for a model of `in_chans` channels: null = ImageNet's for 3 channels; any
    other count needs them."""
    from ..data.transforms import check_normalization

    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    mean, std = get("mean", None), get("std", None)
    if mean is None and std is None:
        if in_chans == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        raise ConfigError(
            f"model.in_chans={in_chans} needs data.mean and data.std ({in_chans} values each, or "
            f"one for all): compute them with `python -m simmim_swinv2.stats channels={in_chans} "
            "data=…` (it prints the overrides)"
        )
    if mean is None or std is None:
        raise ConfigError(
            f"data.mean={mean} and data.std={std}: give both, or neither (ImageNet's, 3 channels)"
        )
    try:
        return check_normalization(list(mean), list(std), in_chans)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def model_normalization(model, data) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """What a loaded model's inputs are normalised with: its own record
    (`weights.meta.normalization`), else the data source's (`data_normalization`)."""
    if getattr(model, "pixel_mean", None) is not None:
        return tuple(model.pixel_mean), tuple(model.pixel_std)
    from ..models import encoder_of

    return data_normalization(data, encoder_of(model).cfg.in_chans)


def _required_data_keys(data) -> list[str]:
    """A data source's keys that its builders need and nobody gave (`data=hf` without data.path,
    `data=folder` without data.root): found when the data node does not resolve, named by key
    instead of OmegaConf's trace."""
    if not isinstance(data, DictConfig):
        return []
    try:
        OmegaConf.to_container(data, resolve=True)
        return []
    except OmegaConfBaseException as err:
        unset = [
            k for k in data.keys() if OmegaConf.is_missing(data, k) or data._get_node(k)._is_none()
        ]
        named = [k for k in unset if f"${{..{k}}}" in str(err) or f"data.{k}" in str(err)]
        # anything else resolves later (evaluate's img_size comes from the checkpoint) or fails
        # where it is used
        return [f"data.{k} is required by this data source: add data.{k}=..." for k in named]


def _no_root_without_a_folder(data) -> None:
    """`data.root=photos` on a source that reads no folder (the default digits, synthetic): the
    newcomer's `data=folder` left out."""
    from .schema import DataConfig

    if not isinstance(data, DictConfig) or OmegaConf.get_type(data) is not DataConfig:
        return
    if data.get("root") is None:
        return
    try:
        source = f"data={HydraConfig.get().runtime.choices.data}"
    except (ValueError, AttributeError):  # composed outside a command
        source = "this data source"
    raise ConfigError(
        f"data.root={data.root} is given but {source} reads no folder (digits: the bundled images; "
        f"synthetic: generated): add data=folder data.root={data.root} (class subfolders, "
        "torchvision's ImageFolder layout, or images alone), or use data=webdataset / data=hf"
    )


def check_values(cfg: DictConfig) -> None:
    """The values whose type OmegaConf cannot check at composition (the unions of a schema's
    `__unions__`: `model.window_size` is an int or one per stage, `trainer.precision` one of
    Lightning's names), against their annotation; one error names every wrong key and what it
    takes."""
    problems: list[str] = []

    def walk(node: DictConfig, path: str) -> None:
        unions = getattr(OmegaConf.get_type(node), "__unions__", {})
        for key in node.keys():
            child, full = node._get_node(key), f"{path}.{key}" if path else str(key)
            if OmegaConf.is_missing(node, key) or child is None:
                continue
            if key in unions:
                try:
                    value = node[key]
                # an interpolation that resolves only later (evaluate's img_size)
                except Exception:  # noqa: BLE001
                    continue
                if isinstance(value, (DictConfig, ListConfig)):
                    value = OmegaConf.to_container(value, resolve=True)
                if not matches(value, unions[key]):
                    problems.append(f"{full}={value!r}: expected {describe(unions[key])}")
            elif (
                isinstance(child, DictConfig)
                and not child._is_none()
                and not child._is_interpolation()
            ):
                walk(child, full)

    walk(cfg, "")
    _no_root_without_a_folder(cfg.get("data"))
    if required := _required_data_keys(cfg.get("data")):
        raise ConfigError("; ".join(required))
    if problems:
        raise ConfigError(
            "wrong value" + ("s" if len(problems) > 1 else "") + ": " + "; ".join(problems)
        )


def model_config(cfg: DictConfig):
    """The model's `SwinV2Config`; it validates itself (sizes against the encoder stride, heads,
    windows), and its complaint comes back as a ConfigError before any work starts."""
    try:
        return instantiate(cfg.model)
    # hydra wraps the ValueError; its message names the problem and the fix
    except Exception as err:
        raise ConfigError(f"{err.__cause__ or err}") from err


def check_schedule(scheduler: DictConfig) -> None:
    """A multistep schedule needs its steps (`scheduler=multistep` alone keeps a cosine recipe's
    empty milestones)."""
    if scheduler.name == "multistep" and not scheduler.milestones:
        raise ConfigError(
            "scheduler.name=multistep needs scheduler.milestones (epochs at which the LR is "
            "multiplied by scheduler.gamma), e.g. scheduler.milestones=[700] for 800 epochs"
        )


def check_pretrain_config(cfg: DictConfig) -> None:
    """Fail fast, naming the fix, on what would only break later (after data loading or model
    building)."""
    check_values(cfg)
    model = model_config(cfg)
    check_schedule(cfg.scheduler)
    try:  # MaskGenerator validates itself (divisibility, ratio)
        instantiate(cfg.mask)
    except Exception as err:
        raise ConfigError(f"{err.__cause__ or err}") from err
    if cfg.mask.input_size != cfg.img_size:
        raise ConfigError(
            f"mask.input_size={cfg.mask.input_size} differs from img_size={cfg.img_size}: "
            "leave mask.input_size as ${img_size}"
        )
    if cfg.mask.model_patch_size != model.patch_size:
        raise ConfigError(
            f"mask.model_patch_size={cfg.mask.model_patch_size} must equal the model's patch size "
            f"({model.patch_size})"
        )
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be >= 1 (it is per device)")
    data_normalization(cfg.data, model.in_chans)
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).exists():
        raise ConfigError(
            f"resume={cfg.resume}: no such checkpoint; use auto, never or an existing path"
        )


def check_machine(cfg: DictConfig) -> None:
    """The trainer against the machine it starts on: a GPU trainer without a GPU, more GPUs than
    there are, a precision or strategy the device cannot run. Each refusal names the override that
    runs here anyway and what that run then is (a recipe brings `trainer=gpu` with its model:
    conf/model/swinv2_*.yaml)."""
    import torch

    trainer = cfg.trainer
    accelerator, precision = (
        str(trainer.get("accelerator", "auto")),
        str(trainer.get("precision", "32-true")),
    )
    strategy = trainer.get("strategy")
    target = (
        str(strategy.get("_target_", "")) if OmegaConf.is_dict(strategy) else str(strategy or "")
    )
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0 and (
        accelerator in ("gpu", "cuda") or "DeepSpeed" in target and "CPUDeepSpeed" not in target
    ):
        model = cfg.get("model") or {}
        variant = model.get("variant") if OmegaConf.is_dict(model) else None
        brought = (
            f" (model=swinv2_{variant} brings trainer=gpu: real models train on GPUs)"
            if variant
            else ""
        )
        what = (
            (
                f"the recipe as it is, {cfg.get('batch_size')} images per step at "
                f"{cfg.get('img_size')} px, on this CPU "
                + (
                    "(in bf16-mixed: it has bf16 instructions)"
                    if native_bf16_cpu()
                    else "(in 32-true: without bf16 instructions bf16 is slower)"
                )
                + ": right for trying the recipe out, far too slow to train it"
            )
            if variant
            else "a CPU run"
        )
        raise ConfigError(
            f"trainer.accelerator={accelerator}{brought}, strategy {target or 'auto'}, but this "
            f"machine has no CUDA GPU. To run here anyway add trainer=cpu: {what}; add "
            "batch_size=N img_size=N to make it smaller"
        )
    devices = trainer.get("devices", "auto")
    if gpus and accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > gpus:
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {gpus} GPU(s): set trainer.devices="
            f"{gpus} (or auto); more GPUs come from more nodes (trainer.num_nodes=N under SLURM)"
        )
    if (
        gpus
        and accelerator in ("gpu", "cuda", "auto")
        and precision.startswith("bf16")
        and not torch.cuda.is_bf16_supported()
    ):
        raise ConfigError(
            f"trainer.precision={precision} but this GPU has no bfloat16: set "
            "trainer.precision=16-mixed (fp16 with a dynamic loss scale) or 32-true"
        )
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and gpus == 0)
    if on_cpu and precision in ("16", "16-mixed", "16-true"):
        raise ConfigError(
            f"trainer.precision={precision} does not run on the CPU: set "
            + (
                "trainer.precision=bf16-mixed (bfloat16 autocast) or 32-true"
                if native_bf16_cpu()
                else "trainer.precision=32-true (this CPU has no bf16 instructions: bf16-mixed "
                "would be emulated, slower than fp32)"
            )
        )
    if on_cpu and precision.startswith("bf16") and not native_bf16_cpu():
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"trainer.precision={precision} on a CPU without bf16 instructions (AVX512-BF16 or "
            "AMX): PyTorch emulates bfloat16 here, and a training step is slower than in fp32 "
            "(SwinV2-T: 1.7x with AVX-512, 15x with AVX2 only). For speed set "
            "trainer.precision=32-true; keep bf16 only to see its numerics"
        )
