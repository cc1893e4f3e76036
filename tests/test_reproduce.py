"""The reproduction chain (classifier -> baselines -> PSSR -> evaluation -> report) on digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pssr.cli import main
from pssr.experiments.presets import PRESETS, list_presets
from pssr.experiments.reproduce import reproduce

# Tiny settings: this checks the chain and its resume, not the numbers.
TINY = (
    "classifier.epochs=2",
    "adv_train.epochs=1",
    "adv_train.eval_steps=2",
    "adv_train.steps=2",
    "pssr.epochs=1",
    "pssr.pgd_steps=2",
    "pssr.train_subset=200",
    "pssr.val_size=50",
    "run.eval_n=30",
    "run.adaptive_n=10",
    "run.eval_steps=2",
)
ATTACKS = {"linf": "fgsm,pgd-bpda", "l2": "ddn-l2"}


def test_presets_are_registered_with_their_configs():
    assert {"digits", "mnist-10k", "fashion-mnist", "cifar10-jpeg", "mnist", "cifar10", "cifar100"} <= set(
        list_presets()
    )
    with pytest.raises(ValueError, match="unknown preset"):
        PRESETS.create("imagenet")


@pytest.mark.slow
def test_digits_chain_writes_a_report_and_resumes_identically(tmp_path, one_thread, monkeypatch):
    kw = dict(
        runs_dir=tmp_path / "runs",
        results_dir=tmp_path / "out",
        quick=True,
        ablations=False,
        eval_n=24,
        overrides=TINY,
        attacks=ATTACKS,
        input_transforms=("jpeg", "median"),
        progress=False,
        calibrate=(0.0, 0.25),
        full_split_clean=True,
    )
    with pytest.raises(ValueError, match="classifier is not trained yet"):
        reproduce("digits", **kw, report_only=True)
    first = reproduce("digits", **kw)
    models = set(first["evaluations"]["linf"]["models"])
    assert models == {"none", "pgd-at", "trades", "jpeg", "median", "pssr", "pssr-calibrated"}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["evaluations"]) == {"linf", "l2"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "preset `digits`" in md and "pssr" in md
    # complete for the lists it ran, which are not the preset's full suite: the report says so
    assert report["complete"] is True and report["full_suite"] is False and report["attacks"] == ATTACKS
    assert "Not the preset's full evaluation" in md and "linf=fgsm,pgd-bpda" in md
    # clean accuracy over the whole test split beside the attacked subset's (first 24 images)
    full = report["clean_full_split"]
    assert set(full) == models and all(e["n"] > 24 for e in full.values())
    assert "## Clean accuracy, whole test split" in md and "| pssr |" in md.split("whole test split")[1]
    cal = report["training"]["pssr-calibrated"]
    assert cal["chosen_ratio"] in (0.0, 0.25) and f"removal ratio **{cal['chosen_ratio']:g}**" in md
    assert (tmp_path / "runs" / "pssr-calibrated.json").is_file()
    # the combined report's plot and records links resolve from its own folder
    import re

    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", md) + re.findall(r"Per-example records: `([^`]+)`", md)
    assert links and all((tmp_path / "out" / link).is_file() for link in links), links
    for norm in ("linf", "l2"):
        assert (tmp_path / "out" / norm / "report.json").is_file()
    # every model's worst case is at most its clean accuracy
    for info in report["evaluations"]["linf"]["models"].values():
        s = info["summary"]
        for per_eps in s["worst_case"].values():
            assert all(v <= s["clean_accuracy"] + 1e-9 for v in per_eps.values())
    # a rerun reuses every checkpoint and the saved evaluation state: identical results (the state
    # does not depend on the evaluation device, named here instead of "auto")
    import pssr.train.calibrate

    def no_recalibration(*a, **k):
        raise AssertionError("the saved calibration should be reused")

    monkeypatch.setattr(pssr.train.calibrate, "calibrate_ratio", no_recalibration)
    second = reproduce("digits", **kw, device="cpu")
    trained = report["training"]["pssr"]  # its epochs and time over all epochs, also after the rerun
    assert second["training"]["pssr"]["epochs"] == trained["epochs"] == 1 and trained["train_seconds"] > 0
    assert second["evaluations"]["linf"]["results"] == first["evaluations"]["linf"]["results"]
    assert second["evaluations"]["l2"]["results"] == first["evaluations"]["l2"]["results"]
    assert second["training"]["pssr-calibrated"] == cal
    # --report-only computes nothing: the finished run's report again; without the L2 state, a partial one
    import shutil

    import pssr.evaluation.runner as runner  # where the harness's runner creates attacks

    create_attack = runner._create_attack
    monkeypatch.setattr(runner, "_create_attack", no_recalibration)
    only = reproduce("digits", **kw, report_only=True)
    assert (
        only["complete"] is True
        and only["evaluations"]["linf"]["results"] == first["evaluations"]["linf"]["results"]
    )
    shutil.rmtree(tmp_path / "runs" / "eval-l2")
    partial = reproduce("digits", **kw, report_only=True)
    assert partial["complete"] is False and set(partial["evaluations"]) == {"linf"}
    assert "Partial report" in (tmp_path / "out" / "report.md").read_text()
    # only=: these models' rows are computed, the others' wait in the report as pending
    with pytest.raises(ValueError, match="nope not among this run's models"):
        reproduce("digits", **kw, only=("nope", "pssr"))
    with pytest.raises(ValueError, match="contradict"):
        reproduce("digits", **kw, only=("pssr",), report_only=True)
    monkeypatch.setattr(runner, "_create_attack", create_attack)
    some = reproduce("digits", **kw, only=("pssr",))
    l2 = some["evaluations"]["l2"]["models"]
    assert some["complete"] is False and "pending" not in l2["pssr"]
    assert {m for m, info in l2.items() if info.get("pending")} == set(l2) - {"pssr"}
    done = reproduce("digits", **kw)

    def untimed(rep):
        return [
            {k: v for k, v in r.items() if not k.startswith("seconds")}
            for r in rep["evaluations"]["l2"]["results"]
        ]

    assert done["complete"] is True and untimed(done) == untimed(first)  # the same numbers, computed again


def test_full_suite_is_recognised_in_any_order_and_spelling():
    from pssr.experiments.presets import FULL_SUITE, is_full_suite

    assert is_full_suite(FULL_SUITE)
    assert is_full_suite({"L2": " paper", "linf": "adaptive, paper"})
    assert not is_full_suite({"linf": "paper,adaptive"})  # no L2
    assert not is_full_suite({"linf": "paper", "l2": "paper"})
    assert not is_full_suite({"linf": "paper,adaptive,square", "l2": "paper"})


def test_cli_reproduce_rejects_unknown_preset(capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", "--preset", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_reproduce_attacks_option_picks_norms_and_lists(capsys, monkeypatch):
    import pssr.experiments.reproduce

    seen = {}

    def fake(preset, **kw):
        seen.update(kw, preset=preset)
        return {"preset": preset, "evaluations": {}, "training": {}, "complete": False}

    monkeypatch.setattr(pssr.experiments.reproduce, "reproduce", fake)
    main(["reproduce", "--preset", "digits", "--attacks", "linf=paper", "--attacks", "L2 = ddn-l2,cw-l2"])
    assert seen["attacks"] == {"linf": "paper", "l2": "ddn-l2,cw-l2"}
    main(["reproduce", "--preset", "digits"])
    assert seen["attacks"] is None  # the preset's default lists
    for bad in ("paper", "l1=paper", "linf="):
        with pytest.raises(SystemExit):
            main(["reproduce", "--preset", "digits", "--attacks", bad])
        assert "expected NORM=ATTACKS" in capsys.readouterr().err


def test_python_api_story_saves_a_self_describing_defense(tmp_path, one_thread):
    """The README's API story: train_classifier -> train_pssr -> save -> PSSR.load, no extra arguments."""
    import pssr

    data = pssr.data.load("digits")
    clf = pssr.train_classifier("tiny-cnn", data, epochs=1, progress=False)
    defense = pssr.train_pssr(clf, data, epochs=1, pgd_steps=2, train_subset=100, val_size=20, progress=False)
    path = defense.save(tmp_path / "pssr.pt")
    back = pssr.PSSR.load(path)
    x = data.test.x[:8]
    torch.testing.assert_close(back.purify(x), defense.purify(x))
    torch.testing.assert_close(back(x), defense(x))


def test_results_scripts_import_their_siblings_by_path(tmp_path):
    from pssr.experiments.loading import script_module

    ROOT = Path(__file__).resolve().parents[1]
    # the two evaluation scripts that reuse another script's attack list and evaluation
    robust = script_module(ROOT / "results/fashion-mnist/robust/evaluate.py")
    assert callable(robust.sibling_script("digits", "robust").strong_attacks)
    cifar = script_module(ROOT / "results/cifar10-jpeg/faithful/evaluate.py")
    assert callable(cifar.fmnist_script().evaluate_and_save)
    (tmp_path / "s.py").write_text("VALUE = 3\n")
    assert script_module(tmp_path / "s.py").VALUE == 3
    with pytest.raises(FileNotFoundError, match="script not found"):
        script_module(tmp_path / "missing.py")
