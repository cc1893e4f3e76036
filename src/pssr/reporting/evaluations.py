"""Tables of evaluation reports: harness reports (``pssr evaluate``) and presets (``pssr reproduce``).

Rendered from each report's JSON (``results/<dataset>/<name>/report.json``, ``results/<preset>/report.json``)
and, for the classes a report covers, its per-example records. A partial report (written with
``--report-only`` or ``--only``) is marked as such, with the command that finishes it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pssr.reporting.common import eps_text, load_result, pct

PAPER_ORDER = ("fgsm", "pgd", "mifgsm", "cw-linf", "cw-l2", "deepfool-l2", "ddn-l2", "autoattack")
ADAPTIVE_ORDER = (
    "pgd-bpda",
    "pgd-bpda-eot",
    "pgd-full",
    "autoattack-bpda",
    "autoattack-rand",
    "square",
    "transfer-pgd",
)
LABEL = {
    "fgsm": "FGSM",
    "pgd": "PGD",
    "mifgsm": "MI-FGSM",
    "cw-linf": "CW-L∞",
    "cw-l2": "CW-L2",
    "deepfool-l2": "DeepFool",
    "ddn-l2": "DDN",
    "autoattack": "AutoAttack",
    "pgd-bpda": "BPDA-PGD",
    "pgd-bpda-eot": "BPDA+EOT",
    "pgd-full": "full-gradient PGD",
    "autoattack-bpda": "AutoAttack (BPDA)",
    "autoattack-rand": "AutoAttack-rand (EOT)",
    "square": "Square",
    "transfer-pgd": "transfer",
}
PRESETS = ("digits", "fashion-mnist", "mnist-10k", "cifar10-jpeg", "mnist", "cifar10", "cifar100")
NORM_TITLE = {"linf": "L-inf", "l2": "L2"}


def _labels(report_dir: Path, d: dict[str, Any]) -> set[int]:
    """The labels of the examples a report evaluated (from its per-example records)."""
    from pssr.evaluation.report import read_records

    return {r["label"] for r in read_records(report_dir, d)}


def _finishing(cmd: str) -> str:
    """The command that computes everything: a partial report's without ``--report-only`` / ``--only M``."""
    return re.sub(r" --only(=| )\S+", "", cmd.replace(" --report-only", ""))


def _command(d: dict[str, Any]) -> str:
    """The command that computes report ``d`` (a partial one was written with --report-only or --only)."""
    return _finishing(d.get("metadata", {}).get("command", "") or "")


def _partial(d: dict[str, Any]) -> str:
    """'' for a finished evaluation; else a note saying the report is partial and how many units pend."""
    if d.get("config", {}).get("complete") is not False:
        return ""
    k = sum(len(info.get("pending") or {}) for info in d["models"].values())
    return f"partial: {k} units pending"


def _command_line(rel: Path, d: dict[str, Any]) -> str:
    """The report's entry in the list of commands under the table (with what a partial one lacks)."""
    partial = _partial(d)
    waiting = [m for m, info in d["models"].items() if "clean" in (info.get("pending") or {})]
    return f"- `{rel}`: `{_command(d)}`" + (
        f" ({partial}"
        + (f", models not started: {', '.join(waiting)}" if waiting else "")
        + "; this command finishes it, with --report-only it re-renders what is saved)"
        if partial
        else ""
    )


def evaluations(root: Path) -> list[str]:
    """Summary rows of every harness report under results/<dataset>/<name>/report.json.

    ``n`` says how many classes the examples cover when that is fewer than the dataset's (the most any
    report of the same dataset folder covers): a first n of a split stored class by class is biased."""
    rows = [
        "| report | model | clean | paper protocol worst | adaptive worst | flagged | n |",
        "|---|---|---|---|---|---|---|",
    ]
    commands = []
    reports = [
        (p, json.loads(p.read_text())) for p in sorted((Path(root) / "results").glob("*/*/report.json"))
    ]
    reports = [(p, d) for p, d in reports if "models" in d]
    labels = {p: _labels(p.parent, d) for p, d in reports}
    most: dict[Path, int] = {}
    for p, ls in labels.items():
        most[p.parent.parent] = max(most.get(p.parent.parent, 0), len(ls))
    for path, d in reports:
        rel = path.parent.relative_to(root)
        n = d.get("config", {}).get("n")
        k, full = len(labels[path]), most[path.parent.parent]
        if 0 < k < full:
            n = f"{n} (⚠ {k} of {full} classes)"
        if _partial(d):
            n = f"{n} (partial)"
        commands.append(_command_line(rel, d))
        for name, info in d["models"].items():
            if "clean" in (info.get("pending") or {}):
                continue
            s = info["summary"]
            wc = s.get("worst_case", {})
            paper = "; ".join(f"{pct(v)} @{e}" for e, v in wc.get("paper", {}).items()) or "—"
            adaptive = "; ".join(f"{pct(v)} @{e}" for e, v in wc.get("adaptive", {}).items()) or "—"
            rows.append(
                f"| [{rel}]({rel}/report.md) | {name} | {pct(s.get('clean_accuracy'))} | {paper} | {adaptive} | "
                f"{'yes' if s.get('flagged') else 'no'} | {n} |"
            )
    return [*rows, "", "Commands:", "", *commands]


