"""pssr.reporting and ``pssr report``: the results tables rendered from results/ (the README's PSSR
commands rebuilt against the configs as they are now), the docs' generated blocks, the calibration table
and plot, record compression."""

from __future__ import annotations

from pathlib import Path

import pytest

from pssr.cli import main
from pssr.config import asdict, build, load_toml
from pssr.defense import PSSRConfig
from pssr.experiments.pssr_train import PSSRRunConfig
from pssr.reporting import calibration_plot, docs, evaluations, speed, tables, training
from pssr.reporting.common import eps_text

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/pssr-digits.toml"


def _summary(command: str, **pssr_changes) -> dict:
    """A training summary as `pssr train-pssr` records it: its command and its resolved config."""
    mapping = load_toml(ROOT / CONFIG)
    pssr = {**asdict(build(PSSRConfig, mapping.get("pssr"), prefix="pssr.")), **pssr_changes}
    run = asdict(build(PSSRRunConfig, mapping.get("run"), prefix="run."))
    return {"command": command, "config": {"pssr": pssr, "run": run}}


def test_pssr_command_spells_out_settings_that_differ_from_the_config_now():
    epochs = load_toml(ROOT / CONFIG)["pssr"]["epochs"]
    d = _summary(
        f"pssr train-pssr --config {CONFIG} --set pssr.epochs=3 --out runs/x --no-progress",
        epochs=epochs + 7,
        w_rdrop=0.0,
    )
    cmd = training.pssr_command(d, ROOT)
    # the recorded override is replaced by what the run really used, and every other difference added
    assert "pssr.epochs=3" not in cmd.split()
    assert f"--set pssr.epochs={epochs + 7}" in cmd and "--set pssr.w_rdrop=0.0" in cmd
    assert cmd.startswith(f"pssr train-pssr --config {CONFIG}") and "--out runs/x" in cmd


