"""Checks of a composed config that fail fast, naming the fix, before any data or model is built."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from . import ConfigError


def model_config(cfg: DictConfig):
    """The model's `SwinV2Config`; it validates itself (sizes against the encoder stride, heads, windows), and
    its complaint comes back as a ConfigError before any work starts."""
    try:
        return instantiate(cfg.model)
    except Exception as err:  # hydra wraps the ValueError; its message names the problem and the fix
        raise ConfigError(f"{err.__cause__ or err}") from err


def check_pretrain_config(cfg: DictConfig) -> None:
    """Fail fast, naming the fix, on what would only break later (after data loading or model building)."""
    model = model_config(cfg)
    try:  # MaskGenerator validates itself (divisibility, ratio)
        instantiate(cfg.mask)
    except Exception as err:
        raise ConfigError(f"{err.__cause__ or err}") from err
    if cfg.mask.input_size != cfg.img_size:
        raise ConfigError(f"mask.input_size={cfg.mask.input_size} differs from img_size={cfg.img_size}: "
                          "leave mask.input_size as ${img_size}")
    if cfg.mask.model_patch_size != model.patch_size:
        raise ConfigError(f"mask.model_patch_size={cfg.mask.model_patch_size} must equal the model's patch size "
                          f"({model.patch_size})")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be >= 1 (it is per device)")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).exists():
        raise ConfigError(f"resume={cfg.resume}: no such checkpoint; use auto, never or an existing path")
