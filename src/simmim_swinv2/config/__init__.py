"""The configuration: its schema (structured configs registered with Hydra's ConfigStore, `schema`),
the checks OmegaConf cannot make (`checks`), and, re-exported from the package root, where the
configs are (`CONFIG_DIR`) and the error every check before work raises (`ConfigError`)."""

from __future__ import annotations

from .. import CONFIG_DIR, ConfigError
from . import schema  # noqa: F401 - registers the structured configs with Hydra

__all__ = ["CONFIG_DIR", "ConfigError"]