def test_pssr_command_of_a_run_with_todays_settings_has_no_pssr_overrides():
    cmd = training.pssr_command(_summary(f"pssr train-pssr --config {CONFIG} --no-progress"), ROOT)
    assert "--set pssr." not in cmd
    # without a config file to compare with, the recorded command is all there is
    assert (
        training.pssr_command({"command": "pssr train-pssr --set pssr.epochs=3"}, ROOT)
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
    rows = training.calibrations(tmp_path)
    assert len(rows) == 3  # header, rule, one run
    assert "0.1 -> **0.2** (bound not met)" in rows[2] and "0.2: 70.0 / 70.0" in rows[2]
    assert "| 359 | 97.00% | 90.00% | 60.00% | 2.00% (50) |" in rows[2]
    out = tmp_path / "fig.png"
    assert calibration_plot.plot_calibration(tmp_path / "results", out) == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no \\*/calibrated/\\*.json under"):
        calibration_plot.plot_calibration(tmp_path / "empty", out)
    # the same through the CLI: the default output is the checkout's docs/figures/calibration.png
    out.unlink()
    assert main(["report", "--calibration-plot", str(out), "--root", str(tmp_path)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["report", "--calibration-plot", "--root", str(tmp_path)]) == 0
    assert (tmp_path / "docs" / "figures" / "calibration.png").is_file()
    (tmp_path / "none" / "results").mkdir(parents=True)
    assert main(["report", "--calibration-plot", "--root", str(tmp_path / "none")]) == 2


def test_evaluations_table_flags_reports_that_cover_few_classes(tmp_path):
    import gzip
    import json

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
    rows = [r for r in evaluations.evaluations(tmp_path) if r.startswith("| [results/ds/")]
    assert rows[0].endswith("| 30 |") and rows[1].endswith("| 30 (⚠ 1 of 10 classes) |")


def test_evaluations_table_marks_partial_reports_and_gives_the_finishing_command(tmp_path):
    import json

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
    lines = evaluations.evaluations(tmp_path)
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


def test_preset_tables_render_each_norm_and_mark_a_partial_preset(tmp_path):
    _preset_report(tmp_path, complete=True)
    lines = evaluations.presets(tmp_path)
    assert lines[0].startswith("#### `digits` (L-inf, L2; n = 10")
    assert "`pssr reproduce --preset digits`" in lines  # --report-only is not the reproducing command
    head = [ln for ln in lines if ln.startswith("| defense |")]
    assert head == ["| defense | clean | PGD | worst case |", "| defense | clean | DDN | worst case |"]
    assert "| pssr (flagged) | 90.00% | 70.00% | 70.00% |" in lines
    assert not any("partial" in ln for ln in lines)

    _preset_report(tmp_path / "p", complete=False)
    cmd = next(ln for ln in evaluations.presets(tmp_path / "p") if ln.startswith("`pssr reproduce"))
    assert "**partial** (2 units pending; not evaluated yet, L-inf: late; L2: late)" in cmd
    # reports written before clean_full_split
    assert not any("whole" in ln for ln in evaluations.presets(tmp_path / "p"))


def test_preset_tables_give_the_whole_split_clean_accuracy(tmp_path):
    import json

    _preset_report(tmp_path, complete=True)
    path = tmp_path / "results" / "digits" / "report.json"
    d = json.loads(path.read_text())
    d["clean_full_split"] = {
        "none": {"n": 359, "correct": 300, "accuracy": 300 / 359},
        "pssr": {"pending": True},
    }
    path.write_text(json.dumps(d))
    line = next(ln for ln in evaluations.presets(tmp_path) if "whole" in ln)
    assert (
        line
        == "Clean accuracy on the **whole** test split (359 images; the tables attack the first 10): none 83.57%"
    )


def test_update_docs_rewrites_only_the_marked_block_and_relinks_for_docs(tmp_path):
    mod = docs
    page = tmp_path / "page.md"
    page.write_text(f"before\n{mod.BEGIN}\nold\n{mod.END}\nafter\n")
    mod.replace_block(page, mod.relink("[r](results/a/report.md) ![f](docs/figures/x.png)"))
    assert (
        page.read_text()
        == f"before\n{mod.BEGIN}\n[r](../results/a/report.md) ![f](figures/x.png)\n{mod.END}\nafter\n"
    )
    page.write_text("no markers")
    with pytest.raises(ValueError, match="markers are missing"):
        mod.replace_block(page, "x")


def test_report_command_prints_the_tables_and_rewrites_the_pages_blocks(tmp_path, capsys):
    import json

    _preset_report(tmp_path, complete=True)
    harness = tmp_path / "results" / "ds" / "x"  # one harness report: its row links to its report.md
    harness.mkdir(parents=True)
    summary = {"clean_accuracy": 1.0, "worst_case": {}, "flagged": False}
    (harness / "report.json").write_text(
        json.dumps({"models": {"m": {"summary": summary}}, "config": {"n": 1}})
    )
    assert main(["report", "--tables", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == tables.all_tables(tmp_path) + "\n"
    assert main(["report", "--tables", "presets", "--root", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert printed == tables.preset_tables(tmp_path) + "\n" and "#### `digits` (L-inf, L2" in printed

    (tmp_path / "docs").mkdir()
    for page in ("README.md", "docs/results.md"):
        (tmp_path / page).write_text(f"# {page}\n{docs.BEGIN}\nold\n{docs.END}\nend\n")
    assert main(["report", "--update-docs", "--root", str(tmp_path)]) == 0
    readme, results = (tmp_path / "README.md").read_text(), (tmp_path / "docs/results.md").read_text()
    assert readme == f"# README.md\n{docs.BEGIN}\n{tables.preset_tables(tmp_path)}\n{docs.END}\nend\n"
    assert "[report](results/digits/report.md)" in readme
    assert results.startswith(f"# docs/results.md\n{docs.BEGIN}\n### Classifiers\n") and results.endswith(
        f"\n{docs.END}\nend\n"
    )
    # links made for the repository root in README.md, relative to docs/ in docs/results.md
    assert "| [results/ds/x](../results/ds/x/report.md) | m | 100.00% |" in results
    assert "](results/" not in results


@pytest.mark.parametrize(
    "argv",
    [
        ["report"],  # neither a folder nor an option
        ["report", "--compress"],  # nothing to compress
        ["report", "some/folder", "--tables"],  # the tables render ROOT/results, not a folder
        ["report", "--update-docs", "--root", "nowhere"],  # no results/ there
    ],
)
def test_report_command_misuse_is_a_one_line_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pssr report: error: ") and "\n" not in err


def test_budgets_read_as_papers_write_them():
    assert [eps_text(e) for e in (8 / 255, 0.1, 0.3, 1.0, 2 / 255)] == ["8/255", "0.1", "0.3", "1", "2/255"]


def test_speed_tables_render_one_table_per_purification_config(tmp_path):
    import json

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
        lines = speed.benchmarks(tmp_path)
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
