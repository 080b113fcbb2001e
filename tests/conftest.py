"""Shared fixtures and the environment every test runs in (offline, a private datasets cache); helpers in `helpers/`."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("WANDB_MODE", "offline")  # the wandb service does not exist here
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # transformers loads local directories only; never the hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # `datasets` (data=hf) reads local data only



@pytest.fixture(scope="session", autouse=True)
def hf_datasets_cache(tmp_path_factory):
    """`datasets` writes what it converts (parquet, image folders) under this session's tmp dir, never the user's
    cache: read from the environment when it is imported (here or in a subprocess), patched if it already was."""
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_DATASETS_CACHE = cache
    return cache
