"""A job's config composed in Python exactly as `python -m simmim_swinv2.<command>` composes it on the command line:
for scripts that run several jobs in one process (scripts/knn_curve.py, scripts/pretraining_gain.py) and the tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from .. import CONFIG_DIR


def compose_job(command: str, run_dir: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """`conf/<command>.yaml` with `overrides` and `hydra.run.dir=run_dir`, as `hydra.main` hands it to the job: the
    `hydra` node set as the current HydraConfig (interpolations such as `${hydra:runtime.choices.model}` resolve)
    and removed from the job's config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(command, overrides=[f"hydra.run.dir={run_dir}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
