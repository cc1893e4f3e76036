"""report.md of an evaluation, rendered from its report.json dict by :func:`render_markdown`.

The settings, how to read the tables, the summary and one table per threat model and eps, the
checks, the time per attack and the attacks' settings; every cell comes from the JSON's result rows
(:func:`pssr.evaluation.report.summarize`), nothing is typed by hand.
"""

from __future__ import annotations

import math
from typing import Any

THREAT_TITLES = {
    "paper": "Paper protocol (gray-box: attacks crafted on the undefended classifier, then fed to the defense)",
    "adaptive": "Adaptive (white-box on the whole defense: full gradients / BPDA / EOT, gradient-free, transfer)",
}


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _table(header: list[str], rows: list[list[str]], n_text: int = 1) -> list[str]:
    """A Markdown table; the first ``n_text`` columns left-aligned, the rest (numbers) right-aligned."""
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < n_text else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


class _Cells:
    """Looks up a report's accuracy cells by (model, threat model, attack, eps)."""

    def __init__(self, models: dict[str, Any], results: list[dict[str, Any]]) -> None:
        self.names, self.results = list(models), results
        self.flagged = {m for m in self.names if models[m].get("flags")}

    def label(self, m: str) -> str:
        return f"{m} ⚠" if m in self.flagged else m

    def get(self, m: str, threat: str, attack: str, eps: float) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in self.results
                if r["model"] == m
                and r["threat_model"] == threat
                and r["attack"] == attack
                and (attack == "clean" or math.isclose(r["eps"], eps))
            ),
            None,
        )

    def acc(self, m: str, threat: str, attack: str, eps: float) -> str:
        r = self.get(m, threat, attack, eps)
        return _pct(r["accuracy"]) if r else "–"


def _md_head(cfg: dict[str, Any], meta: dict[str, Any], models: dict[str, Any]) -> list[str]:
    """Title, settings, how to read the tables, and the partial-report warning."""
    hw = meta.get("hardware", {}) or {}
    eps_list = cfg.get("eps", [])
    lines = ["# pssr evaluation report", ""]
    lines += [
        f"- dataset: **{cfg.get('dataset') or 'unnamed split'}**, n = {cfg.get('n')} of {cfg.get('n_available')} "
        f"examples ({'first n' if cfg.get('subset_seed') is None else 'random subset, seed ' + str(cfg.get('subset_seed'))})"
        + (
            f"; ⚠ **{cfg['classes']['in_subset']} of {cfg['classes']['in_split']} classes** (missing "
            f"{', '.join(map(str, cfg['classes']['missing']))}): not a sample of the whole split"
            if (cfg.get("classes") or {}).get("missing")
            else ""
        ),
        f"- threat budget: {cfg.get('norm')} eps = {', '.join(f'{e:g}' for e in eps_list)}; attack seed {cfg.get('seed')}",
        f"- pssr {meta.get('pssr_version')}, torch {meta.get('torch_version')}, python {meta.get('python_version')}, "
        f"git {meta.get('git_revision')}",
        f"- hardware: {hw.get('gpu') or hw.get('processor') or hw.get('machine')}, {hw.get('cpu_count')} CPUs, "
        f"{hw.get('torch_threads')} torch threads; written {meta.get('time_utc')}",
        "",
        "Accuracies in %. An example counts as robust in a *worst case* column only if it is classified "
        "correctly clean and under every attack of that column's threat model; misclassified clean examples are "
        "never robust. ⚠ marks a model with check flags (see below): its robust accuracies may be upper bounds.",
        "",
    ]
    pending = {m: models[m]["pending"] for m in models if models[m].get("pending")}
    if cfg.get("complete") is False or pending:
        n_units = sum(len(p) for p in pending.values())
        lines += [
            f"**⚠ Partial report: the evaluation is unfinished** ({n_units} units of {len(pending)} models not "
            'computed yet, listed under Checks). A cell "–" is pending; a model\'s worst-case column is left '
            "out while an attack of its threat model is pending (over fewer attacks it would be an upper "
            "bound). Rerun the evaluation's command to finish it.",
            "",
        ]
    return lines


