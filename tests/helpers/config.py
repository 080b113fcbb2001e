"""The real `conf/` composed as the commands compose it, and the overrides that make a run a few
fast CPU steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from simmim_swinv2.config.compose import compose_job

REPO = Path(__file__).resolve().parents[2]

# A few optimizer steps of the debug model at 64 px, no worker processes, nothing printed per step.
FAST = [
    "debug=fast",
    "trainer.enable_model_summary=false",
]


def compose_config(name: str, run_dir, overrides=()):
    """Compose `conf/<name>.yaml` as `python -m simmim_swinv2.<name>` would, with
    `hydra.run.dir=run_dir`."""
    return compose_job(name, run_dir, overrides)


def run_cli(
    module: str, *overrides: str, timeout: int = 600, env=None
) -> subprocess.CompletedProcess:
    """`python -m <module> <overrides>` from the repository root, in a fresh process; output
    captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
