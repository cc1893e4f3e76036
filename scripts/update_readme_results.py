"""Rewrite the generated results blocks: the presets' tables and speed in README.md, every table in
docs/results.md (both rendered by scripts/results_table.py from the JSON under results/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pssr.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin (scripts/update_readme_results.py) -->", "<!-- results:end -->"


def render(*args: str) -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "results_table.py"), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def replace_block(path: Path, table: str) -> None:
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: the results markers are missing ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(path, f"{head}{BEGIN}\n{table}\n{END}{tail}")


def relink(table: str) -> str:
    """Links rendered for the repository root, made relative to docs/."""
    return table.replace("](results/", "](../results/").replace("](docs/", "](")


if __name__ == "__main__":
    replace_block(ROOT / "README.md", render("--presets"))
    replace_block(ROOT / "docs" / "results.md", relink(render()))
