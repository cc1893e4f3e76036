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
    assert ns["defense"].training_config.eps == 0.1  # the digits budget, from pssr.defaults
    assert (tmp_path / "runs/fmnist/report/report.json").is_file()
    assert set(ns["report"].models) == {"none", "pssr"}


# What the test adds to a command of the README's block so that it finishes in seconds on the digits
# (the commands themselves, their options and their paths are the README's).
_SHORTER = {
    "train-classifier": " --epochs 2",
    "train-pssr": " --epochs 1 --set pssr.train_subset=128 --set run.eval_n=32 --set run.adaptive_n=16"
    " --results runs/pssr-train.json",  # not the tracked results/ file the config names
}


@pytest.mark.slow
def test_command_line_block_runs_as_written_on_digits(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    lines = [ln.split("#")[0].strip() for ln in _block("Command line", "bash").splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith(("pssr demo", "pssr report"))]
    assert len(commands) >= 6 and all(c.startswith("pssr ") for c in commands)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "images" / f"{k}.png")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    for cmd in commands:
        cmd = cmd.replace("fashion-mnist", "digits").replace("--n 200", "--n 16")
        sub = cmd.split()[1]
        quiet = " --no-progress" if sub in ("train-classifier", "train-pssr", "evaluate") else ""
        cmd = f"{sys.executable} -m pssr {cmd[len('pssr ') :]}{_SHORTER.get(sub, '')}{quiet}"
        r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert (tmp_path / "runs/digits/pssr/pssr.pt").is_file()
    assert (tmp_path / "runs/digits/eval/report.json").is_file()
    assert sorted(p.name for p in (tmp_path / "purified").iterdir()) >= ["0.png", "1.png", "2.png"]
    assert (tmp_path / "runs/digits/pssr-cal.pt").is_file()
