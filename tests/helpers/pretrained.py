"""One fast pretraining run (and its transformers export) shared by the probe, visualize and
continued-pretraining tests: made once per test session, whichever module asks first."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.config import FAST, compose_config

# A larger LR than the quickstart's, without warmup: six steps of batch 8 then lower the loss
# clearly (1.55 -> 1.34)
TRAIN = [
    *FAST,
    "optim.base_lr=0.3",
    "scheduler.warmup_epochs=0",
    "callbacks.reconstructions.every_n_steps=0",
]
_MADE: dict[str, Path] = {}


@pytest.fixture
def simmim_run(tmp_path_factory) -> Path:
    """A pretraining run directory of ours (checkpoints/last.ckpt, config.yaml)."""
    if "run" not in _MADE:
        from simmim_swinv2.pretrain import pretrain

        run = tmp_path_factory.mktemp("simmim_run")
        pretrain(compose_config("pretrain", run, TRAIN))
        _MADE["run"] = run
    return _MADE["run"]


@pytest.fixture
def simmim_hf(simmim_run, tmp_path_factory) -> Path:
    """The run exported with `python -m simmim_swinv2.convert to-transformers RUN OUT` (a
    Swinv2ForMaskedImageModeling directory)."""
    if "hf" not in _MADE:
        from simmim_swinv2 import convert

        out = tmp_path_factory.mktemp("simmim_hf")
        convert.main(["to-transformers", str(simmim_run), str(out)])
        _MADE["hf"] = out
    return _MADE["hf"]
