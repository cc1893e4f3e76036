"""scripts/results_table.py: the README's PSSR commands are rebuilt against the configs as they are now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pssr.config import asdict, build, load_toml
from pssr.defense import PSSRConfig
from pssr.train.pssr_train import PSSRRunConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/pssr-digits.toml"


def _results_table():
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _summary(command: str, **pssr_changes) -> dict:
    """A training summary as `pssr train-pssr` records it: its command and its resolved config."""
    mapping = load_toml(ROOT / CONFIG)
    pssr = {**asdict(build(PSSRConfig, mapping.get("pssr"), prefix="pssr.")), **pssr_changes}
    run = asdict(build(PSSRRunConfig, mapping.get("run"), prefix="run."))
    return {"command": command, "config": {"pssr": pssr, "run": run}}


def test_pssr_command_spells_out_settings_that_differ_from_the_config_now():
    rt = _results_table()
    epochs = load_toml(ROOT / CONFIG)["pssr"]["epochs"]
    d = _summary(f"pssr train-pssr --config {CONFIG} --set pssr.epochs=3 --out runs/x --no-progress",
                 epochs=epochs + 7, w_rdrop=0.0)
    cmd = rt.pssr_command(d)
    # the recorded override is replaced by what the run really used, and every other difference added
    assert "pssr.epochs=3" not in cmd.split()
    assert f"--set pssr.epochs={epochs + 7}" in cmd and "--set pssr.w_rdrop=0.0" in cmd
    assert cmd.startswith(f"pssr train-pssr --config {CONFIG}") and "--out runs/x" in cmd


def test_pssr_command_of_a_run_with_todays_settings_has_no_pssr_overrides():
    rt = _results_table()
    cmd = rt.pssr_command(_summary(f"pssr train-pssr --config {CONFIG} --no-progress"))
    assert "--set pssr." not in cmd
    # without a config file to compare with, the recorded command is all there is
    assert rt.pssr_command({"command": "pssr train-pssr --set pssr.epochs=3"}) == "pssr train-pssr --set pssr.epochs=3"
