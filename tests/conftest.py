"""Shared fixtures and the environment every test runs in (offline, a private datasets cache);
helpers in `helpers/`."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

os.environ.setdefault("WANDB_MODE", "offline")  # the wandb service does not exist here
os.environ.setdefault("WANDB_SILENT", "true")
# transformers loads local directories only; never the hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # `datasets` (data=hf) reads local data only
# inductor's kernels compiled for this session only: its on-disk cache does not key on
# ATEN_CPU_CAPABILITY, and a FlexAttention kernel compiled under AVX-512 then read by a process
# capped at AVX2 gave 40% wrong outputs (torch 2.14)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="simmim-tests-inductor-"))
# `pytest -n 2`: one intra-op thread per worker, not 2 x 2 on 2 cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")


# The modules that take longest (`pytest --durations=30`, 2026-12-06: 90 s to 190 s each for the
# first six): started first by `pytest -n 2 --dist loadfile`, which hands whole modules to its two
# workers in collection order, so the short modules fill in at the end instead of one long module
# running alone.
LONGEST_FIRST = (
    "deepspeed",
    "distributed",
    "stability",
    "knn",
    "slurm",
    "preemption",
    "install",
    "data_listing",
    "journey",
    "data_faults",
    "checkpoints",
    "models_flex",
    "export",
)


def pytest_collection_modifyitems(config, items):
    rank = {f"tests/test_{name}.py": i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


@pytest.fixture(scope="session", autouse=True)
def hf_datasets_cache(tmp_path_factory):
    """`datasets` writes what it converts (parquet, image folders) under this session's tmp dir,
    never the user's cache: read from the environment when it is imported (here or in a subprocess),
    patched if it already was."""
    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_DATASETS_CACHE = cache
    return cache


@pytest.fixture
def clean_env(monkeypatch):
    """No rank or loader-worker variables, and whatever the test sets in `os.environ` for them
    undone after it: each is set then deleted through monkeypatch, which records it as absent (a
    bare `delenv` of an unset variable records nothing, and a RANK the test leaves behind makes
    every later run wait for a "first process")."""
    for name in ["RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"]:
        monkeypatch.setenv(name, "0")
        monkeypatch.delenv(name)
    yield monkeypatch


RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "WORLD_SIZE")


@pytest.fixture(autouse=True)
def no_rank_left_behind():
    """A test that leaves a rank variable set fails itself, rather than the next run in this process
    waiting for a first process that is not there (data/listing_shared.is_first_process)."""
    before = {v: os.environ.get(v) for v in RANK_VARIABLES}
    yield
    after = {v: os.environ.get(v) for v in RANK_VARIABLES}
    assert after == before, (
        f"the test left rank variables changed: {before} -> {after} (use monkeypatch)"
    )
