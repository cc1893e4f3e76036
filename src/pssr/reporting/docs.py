"""The generated blocks of README.md (the presets' tables) and docs/results.md (every table).

Each page holds one block between :data:`BEGIN` and :data:`END`; :func:`update_docs` replaces what is
between them with the tables rendered from ``results/`` and leaves the rest of the page alone.
"""

from __future__ import annotations

from pathlib import Path

from pssr.reporting.tables import all_tables, preset_tables
from pssr.utils import atomic_write_text

BEGIN, END = "<!-- results:begin (pssr report --update-docs) -->", "<!-- results:end -->"


def replace_block(path: Path, table: str) -> Path:
    """Rewrite the marked block of the page at ``path`` with ``table`` (atomically)."""
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(
            f"{path}: the results markers are missing; put {BEGIN} and {END} where the tables go"
        )
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    return atomic_write_text(path, f"{head}{BEGIN}\n{table}\n{END}{tail}")


def relink(table: str) -> str:
    """Links rendered for the repository root, made relative to docs/."""
    return table.replace("](results/", "](../results/").replace("](docs/", "](")


def update_docs(root: Path) -> list[Path]:
    """Rewrite the generated blocks of ``root``'s README.md and docs/results.md; returns the pages written."""
    root = Path(root)
    return [
        replace_block(root / "README.md", preset_tables(root)),
        replace_block(root / "docs" / "results.md", relink(all_tables(root))),
    ]
