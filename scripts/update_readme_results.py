"""Replace the block between the results markers in README.md with scripts/results_table.py's output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin (scripts/update_readme_results.py) -->", "<!-- results:end -->"

table = subprocess.run([sys.executable, str(ROOT / "scripts" / "results_table.py")], capture_output=True, text=True,
                       check=True).stdout.strip()
readme = (ROOT / "README.md").read_text()
if BEGIN in readme:
    head, rest = readme.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
else:
    head, tail = readme.split("RESULTS_TABLE", 1)
(ROOT / "README.md").write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
