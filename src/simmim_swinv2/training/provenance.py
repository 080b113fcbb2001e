"""What produced a run: each start of it (the first, each resume, each SLURM requeue) is one line of
`<run dir>/starts.jsonl` (written by `training.build.record_start`) — when, where, the command
line, the code (the package's version and, from a git checkout, its commit and whether it had
uncommitted changes), the libraries and the devices — and its short form is printed at the start.
A checkpoint found months later names the code that wrote it, without a guess."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch


def code_version() -> dict[str, object]:
    """The package's version; from a git checkout of ours (an editable install), its commit and
    whether tracked files, code or `conf/`, had changes not committed. No commit for a wheel.

    Returns:
        {"version": ..., "commit": ..., "uncommitted_changes": ...}, the last two where known.
    """
    found: dict[str, object] = {"version": _version("simmim-swinv2")}
    source = Path(__file__).resolve().parents[1]
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", "-C", str(source), *a], capture_output=True, text=True, timeout=10
        )
        top = run("rev-parse", "--show-toplevel").stdout.strip()
        project = Path(top, "pyproject.toml") if top else None
        # our checkout, not a repository the installed package happens to sit in
        if project and project.is_file() and 'name = "simmim-swinv2"' in project.read_text():
            found["commit"] = run("rev-parse", "HEAD").stdout.strip()
            status = run("status", "--porcelain", "--untracked-files=no")  # code and conf/
            found["uncommitted_changes"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):  # no git on this machine
        pass
    return found


def libraries() -> dict[str, str | None]:
    """The installed versions of what the package requires (its metadata's Requires-Dist, extras
    left out), and of transformers (the interop's) where it is installed."""
    try:
        required = metadata.requires("simmim-swinv2") or []
    except metadata.PackageNotFoundError:  # the source on a path, not installed
        required = ["torch", "lightning"]
    names = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in required if "extra ==" not in r]
    return {name: _version(name) for name in dict.fromkeys([*names, "transformers"])}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def start_record(overrides: list[str] | None = None) -> dict[str, object]:
    """This start: time, host, SLURM job, command line, code, libraries, devices."""
    cuda = torch.cuda.is_available()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart": os.environ.get("SLURM_RESTART_COUNT"),
        "argv": sys.argv,
        "overrides": overrides,
        "code": code_version(),
        "python": sys.version.split()[0],
        "libraries": libraries(),
        "cuda": torch.version.cuda if cuda else None,
        "devices": (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else [f"cpu x {os.cpu_count()}"]
        ),
    }


def summary(record: dict[str, object]) -> str:
    """`simmim-swinv2 0.1.0 (git 1a2b3c4d, uncommitted changes), torch 2.14.1, lightning 2.6.6`."""
    code = record["code"]
    git = ""
    if code.get("commit"):
        dirty = ", uncommitted changes" if code.get("uncommitted_changes") else ""
        git = f" (git {str(code['commit'])[:8]}{dirty})"
    libs = record["libraries"]
    return (
        f"simmim-swinv2 {code['version']}{git}, torch {libs['torch']}, "
        f"lightning {libs['lightning']}"
    )
