"""``report.md`` of a preset (``results/NAME/report.md``), rendered from its combined ``report.json``:
the training summary, each model's clean accuracy over the whole test split, then each norm's
evaluation tables (:func:`pssr.evaluation.markdown.render_markdown`).

:func:`rerender_report` (``pssr report DIR``) redraws a saved report folder: a preset's (its ``<norm>/``
evaluations, then its own report.md) or, for any other folder, one evaluation's
(:func:`pssr.evaluation.rerender`)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pssr.experiments.presets import FULL_SUITE
from pssr.utils import atomic_write_json, atomic_write_text


def _full_split_lines(combined: Mapping[str, Any]) -> list[str]:
    """report.md: each model's clean accuracy on the whole test split beside the attacked subset's."""
    full = combined.get("clean_full_split") or {}
    if not full:
        return []
    sub_models = next(iter(combined.get("evaluations", {}).values()), {}).get("models", {})
    n_full = next((e["n"] for e in full.values() if "n" in e), None)
    lines = [
        "",
        "## Clean accuracy, whole test split",
        "",
        f"The attacks run on the first {combined.get('eval_n')} test images; one draw of that size varies by a "
        f"few points. Clean accuracy over all {n_full} test images, beside the subset's:",
        "",
        "| model | whole split | attacked subset | subset - whole |",
        "|---|---|---|---|",
    ]
    for name, e in full.items():
        sub = (sub_models.get(name) or {}).get("summary", {}).get("clean_accuracy")
        whole = None if e.get("pending") else e.get("accuracy")
        cells = [f"{100 * v:.2f}%" if v is not None else "–" for v in (whole, sub)]
        diff = f"{100 * (sub - whole):+.2f}" if whole is not None and sub is not None else ""
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {diff} |")
    return lines


def render_preset_markdown(combined: Mapping[str, Any]) -> str:
    """report.md of a preset: training summary, then each evaluation's tables (from the JSON)."""
    from pssr.evaluation.markdown import render_markdown

    lines = [
        f"# pssr reproduction: preset `{combined['preset']}`"
        + (" (quick smoke run: not a result)" if combined.get("quick") else ""),
        "",
    ]
    if combined.get("full_suite") is False:
        ran = "; ".join(f"{k}={v}" for k, v in combined.get("attacks", {}).items())
        full = "; ".join(f"{k}={v}" for k, v in FULL_SUITE.items())
        lines += [
            f"**⚠ Not the preset's full evaluation**: written with `--attacks` ({ran}); the full suite is "
            f"{full}. Rows and worst cases below cover those attacks only.",
            "",
        ]
    if combined.get("complete") is False:
        missing = [n for n in ("linf", "l2") if n not in combined.get("evaluations", {})]
        lines += [
            "**⚠ Partial report** (written with `--report-only` or `--only` while the preset's evaluation is "
            'unfinished): a "–" of a pending unit is not computed yet, not zero'
            + (f"; not started: {', '.join(missing)} evaluation" if missing else "")
            + ". Run the command without `--report-only` / `--only` to finish it.",
            "",
        ]
    if combined.get("report_only") or combined.get("only"):
        how = "`--report-only`" if combined.get("report_only") else f"`--only {','.join(combined['only'])}`"
        lines += [
            f"Written with {how} from saved evaluation state: the versions and hardware below are "
            "those of the machine that wrote the report; the units (and their timings) may have been computed "
            "elsewhere (a GPU, say).",
            "",
        ]
    if combined.get("command"):
        lines += ["Command:", "", f"    {combined['command']}", ""]
    meta = combined.get("metadata", {})
    lines += [
        f"pssr {meta.get('pssr_version')}, torch {meta.get('torch_version')}, git {meta.get('git_revision')}, "
        f"hardware {meta.get('hardware')}",
        "",
    ]
    lines += [
        "## Training",
        "",
        "| model | test accuracy (clean) | test images | epochs | train seconds |",
        "|---|---|---|---|---|",
    ]
    for name, s in combined.get("training", {}).items():
        if s.get("kind") == "pssr-calibration":
            sweep = ", ".join(
                f"{r['ratio']:g}: {100 * r['clean_acc']:.1f} / {100 * r['graybox_acc']:.1f}"
                for r in s["calibration"]["rows"]
            )
            lines.append(
                f"| {name} | weights of pssr; removal ratio **{s['chosen_ratio']:g}** chosen on its validation "
                f"split (ratio: clean / gray-box %: {sweep}) | | | |"
            )
            continue
        acc, n_test = (s.get("metrics") or {}).get("test_acc"), (s.get("metrics") or {}).get("n_test", "")
        if acc is None:  # PSSR: its training run's own check, on a seeded random subset of the test split
            test = s.get("test") or {}
            acc, n_test = test.get("pssr_clean_acc"), test.get("n", "")
            if n_test and "seed" in test:
                n_test = f"{n_test} (random, seed {test['seed']})"
        secs = s.get("train_seconds") or s.get("train_seconds_this_invocation")
        lines.append(
            f"| {name} | {'' if acc is None else f'{100 * acc:.2f}%'} | {n_test} | {s.get('epochs', '')} | "
            f"{'' if secs is None else f'{secs:.0f}'} |"
        )
    lines += _full_split_lines(combined)
    for norm, rep in combined.get("evaluations", {}).items():
        body = render_markdown(rep)
        lines += ["", f"## Evaluation, {norm}", ""]
        for ln in body.splitlines():
            if ln.startswith("#"):
                ln = "#" + ln
            elif ln.startswith(
                "!["
            ):  # plots and records live in the norm's own folder (results/NAME/<norm>/)
                ln = re.sub(r"\]\((?![a-z]+:|/)([^)]+)\)", rf"]({norm}/\1)", ln)
            elif ln.startswith("Per-example records: `"):
                ln = ln.replace("`", f"`{norm}/", 1)
            lines.append(ln)
    return "\n".join(lines) + "\n"


def is_preset_report(out: str | Path) -> bool:
    """Whether ``out`` holds a preset's combined report.json (one evaluation per norm under ``evaluations``)."""
    try:
        d = json.loads((Path(out) / "report.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(d, dict) and "preset" in d and isinstance(d.get("evaluations"), dict)


def rerender_preset(out_dir: str | Path) -> Path:
    """A preset report folder: each ``<norm>/`` evaluation redrawn, then the preset's report.md."""
    from pssr.evaluation.report import read_report_json, rerender

    out = Path(out_dir)
    combined = json.loads((out / "report.json").read_text())
    for norm in combined["evaluations"]:
        sub = out / norm
        if not (sub / "report.json").is_file():
            raise ValueError(
                f"{out} is the report of preset {combined['preset']!r} but its {norm} evaluation {sub}/report.json "
                "is missing; rerun the preset (pssr reproduce / pssr demo) to write it"
            )
        rerender(sub)
        combined["evaluations"][norm] = read_report_json(sub)
    atomic_write_json(out / "report.json", combined)
    return atomic_write_text(out / "report.md", render_preset_markdown(combined))


def rerender_report(out_dir: str | Path) -> Path:
    """Redraw the report folder ``out_dir`` from its report.json: a preset's (:func:`rerender_preset`)
    or one evaluation's (:func:`pssr.evaluation.rerender`). Returns the report.md written."""
    from pssr.evaluation.report import rerender

    out = Path(out_dir)
    if out.is_dir() and is_preset_report(out):
        return rerender_preset(out)
    return rerender(out)


__all__ = ["is_preset_report", "render_preset_markdown", "rerender_preset", "rerender_report"]
