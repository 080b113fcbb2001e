"""The layout shows the architecture: the import contracts of `pyproject.toml`
(`[tool.importlinter]`: no import cycle among sibling packages or modules at any depth, the models
free of the training stack) hold, files are of a readable size, citations name what exists, and
the README's layout is true. import-linter (grimp) reads every `import` / `from … import`, at module
level or inside a function: a cycle through a lazy import still ties two modules together."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
from importlinter.application.use_cases import (
    _register_built_in_contract_types,
    create_report,
    read_user_options,
)
from importlinter.cli import lint_imports

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "simmim_swinv2"
# 400 lines at the 130 columns the code had until 2026-12-06: the same files at 100 columns
MAX_LINES = 500
# Files allowed past MAX_LINES (path under src/simmim_swinv2: the reason); none today.
LONG_FILES: dict[str, str] = {}


def _contracts_as_ini(root_package: str) -> str:
    """The contracts of `pyproject.toml`, for the package `root_package` instead of ours, in
    import-linter's INI form."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    rename = lambda v: str(v).replace(PACKAGE.name, root_package)  # noqa: E731

    def section(fields: dict) -> list[str]:
        return [
            f"{key} =" + "".join(f"\n    {rename(x)}" for x in value)
            if isinstance(value, list)
            else f"{key} = {rename(value)}"
            for key, value in fields.items()
        ]

    top = {k: v for k, v in config.items() if k != "contracts"}
    lines = ["[importlinter]", *section(top)]
    for i, contract in enumerate(config["contracts"]):
        lines += ["", f"[importlinter:contract:{i}]", *section(contract)]
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def _loggers_stay_enabled():
    """import-linter configures logging with `logging.config.dictConfig`, which disables every
    logger that exists then (ours too) for the rest of the process: a later test on the same worker
    would see no log records. Enable again what was enabled before."""
    loggers = logging.root.manager.loggerDict
    enabled = {n for n, lg in loggers.items() if isinstance(lg, logging.Logger) and not lg.disabled}
    yield
    for name in enabled:
        loggers[name].disabled = False


def _checks(config: Path) -> dict[str, object]:
    """import-linter's verdict on each contract of `config`: contract name -> its `ContractCheck`
    (`kept`, and `metadata`: the cycles' breaking imports, the forbidden chains). The built-in
    contract types are registered first, as `lint_imports` does (`create_report` alone does not:
    this test would pass only after another had called `lint_imports` in the same process)."""
    _register_built_in_contract_types()
    report = create_report(read_user_options(str(config)), cache_dir=None)
    return {contract.name: check for contract, check in report.get_contracts_and_checks()}


def test_the_import_contracts_hold(capsys):
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0, (
        capsys.readouterr().out
    )


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_the_code_is_formatted_and_lint_free(command):
    """`ruff` over src, tests and scripts with the settings of pyproject.toml (line length 100)."""
    out = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "src", "tests", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_the_import_contracts_catch_cycles_and_the_training_stack(tmp_path, monkeypatch):
    """The same contracts on a package that breaks each of them: two modules importing each other
    (one of them lazily, inside a function), three packages in a cycle, a model module importing
    Lightning inside a function."""
    _write(
        tmp_path / "layoutprobe",
        {
            "__init__.py": "",
            "data/__init__.py": "",
            "data/a.py": "def f():\n    from . import b\n",
            "data/b.py": "from . import a\n",
            "data/c.py": "from ..weights import load\n",
            "training/__init__.py": "from ..data import a\n",
            "weights/__init__.py": "",
            "weights/load.py": "from .. import training\n",
            "models/__init__.py": "def f():\n    import lightning\n",
        },
    )
    (tmp_path / "contracts.ini").write_text(_contracts_as_ini("layoutprobe"))
    monkeypatch.syspath_prepend(str(tmp_path))
    cycles, stack = _checks(tmp_path / "contracts.ini").values()
    assert not cycles.kept and not stack.kept
    breakers = cycles.metadata["cycle_breakers_by_package"]
    assert set(breakers) == {"layoutprobe", "layoutprobe.data"}  # the packages', the modules'
    assert breakers["layoutprobe.data"] <= {
        ("layoutprobe.data.a", "layoutprobe.data.b"),
        ("layoutprobe.data.b", "layoutprobe.data.a"),
    }
    (chains,) = stack.metadata["invalid_chains"]
    assert (chains["upstream_module"], chains["downstream_module"]) == (
        "lightning",
        "layoutprobe.models",
    )


def test_files_are_of_a_readable_size():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not set(long) - set(LONG_FILES), f"over {MAX_LINES} lines (split them): {long}"
    stale = {f for f in LONG_FILES if f not in long}
    assert not stale, f"no longer over {MAX_LINES} lines: remove {sorted(stale)} from LONG_FILES"


def test_no_file_cites_a_document_outside_the_repository():
    # spelled in parts: this file would cite them
    names = [f"{stem}.md" for stem in ("REFERENCE", "STYLE")]
    citing = [
        f"{p.relative_to(ROOT)}: {name}"
        for folder in ("src", "conf", "scripts", "slurm", "tests")
        for p in sorted((ROOT / folder).rglob("*"))
        if p.is_file() and p.suffix != ".pyc"
        for name in names
        if name in p.read_text(errors="replace")
    ]
    assert not citing, citing


def _readme_layout() -> tuple[set[str], set[str]]:
    """(packages, modules) the README's `## Layout` block lists directly under `src/simmim_swinv2/`:
    the first column of each line at the children's indent (names separated by single spaces; two or
    more end the names)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Layout\s*\n.*?^```[^\n]*\n(.*?)^```", text, re.S | re.M)
    assert match, "README.md has no fenced block after '## Layout'"
    lines = match.group(1).splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.strip().startswith("src/simmim_swinv2/")), None
    )
    assert start is not None, "the README's layout block does not show src/simmim_swinv2/"
    parent = len(lines[start]) - len(lines[start].lstrip())
    children = []
    for line in lines[start + 1 :]:
        indent = len(line) - len(line.lstrip())
        if line.strip() and indent <= parent:
            break
        children.append((indent, line.strip()))
    child = min((i for i, s in children if s), default=parent + 1)
    names = [n for i, s in children if i == child for n in re.split(r"\s{2,}", s)[0].split()]
    return {n.rstrip("/") for n in names if n.endswith("/")}, {
        n.removesuffix(".py") for n in names if n.endswith(".py")
    }


def test_readme_layout_lists_every_package_and_entry_point():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    entry_points = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    listed_packages, listed_modules = _readme_layout()
    assert (listed_packages, listed_modules) == (packages, entry_points), (
        f"README layout: missing packages {sorted(packages - listed_packages)}, modules "
        f"{sorted(entry_points - listed_modules)}; listed but absent: packages "
        f"{sorted(listed_packages - packages)}, modules {sorted(listed_modules - entry_points)}"
    )
