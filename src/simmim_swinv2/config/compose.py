"""The commands' configs: `command`, the `hydra.main` of every `python -m simmim_swinv2.<command>`,
and `compose_job`, the same config composed in Python, for scripts that run several jobs in one
process (scripts/knn_curve.py, scripts/pretraining_gain.py) and the tests."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from .. import CONFIG_DIR, ConfigError


def command(config_name: str) -> Callable:
    """`hydra.main` with `conf/<config_name>.yaml`. A `ConfigError` (a configuration that cannot
    work, found before any work) ends the command with its message alone, which names the fix, and
    exit status 2: a traceback would only hide it."""

    def decorate(job: Callable[[DictConfig], None]) -> Callable[[], None]:
        @functools.wraps(job)
        def run(cfg: DictConfig) -> None:
            try:
                job(cfg)
            except ConfigError as err:
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(2) from None

        return hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(run)

    return decorate


def compose_job(command: str, run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """`conf/<command>.yaml` with `overrides` and `hydra.run.dir=run_dir`, as `hydra.main` hands it
    to the job: the `hydra` node set as the current HydraConfig (interpolations such as
    `${hydra:runtime.choices.model}` resolve) and removed from the job's config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            command, overrides=[f"hydra.run.dir={run_dir}", *overrides], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
