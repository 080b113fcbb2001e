"""Every start of a run appends what produced it to `<run dir>/starts.jsonl`
(training/provenance.py): the code's commit in a checkout, the libraries, the command line."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata

import torch
from helpers.config import FAST, REPO, compose_config

from simmim_swinv2.pretrain import pretrain
from simmim_swinv2.training.provenance import summary


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_each_start_appends_the_code_libraries_and_command_line(tmp_path):
    pretrain(compose_config("pretrain", tmp_path, [*FAST, "trainer.max_epochs=1"]))
    pretrain(compose_config("pretrain", tmp_path, [*FAST, "trainer.max_epochs=2"]))  # resumed
    starts = [json.loads(line) for line in (tmp_path / "starts.jsonl").read_text().splitlines()]
    assert len(starts) == 2
    assert [s["overrides"][-1] for s in starts] == ["trainer.max_epochs=1", "trainer.max_epochs=2"]
    first = starts[0]
    assert first["libraries"]["torch"] == torch.__version__.split("+")[0]
    assert first["libraries"]["lightning"] == metadata.version("lightning")
    assert first["code"]["version"] == metadata.version("simmim-swinv2")
    if (REPO / ".git").exists():  # a checkout: its commit, and whether tracked files changed
        assert first["code"]["commit"] == _git("rev-parse", "HEAD")
        changed = bool(_git("status", "--porcelain", "--untracked-files=no"))
        assert first["code"]["uncommitted_changes"] is changed
        assert f"(git {first['code']['commit'][:8]}" in summary(first)
    assert first["devices"] and first["python"] == platform.python_version()
    assert first["argv"] == sys.argv  # in-process here; a command's own line under Hydra