def _attack_table(d: dict[str, Any], threat: str, eps: float, title: str, command: bool) -> list[str]:
    """One threat model at one budget: rows = defenses, columns = clean, each attack, worst case."""
    order = PAPER_ORDER if threat == "paper" else ADAPTIVE_ORDER
    res = d.get("results", [])
    clean = {r["model"]: r["accuracy"] for r in res if r["attack"] == "clean"}
    cell = {(r["model"], r["attack"]): r for r in res if r["threat_model"] == threat and r["eps"] == eps}
    attacks = sorted(
        {a for _, a in cell if a != "worst-case"},
        key=lambda a: (order.index(a) if a in order else len(order), a),
    )
    if not cell or not attacks:
        return []
    models = [m for m in d["models"] if any((m, a) in cell for a in attacks)]
    name = (
        "paper protocol (attacks made on the classifier, then purified)"
        if threat == "paper"
        else "adaptive (white-box on the whole defense)"
    )
    out = [
        f"**{title}: {name}, eps {eps_text(eps)}**",
        "",
        "| defense | clean | " + " | ".join(LABEL.get(a, a) for a in attacks) + " | worst case |",
        "|---|---:|" + "---:|" * len(attacks) + "---:|",
    ]
    for m in models:
        w = cell[(m, "worst-case")]["accuracy"] if (m, "worst-case") in cell else None
        cells = [pct(cell[(m, a)]["accuracy"]) if (m, a) in cell else "—" for a in attacks]
        flag = " (flagged)" if d["models"][m]["summary"].get("flagged") else ""
        out.append(f"| {m}{flag} | {pct(clean.get(m))} | " + " | ".join(cells) + f" | {pct(w)} |")
    ns = sorted({r["n"] for r in cell.values()})
    partial = _partial(d)
    note = (
        f' **{partial}**: "—" is not computed yet, and a worst case is left out while an attack of its '
        "threat model is pending"
        if partial
        else ""
    )
    cmd = f"; command: `{_command(d)}`" if command else ""
    return [*out, "", f"n = {', '.join(map(str, ns))} test examples{cmd}{note}", ""]


def attack_tables(d: dict[str, Any], title: str, command: bool = True) -> list[str]:
    """Issue-5 tables of one harness report: per threat model and budget, rows = defenses, columns =
    clean, each attack, worst case per example (from ``results`` and each model's summary).
    ``command=False`` leaves the command out of the note under each table (a preset gives it once)."""
    out: list[str] = []
    res = d.get("results", [])
    for threat in ("paper", "adaptive"):
        for eps in sorted({r["eps"] for r in res if r["threat_model"] == threat}):
            out += _attack_table(d, threat, eps, title, command)
    return out


def per_attack(root: Path) -> list[str]:
    """The per-attack tables of every harness report that has more than one attack per threat model."""
    out: list[str] = []
    results = Path(root) / "results"
    for path in sorted(results.glob("*/*/report.json")) + sorted(results.glob("*/report.json")):
        d = json.loads(path.read_text())
        if "models" not in d or "results" not in d:
            continue
        if len({r["attack"] for r in d["results"] if r["attack"] != "clean"}) < 2:
            continue
        out += attack_tables(d, str(path.parent.relative_to(root)))
    return out


def _preset_heading(name: str, d: dict[str, Any], norms: list[str]) -> list[str]:
    """A preset's title, its command and, while it is partial, what is pending."""
    cmd = _finishing(d.get("command") or "")
    partial = [e for e in d["evaluations"].values() if e.get("config", {}).get("complete") is False]
    pending = sum(len(i.get("pending") or {}) for e in partial for i in e["models"].values())
    waiting = "; ".join(
        f"{NORM_TITLE[k]}: {', '.join(ms)}"
        for k in norms
        if (
            ms := sorted(
                m for m, i in d["evaluations"][k]["models"].items() if "clean" in (i.get("pending") or {})
            )
        )
    )
    n = sorted({e["config"].get("n") for e in d["evaluations"].values()})
    return [
        f"#### `{name}` ({', '.join(NORM_TITLE[k] for k in norms)}; n = {', '.join(map(str, n))} test images "
        f"of all classes) — [report](results/{name}/report.md)",
        "",
        f"`{cmd}`"
        + (
            f" — **partial** ({pending} units pending"
            + (f"; not evaluated yet, {waiting}" if waiting else "")
            + "): this command finishes it, `--report-only` re-renders what is saved"
            if partial
            else ""
        ),
        "",
    ]


def presets(root: Path) -> list[str]:
    """Per ``pssr reproduce`` preset (results/<preset>/report.json): its command, its n, which models are
    ablations, then the paper-protocol and adaptive tables of each norm it evaluated."""
    out: list[str] = []
    for name in PRESETS:
        d = load_result(root, f"{name}/report.json")
        if not d or "evaluations" not in d:
            continue
        norms = [n for n in ("linf", "l2") if n in d["evaluations"]]
        out += _preset_heading(name, d, norms)
        full = {m: e for m, e in (d.get("clean_full_split") or {}).items() if not e.get("pending")}
        if full:
            n = sorted({e["config"].get("n") for e in d["evaluations"].values()})
            n_full = next(iter(full.values()))["n"]
            out += [
                f"Clean accuracy on the **whole** test split ({n_full} images; the tables attack the first "
                f"{', '.join(map(str, n))}): "
                + ", ".join(f"{m} {pct(e['accuracy'])}" for m, e in full.items()),
                "",
            ]
        for norm in norms:
            out += attack_tables(d["evaluations"][norm], f"{name}, {NORM_TITLE[norm]}", command=False)
    return out
