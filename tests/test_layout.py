"""The layout shows the architecture: no import cycle among the package's modules or among its
packages, the network free of the training stack, files of a readable size, citations of what
exists, and a README layout that is true.

Imports are read from the source with `ast` (every `import` / `from … import`, at module level or
inside a function: a cycle through a lazy import still ties the two modules together)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "simmim_swinv2"
MAX_LINES = 400
# Files allowed past MAX_LINES (path under src/simmim_swinv2: the reason); none today.
LONG_FILES: dict[str, str] = {}
TRAINING_STACK = ("lightning", "hydra", "omegaconf", "wandb", "deepspeed")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module `path` (module `name`) imports, absolute names; for modules of our package, also
    the packages Python initialises on the way (`from ..models.config import X` runs
    `models/__init__.py` first)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(
                f"{target}.{alias.name}"
                for alias in node.names
                if f"{target}.{alias.name}" in known
            )
    ours = set()
    for target in found:
        parts = target.split(".")
        # the target and the packages above it
        ours.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    own_packages = {
        ".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1 + is_package)
    }
    return {t for t in found if t.split(".")[0] != PACKAGE.name} | {
        t for t in ours & known if t not in own_packages
    }


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """module -> the modules it imports (ours and third-party)."""
    modules = _modules()
    return {name: _imported(path, name, set(modules)) - {name} for name, path in modules.items()}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph `edges` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def _package_of(module: str) -> str:
    """`simmim_swinv2.weights.load` -> `simmim_swinv2.weights`; a top-level module is its own
    node."""
    return ".".join(module.split(".")[:2])


def test_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_reader_resolves_relative_lazy_and_package_imports(graph):
    load = graph["simmim_swinv2.weights.load"]
    assert {
        "simmim_swinv2.distributed.zero",
        "simmim_swinv2.distributed",
        "simmim_swinv2.models",
    } <= load
    assert "simmim_swinv2.weights" not in load  # its own package is not an import
    assert "simmim_swinv2.models.classifier" in graph["simmim_swinv2.models"]
    # imported inside a function
    assert "deepspeed.utils.zero_to_fp32" in graph["simmim_swinv2.distributed.zero"]


def test_no_import_cycle_among_modules(graph):
    ours = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    cycle = _cycle(ours)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_import_cycle_among_packages(graph):
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module == PACKAGE.name:
            continue
        src = _package_of(module)
        packages.setdefault(src, set()).update(
            _package_of(t) for t in targets if t in graph and _package_of(t) != src
        )
    cycle = _cycle(packages)
    assert cycle is None, f"import cycle between packages: {' -> '.join(cycle)}"


def test_models_need_neither_lightning_hydra_wandb_nor_deepspeed(graph):
    """Not in models/ itself, nor in any module of ours it imports (directly or not)."""
    seen, todo = set(), [m for m in graph if m.startswith(f"{PACKAGE.name}.models")]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += [t for t in graph[module] if t in graph]
    bad = {f"{m} imports {t}" for m in seen for t in graph[m] if t.split(".")[0] in TRAINING_STACK}
    assert not bad, sorted(bad)


def test_files_are_under_400_lines():
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
