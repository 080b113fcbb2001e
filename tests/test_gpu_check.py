"""scripts/gpu_check.sh, the one blind call a lent GPU gets: its plan (order, caps, skips) as its
dry run prints it. Nothing runs; the CPU rehearsal of every part is `GPU_CHECK_REHEARSE=1`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def _dry(**env: str) -> tuple[list[tuple[str, int, bool]], str, dict[str, str]]:
    """(part, cap, may use earlier slack) rows, the caps line and each part's fate: a dry run's."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
    out = subprocess.run(
        ["bash", str(SCRIPT)],
        env={**clean, "GPU_CHECK_DRY": "1", **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [
        (m[1], int(m[2]), m[3] == "+")
        for m in re.finditer(r"^\| (\w+) \| (\d+) \| (\+?) \|", out, re.M)
    ]
    total = next(line for line in out.splitlines() if line.startswith("| caps + reserve"))
    fate = dict(re.findall(r"^(\w+): (.+)$", out, re.M))
    return rows, total, fate


def test_order_and_caps_fit_the_budget():
    rows, total, _ = _dry()
    order = [name for name, _, _ in rows]
    # the references first: no compiled or FlexAttention row before them; SwinV2-G before SwinV2-B
    for reference in ("eager_transformers", "eager_timm"):
        assert order.index(reference) < min(order.index("eager_flex"), order.index("compiled"))
        assert order.index(reference) < order.index("eager_ours")
    assert order.index("plan") < order.index("giant") < order.index("base")
    assert order[-1] == "compiled" and dict((n, c) for n, c, _ in rows)["compiled"] == 0
    assert {n for n, _, slack in rows if slack} == {"giant", "compiled"}
    assert re.match(r"\| caps \+ reserve \| 540 of the 540 s budget \|", total), total


def test_missing_package_skips_its_parts_by_name():
    _, _, fate = _dry(GPU_CHECK_MISSING="deepspeed")
    assert fate["giant"] == "skipped: needs deepspeed: not importable (see wheels and env)"
    assert fate["base"] == "runs" and fate["plan"] == "runs"


def test_caps_that_overrun_the_budget_are_flagged():
    rows, _, _ = _dry()
    giant = dict((n, c) for n, c, _ in rows)["giant"]
    _, total, _ = _dry(GPU_CHECK_CAPS=f"giant={giant + 70}")
    assert "WARNING" in total and "610 of the 540" in total
