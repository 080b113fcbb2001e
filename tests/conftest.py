"""Shared fixtures: the real `conf/` composed with CPU / tiny / fast overrides; data the tests make themselves."""

from __future__ import annotations

import os
import sys

import pytest

from simmim_swinv2.config.compose import compose_job

os.environ.setdefault("WANDB_MODE", "offline")  # the wandb service does not exist here
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers loads local directories only; never the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # `datasets` (data=hf) reads local data only

# A few optimizer steps of the debug model at 64 px, no worker processes, nothing printed per step.
FAST = [
    "debug=fast",
    "trainer.enable_model_summary=false",
]


def compose_config(name: str, run_dir, overrides=()):
    """Compose `conf/<name>.yaml` as `python -m simmim_swinv2.<name>` would, with `hydra.run.dir=run_dir`."""
    return compose_job(name, run_dir, overrides)


@pytest.fixture(scope="session", autouse=True)
def hf_datasets_cache(tmp_path_factory):
    """`datasets` writes what it converts (parquet, image folders) under this session's tmp dir, never the user's
    cache: read from the environment when it is imported (here or in a subprocess), patched if it already was."""
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_DATASETS_CACHE = cache
    return cache


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(name: str, overrides=(), run_dir=None):
        return compose_config(name, run_dir or tmp_path / "run", overrides)

    return _compose
