"""Formatting shared by the results tables: percentages, budgets as papers write them, result files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def pct(v: float | None) -> str:
    """An accuracy in [0, 1] as a percentage with two decimals; "—" when it is missing."""
    return "—" if v is None else f"{100 * v:.2f}%"


def eps_text(eps: float) -> str:
    """A budget as written in papers: 8/255 rather than 0.0313725."""
    k = eps * 255
    return (
        f"{round(k)}/255" if 0 < eps < 1 and abs(k - round(k)) < 1e-6 and len(f"{eps:g}") > 5 else f"{eps:g}"
    )


def load_result(root: Path, rel: str) -> dict[str, Any] | None:
    """The JSON file ``results/<rel>`` of the checkout at ``root``, or None when there is none."""
    p = Path(root) / "results" / rel
    return json.loads(p.read_text()) if p.is_file() else None
