"""The package as a user gets it: a wheel built from the source tree, installed non-editably, run
from elsewhere.

The wheel must carry every YAML of `conf/` (mapped into `simmim_swinv2/conf` at build time,
pyproject.toml) and every module of `src/`, and nothing machine-local (`conf/local/`). Installed
into a bare folder and put first on `PYTHONPATH`, with the working directory outside the repository,
the installed copy (not this checkout) must be the one imported, and the commands must find their
configs there: every entry point starts, `pretrain debug=fast` trains and writes its checkpoints,
`plan` prints the giant's plan at 192 px.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The commands: every top-level module of the package (`python -m simmim_swinv2.<name>`), found, not
# listed.
COMMANDS = tuple(
    sorted(p.stem for p in (REPO / "src" / "simmim_swinv2").glob("*.py") if p.stem != "__init__")
)

# Run in the installed copy: each command's `--help` in one interpreter (imports paid once), and
# which copy it is.
_START_ALL = """
import contextlib, io, runpy, sys
import simmim_swinv2
from simmim_swinv2.config import CONFIG_DIR
print("package", simmim_swinv2.__file__)
print("config_dir", CONFIG_DIR)
for name in sys.argv[1:]:
    sys.argv = [name, "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(f"simmim_swinv2.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as e:  # argparse's --help exits 0
        assert e.code in (0, None), (name, e.code)
    print("help", name, len(out.getvalue().splitlines()), out.getvalue().splitlines()[0][:60])
"""


def _pip(*args: str, cwd: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def _build_and_install(tmp: Path) -> tuple[Path, zipfile.ZipFile]:
    """A copy of the source tree (the build writes build/ and *.egg-info beside its input), built,
    installed."""
    source = tmp / "source"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, source / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    (source / "conf" / "local").mkdir(exist_ok=True)
    (source / "conf" / "local" / "default.yaml").write_text(
        "# machine-local: must not ship\nnum_workers: 1\n"
    )
    _pip(
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        str(tmp / "dist"),
        ".",
        cwd=source,
    )
    (wheel,) = (tmp / "dist").glob("simmim_swinv2-*.whl")
    _pip(
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        "--target",
        str(tmp / "site"),
        str(wheel),
        cwd=tmp,
    )
    return tmp / "site", zipfile.ZipFile(wheel)


@pytest.mark.slow
def test_wheel_installed_elsewhere_carries_the_configs_and_runs(tmp_path):
    site, wheel = _build_and_install(tmp_path / "build")
    names = set(wheel.namelist())

    # Every config and every module is in the wheel; conf/ is data (no __init__.py), conf/local/
    # stays home.
    yamls = {
        f"simmim_swinv2/conf/{p.relative_to(REPO / 'conf').as_posix()}"
        for p in (REPO / "conf").rglob("*.yaml")
        if p.relative_to(REPO / "conf").parts[0] != "local"
    }
    assert len(yamls) > 50 and yamls <= names, sorted(yamls - names)
    modules = {p.relative_to(REPO / "src").as_posix() for p in (REPO / "src").rglob("*.py")}
    assert modules <= names, (
        "packages missing from pyproject.toml [tool.setuptools] packages: "
        f"{sorted(modules - names)}"
    )
    assert not any(n.startswith("simmim_swinv2/conf/") and not n.endswith(".yaml") for n in names)
    assert not any(n.startswith("simmim_swinv2/conf/local/") for n in names)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # not this checkout's src/
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}

    def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    r = run("-c", _START_ALL, *COMMANDS)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(
        line.split(" ", 1)
        for line in r.stdout.splitlines()
        if line.startswith(("package", "config_dir"))
    )
    assert Path(lines["package"]).is_relative_to(site), lines["package"]
    assert Path(lines["config_dir"]) == site / "simmim_swinv2" / "conf"
    helps = [line.split() for line in r.stdout.splitlines() if line.startswith("help ")]
    assert {
        "pretrain",
        "finetune",
        "evaluate",
        "predict",
        "plan",
        "convert",
        "consolidate",
        "reshard",
    } <= set(COMMANDS)
    assert [h[1] for h in helps] == list(COMMANDS)
    assert all(int(h[2]) >= 5 for h in helps), helps  # a real help text each, Hydra's or argparse's

    run_dir = tmp_path / "run"
    pre = run(
        "-m",
        "simmim_swinv2.pretrain",
        "debug=fast",
        "trainer.enable_model_summary=false",
        f"hydra.run.dir={run_dir}",
    )
    assert pre.returncode == 0, pre.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "metrics.csv").is_file()
    assert not (elsewhere / "outputs").exists()  # the run went where it was told
    # an installed wheel has no commit to record, only its version (training/provenance.py)
    (start,) = [json.loads(line) for line in (run_dir / "starts.jsonl").read_text().splitlines()]
    version = metadata.version("simmim-swinv2")  # the same pyproject.toml, installed here too
    assert start["code"] == {"version": version}, start["code"]

    plan = run(
        "-m",
        "simmim_swinv2.plan",
        "model=swinv2_giant",
        "data=imagenet22k",
        f"hydra.run.dir={tmp_path / 'plan'}",
    )
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "| input                  | 192x192 px" in plan.stdout, plan.stdout
    assert "3,010,430,176" in plan.stdout and "ZeRO stage 3" in plan.stdout