def _md_tables(cells: _Cells, eps_list: list[float], models: dict[str, Any]) -> list[str]:
    """The summary table and one table per threat model and eps."""
    results, names = cells.results, cells.names
    present = [t for t in ("paper", "adaptive", "all") if any(r["threat_model"] == t for r in results)]
    header = ["model", "clean"] + [f"{t} worst @{e:g}" for e in eps_list for t in present]
    rows = [
        [cells.label(m), cells.acc(m, "none", "clean", 0.0)]
        + [cells.acc(m, t, "worst-case", e) for e in eps_list for t in present]
        for m in names
    ]
    lines = ["## Summary", ""] + _table(header, rows) + [""]
    for t in ("paper", "adaptive"):
        attacks = list(
            dict.fromkeys(
                r["attack"] for r in results if r["threat_model"] == t and r["attack"] != "worst-case"
            )
        )
        if not attacks:
            continue
        for e in eps_list:
            lines += [f"## {THREAT_TITLES[t]}, eps = {e:g}", ""]
            rows = [
                [cells.label(m), cells.acc(m, "none", "clean", 0.0)]
                + [cells.acc(m, t, a, e) for a in attacks]
                + [cells.acc(m, t, "worst-case", e)]
                for m in names
            ]
            lines += _table(["model", "clean", *attacks, "worst case"], rows) + [""]
        if t == "paper":
            src = ", ".join(f"{m}: {models[m].get('gray_box_source')}" for m in names)
            lines += [
                f"Gray-box source per model ({src}); *self* means the model is its own source "
                "(white-box for an undefended classifier).",
                "",
            ]
    return lines


def _check_facts(ch: dict[str, Any]) -> list[str]:
    facts = []
    if "randomness" in ch:
        facts.append(f"random forward: {'yes' if ch['randomness'].get('random') else 'no'}")
    if "gradients" in ch:
        facts.append(f"zero input gradients: {_pct(ch['gradients'].get('zero_fraction'))}%")
    if "large_eps" in ch and ch["large_eps"].get("accuracy"):
        le = ch["large_eps"]
        facts.append(
            f"accuracy at eps={le['eps']:.3g}: "
            + ", ".join(f"{a} {_pct(v)}%" for a, v in le["accuracy"].items())
        )
    return facts


def _md_checks(cfg: dict[str, Any], models: dict[str, Any]) -> list[str]:
    lines = ["## Checks", ""]
    if cfg.get("checks") is None:
        lines += ["Sanity checks were switched off for this run.", ""]
    for m, info in models.items():
        fl = info.get("flags") or []
        facts = _check_facts(info.get("checks") or {})
        lines.append(f"- **{m}** ({'; '.join(facts) or 'no checks'}): " + ("no flags" if not fl else ""))
        lines += [f"  - ⚠ `{f['name']}`: {f['message']}" for f in fl]
        lines += [f"  - not run: {a} ({why})" for a, why in (info.get("skipped_attacks") or {}).items()]
        lines += [f"  - pending: {a} ({why})" for a, why in (info.get("pending") or {}).items()]
    lines.append("")
    return lines


def _md_timings(results: list[dict[str, Any]]) -> list[str]:
    timed = [r for r in results if r.get("seconds") is not None and r["attack"] not in ("worst-case",)]
    if not timed:
        return []
    rows = [
        [
            r["model"],
            r["threat_model"],
            r["attack"],
            f"{r['eps']:g}",
            f"records of {r['reused_from']}" if r.get("reused_from") else f"{r['seconds']:.2f}",
            f"{r['seconds_per_example'] * 1000:.1f}" if r.get("seconds_per_example") else "–",
        ]
        for r in timed
    ]
    header = ["model", "threat model", "attack", "eps", "seconds", "ms / attacked example"]
    return ["## Time per attack", ""] + _table(header, rows, n_text=3) + [""]


def _attack_kind(r: dict[str, Any]) -> str:
    if r.get("gradient_free"):
        return "black-box (gradient-free)"
    return "black-box (transfer)" if r.get("black_box") else "white-box (gradient)"


def _md_attack_settings(results: list[dict[str, Any]]) -> list[str]:
    cfgs = {(r["threat_model"], r["attack"]): r for r in results if r.get("config")}
    if not cfgs:
        return []
    rows = [
        [
            t,
            a,
            str(r.get("target") or ""),
            _attack_kind(r),
            ", ".join(f"{k}={v}" for k, v in r["config"].items() if k not in ("name", "eps", "norm")),
        ]
        for (t, a), r in cfgs.items()
    ]
    header = ["threat model", "attack", "target", "kind", "settings"]
    return ["## Attack settings", ""] + _table(header, rows, n_text=5) + [""]


def render_markdown(report: dict[str, Any]) -> str:
    """report.md from a report.json dict: settings, checks, one table per threat model and eps, timings."""
    cfg, meta, models, results = (
        report["config"],
        report.get("metadata", {}),
        report["models"],
        report["results"],
    )
    cells = _Cells(models, results)
    lines = _md_head(cfg, meta, models)
    lines += _md_tables(cells, cfg.get("eps", []), models)
    lines += _md_checks(cfg, models)
    lines += _md_timings(results)
    lines += _md_attack_settings(results)
    plots = report.get("plots") or []
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    lines += [
        f"Per-example records: `{report.get('records_file', 'records.jsonl')}` ({report.get('n_records')} lines)."
    ]
    return "\n".join(lines) + "\n"


__all__ = ["THREAT_TITLES", "render_markdown"]
