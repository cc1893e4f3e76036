"""scripts/: the README's PSSR commands rebuilt against the configs as they are now; calibration table and plot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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
    d = _summary(
        f"pssr train-pssr --config {CONFIG} --set pssr.epochs=3 --out runs/x --no-progress",
        epochs=epochs + 7,
        w_rdrop=0.0,
    )
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
    assert (
        rt.pssr_command({"command": "pssr train-pssr --set pssr.epochs=3"})
        == "pssr train-pssr --set pssr.epochs=3"
    )


def _calibration(chosen: float, met: bool) -> dict:
    rows = [
        {"ratio": r, "removed_pixels": int(r * 64), "clean_acc": 0.9 - r, "graybox_acc": 0.5 + r}
        for r in (0.0, 0.1, 0.2)
    ]
    return {
        "kind": "pssr-calibration",
        "command": "pssr calibrate --checkpoint ck.pt --ratios 0,0.1,0.2",
        "checkpoint": "ck.pt",
        "dataset": "digits",
        "calibration": {
            "n": 96,
            "steps": 20,
            "trained_ratio": 0.1,
            "chosen": chosen,
            "constraint_met": met,
            "classifier_clean_acc": 0.95,
            "rows": rows,
        },
        "test": {
            "n": 359,
            "ratio": chosen,
            "clf_clean_acc": 0.97,
            "pssr_clean_acc": 0.9,
            "pssr_graybox_pgd_acc": 0.6,
            "adaptive_n": 50,
            "pssr_adaptive_worst_acc": 0.02,
        },
    }


def test_calibration_table_and_plot_render_from_the_json(tmp_path):
    import json

    (tmp_path / "results" / "digits" / "calibrated").mkdir(parents=True)
    (tmp_path / "results" / "digits" / "calibrated" / "a.json").write_text(
        json.dumps(_calibration(0.2, False))
    )
    rt = _results_table()
    rt.ROOT = tmp_path
    rows = rt.calibrations()
    assert len(rows) == 3  # header, rule, one run
    assert "0.1 -> **0.2** (bound not met)" in rows[2] and "0.2: 70.0 / 70.0" in rows[2]
    assert "| 359 | 97.00% | 90.00% | 60.00% | 2.00% (50) |" in rows[2]
    spec = importlib.util.spec_from_file_location(
        "plot_calibration", ROOT / "scripts" / "plot_calibration.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "fig.png"
    assert mod.main(["--results", str(tmp_path / "results"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mod.main(["--results", str(tmp_path / "empty"), "--out", str(out)]) == 1


def test_evaluations_table_flags_reports_that_cover_few_classes(tmp_path, monkeypatch):
    import gzip
    import json

    rt = _results_table()
    monkeypatch.setattr(rt, "ROOT", tmp_path)

    def report(name: str, labels: list[int], gz: bool) -> None:
        d = tmp_path / "results" / "ds" / name
        d.mkdir(parents=True)
        recs = "".join(json.dumps({"label": lab, "correct": True}) + "\n" for lab in labels)
        fname = "records.jsonl.gz" if gz else "records.jsonl"
        (d / fname).write_bytes(gzip.compress(recs.encode()) if gz else recs.encode())
        summary = {"clean_accuracy": 1.0, "worst_case": {}, "flagged": False}
        (d / "report.json").write_text(
            json.dumps(
                {"models": {"m": {"summary": summary}}, "records_file": fname, "config": {"n": len(labels)}}
            )
        )

    report("all", list(range(10)) * 3, gz=True)
    report("sorted", [0] * 30, gz=False)
    rows = [r for r in rt.evaluations() if r.startswith("| [results/ds/")]
    assert rows[0].endswith("| 30 |") and rows[1].endswith("| 30 (⚠ 1 of 10 classes) |")


def test_evaluations_table_marks_partial_reports_and_gives_the_finishing_command(tmp_path, monkeypatch):
    import json

    rt = _results_table()
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    d = tmp_path / "results" / "ds" / "p"
    d.mkdir(parents=True)
    (d / "records.jsonl").write_text(json.dumps({"label": 0, "correct": True}) + "\n")
    summary = {"clean_accuracy": 1.0, "worst_case": {}, "flagged": False}
    models = {
        "done": {"summary": summary},
        "late": {
            "summary": {**summary, "clean_accuracy": None},
            "pending": {"clean": "not started", "paper/pgd": "x"},
        },
    }
    (d / "report.json").write_text(
        json.dumps(
            {
                "models": models,
                "records_file": "records.jsonl",
                "config": {"n": 1, "complete": False},
                "metadata": {"command": "pssr evaluate --out r --only late --report-only"},
            }
        )
    )
    lines = rt.evaluations()
    rows = [r for r in lines if r.startswith("| [results/ds/")]
    assert len(rows) == 1 and "| done |" in rows[0] and rows[0].endswith("| 1 (partial) |")
    cmd = next(r for r in lines if r.startswith("- `results/ds/p`"))
    assert (
        "`pssr evaluate --out r`" in cmd and "partial: 2 units pending" in cmd and "not started: late" in cmd
    )


def _preset_report(tmp_path, complete: bool) -> None:
    import json

    def ev(norm: str, eps: float, attack: str) -> dict:
        summary = {"clean_accuracy": 0.9, "worst_case": {}, "flagged": False}
        models = {"none": {"summary": summary}, "pssr": {"summary": {**summary, "flagged": True}}}
        if not complete:
            models["late"] = {
                "summary": {**summary, "clean_accuracy": None},
                "pending": {"clean": "not started"},
            }
        res = [
            {"model": m, "attack": "clean", "threat_model": "clean", "eps": 0.0, "accuracy": 0.9, "n": 10}
            for m in ("none", "pssr")
        ]
        res += [
            {"model": m, "attack": a, "threat_model": "paper", "eps": eps, "accuracy": acc, "n": 10}
            for m, acc in (("none", 0.1), ("pssr", 0.7))
            for a in (attack, "worst-case")
        ]
        return {"models": models, "results": res, "config": {"n": 10, "complete": complete}}

    d = tmp_path / "results" / "digits"
    d.mkdir(parents=True)
    (d / "report.json").write_text(
        json.dumps(
            {
                "command": "pssr reproduce --preset digits --report-only",
                "evaluations": {"linf": ev("linf", 8 / 255, "pgd"), "l2": ev("l2", 1.0, "ddn-l2")},
            }
        )
    )


def test_preset_tables_render_each_norm_and_mark_a_partial_preset(tmp_path, monkeypatch):
    rt = _results_table()
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    _preset_report(tmp_path, complete=True)
    lines = rt.presets()
    assert lines[0].startswith("#### `digits` (L-inf, L2; n = 10")
    assert "`pssr reproduce --preset digits`" in lines  # --report-only is not the reproducing command
    head = [ln for ln in lines if ln.startswith("| defense |")]
    assert head == ["| defense | clean | PGD | worst case |", "| defense | clean | DDN | worst case |"]
    assert "| pssr (flagged) | 90.00% | 70.00% | 70.00% |" in lines
    assert not any("partial" in ln for ln in lines)

    _preset_report(tmp_path / "p", complete=False)
    monkeypatch.setattr(rt, "ROOT", tmp_path / "p")
    cmd = next(ln for ln in rt.presets() if ln.startswith("`pssr reproduce"))
    assert "**partial** (2 units pending; not evaluated yet, L-inf: late; L2: late)" in cmd
    assert not any("whole" in ln for ln in rt.presets())  # reports written before clean_full_split


def test_preset_tables_give_the_whole_split_clean_accuracy(tmp_path, monkeypatch):
    import json

    rt = _results_table()
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    _preset_report(tmp_path, complete=True)
    path = tmp_path / "results" / "digits" / "report.json"
    d = json.loads(path.read_text())
    d["clean_full_split"] = {
        "none": {"n": 359, "correct": 300, "accuracy": 300 / 359},
        "pssr": {"pending": True},
    }
    path.write_text(json.dumps(d))
    line = next(ln for ln in rt.presets() if "whole" in ln)
    assert (
        line
        == "Clean accuracy on the **whole** test split (359 images; the tables attack the first 10): none 83.57%"
    )


def test_update_script_rewrites_only_the_marked_block_and_relinks_for_docs(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "update_readme_results", ROOT / "scripts" / "update_readme_results.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    page = tmp_path / "page.md"
    page.write_text(f"before\n{mod.BEGIN}\nold\n{mod.END}\nafter\n")
    mod.replace_block(page, mod.relink("[r](results/a/report.md) ![f](docs/figures/x.png)"))
    assert (
        page.read_text()
        == f"before\n{mod.BEGIN}\n[r](../results/a/report.md) ![f](figures/x.png)\n{mod.END}\nafter\n"
    )
    page.write_text("no markers")
    with pytest.raises(SystemExit, match="markers are missing"):
        mod.replace_block(page, "x")


def test_budgets_read_as_papers_write_them():
    rt = _results_table()
    assert [rt._eps(e) for e in (8 / 255, 0.1, 0.3, 1.0, 2 / 255)] == ["8/255", "0.1", "0.3", "1", "2/255"]


def test_speed_tables_render_one_table_per_purification_config(tmp_path, monkeypatch):
    import json

    rt = _results_table()
    monkeypatch.setattr(rt, "ROOT", tmp_path)
    row = {
        "precision": "fp32",
        "batch": 256,
        "latency_ms": 100.0,
        "images_per_s": 2560.0,
        "peak_mib": 400.0,
        "memory_kind": "process_peak_rss",
    }
    pur = [
        {"dataset": ds, "image_shape": shape, "rows": [{**row, "model": m} for m in ("classifier", "pssr")]}
        for ds, shape in (("fashion-mnist", [1, 28, 28]), ("cifar10-jpeg", [3, 32, 32]))
    ]
    train = {
        "rows": [
            {
                "workload": "pssr",
                "model": "resnet20",
                "precision": "fp32",
                "images_per_s": 80.0,
                "seconds_per_epoch": 600.0,
            }
        ]
    }
    (tmp_path / "results").mkdir()
    for doc_pur in (pur, pur[0]):  # a list of runs, or one run (files written before the list)
        (tmp_path / "results" / "benchmarks.json").write_text(
            json.dumps(
                {
                    "environment": {
                        "cpu_model": "X",
                        "torch_threads": 2,
                        "load_average_1min_start": 0.1,
                        "load_average_1min_end": 0.2,
                    },
                    "purification": doc_pur,
                    "training": train,
                }
            )
        )
        lines = rt.benchmarks()
        titles = [ln for ln in lines if ln.startswith("Purification, ")]
        assert len(titles) == (2 if doc_pur is pur else 1) and "fashion-mnist 1x28x28" in titles[0]
        assert (
            "| pssr | — | 2560 | — | — | 400 |" in lines and "| pssr | resnet20 | fp32 | 80 | 600 |" in lines
        )


@pytest.mark.parametrize(
    "page", ["README.md", "docs/results.md", "docs/distributed.md", "docs/report-schema.md"]
)
def test_relative_links_of_the_docs_resolve(page):
    import re

    path = ROOT / page
    targets = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    local = [t.split("#")[0] for t in targets if not t.startswith(("http://", "https://", "#", "mailto:"))]
    missing = [t for t in local if t and not (path.parent / t).exists()]
    assert not missing, f"{page}: links to missing files: {missing}"
