"""README.md's Python API block runs as written (on the embedded 8x8 digits instead of Fashion-MNIST)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _block(section: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    part = text[text.index(f"## {section}\n") :]
    part = part[: part.index("\n## ", 4)]
    m = re.search(rf"```{lang}\n(.*?)```", part, re.S)
    assert m, f"README section {section!r} has no ```{lang} block"
    return m.group(1)


@pytest.mark.slow
def test_python_api_block_runs_as_written_on_digits(tmp_path, monkeypatch):
    code = _block("Python API", "python")
    assert '"fashion-mnist"' in code  # the block the README shows, with the one swap below
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace('"fashion-mnist"', '"digits"'), "README.md (Python API)", "exec"), ns)
    assert ns["x_pure"].shape == ns["x"].shape and ns["logits"].shape == (len(ns["x"]), 10)
    assert ns["defense"].config.eps == 0.1  # the digits budget, from pssr.defaults
    assert (tmp_path / "runs/fmnist/report/report.json").is_file()
    assert set(ns["report"].models) == {"none", "pssr"}
