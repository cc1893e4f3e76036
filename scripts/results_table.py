"""Render the results tables from the JSON files under results/ (never typed by hand).

.venv/bin/python scripts/results_table.py               # every table (docs/results.md), Markdown
.venv/bin/python scripts/results_table.py --presets     # the presets' tables and speed (README.md)
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _load(rel: str) -> dict | None:
    p = ROOT / "results" / rel
    return json.loads(p.read_text()) if p.is_file() else None


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def classifiers() -> list[str]:
    rows = [
        "| dataset | model | test accuracy | epochs | training wall time | img/s | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in ("fashion-mnist", "mnist-10k", "cifar10-jpeg"):
        d = _load(f"{ds}/classifier.json")
        if not d:
            continue
        rows.append(
            f"| {ds} | {d['model']} | {_pct(d['metrics']['test_acc'])} (n={d['metrics']['n_test']}) | {d['epochs']} | "
            f"{d['train_seconds'] / 60:.0f} min | {d['images_per_second']:.0f} | `{d['command']}` |"
        )
    return rows


def adversarial() -> list[str]:
    rows = [
        "| dataset | model | clean | PGD-20 robust (own trainer's eval) | eps | epochs | command |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = [
        (ds, m, _load(f"{ds}/{m}.json"))
        for ds in ("fashion-mnist", "mnist-10k")
        for m in ("pgd-at", "trades")
    ]
    # runs made on a lent GPU (results/<dataset>/gpu/<method>-<epochs>ep.json)
    runs += [
        (p.parent.parent.name, f"{p.stem} (GPU)", json.loads(p.read_text()))
        for p in sorted((ROOT / "results").glob("*/gpu/*.json"))
        if p.stem.startswith(("pgd-at", "trades"))
    ]
    for ds, m, d in runs:
        if not d:
            continue
        mt = d["metrics"]
        rows.append(
            f"| {ds} | {m} | {_pct(mt['test_acc'])} | {_pct(mt.get('pgd20_robust_acc'))} (n={mt.get('pgd20_n')}) | "
            f"{mt.get('pgd20_eps')} | {d['epochs']} | `{d['command']}` |"
        )
    return rows


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v) if v == "" or any(c in v for c in " ,=") else v
    return repr(v)


def pssr_command(d: dict) -> str:
    """A ``pssr train-pssr`` command that reproduces the run of summary ``d`` with the configs as they are
    *now*: its recorded command with the ``--set pssr.* / run.*`` overrides replaced by every setting
    that differs from the config file's current values (configs change as better settings are found;
    the recorded command alone would then train something else). Falls back to the recorded command."""
    sys.path.insert(0, str(ROOT / "src"))
    from pssr.config import asdict, build, load_toml
    from pssr.defense import PSSRConfig
    from pssr.train.pssr_train import PSSRRunConfig

    cmd = d.get("command") or ""
    tokens = shlex.split(cmd)
    if "--config" not in tokens or tokens.index("--config") + 1 >= len(tokens):
        return cmd
    cfg_path = ROOT / tokens[tokens.index("--config") + 1]
    recorded = d.get("config", {})
    if not cfg_path.is_file() or not {"pssr", "run"} <= set(recorded):
        return cmd
    mapping = load_toml(cfg_path)
    keep: list[str] = []
    it = iter(range(len(tokens)))
    for i in it:
        t = tokens[i]
        if (
            t == "--set"
            and i + 1 < len(tokens)
            and tokens[i + 1].split(".", 1)[0] in ("pssr", "run")
            and tokens[i + 1].split("=", 1)[0] not in ("run.out", "run.results")
        ):
            next(it)  # replaced by the differences below
            continue
        keep.append(t)
    sets = []
    for section, cls in (("pssr", PSSRConfig), ("run", PSSRRunConfig)):
        now = asdict(build(cls, mapping.get(section), prefix=f"{section}."))
        # A setting the run's code did not have yet ran as that setting's default (new options
        # are added with the old behaviour as their default).
        then = {**asdict(cls()), **recorded[section]}
        for k, v in then.items():
            if k in ("out", "results") or k not in now or now[k] == v:
                continue
            sets.append(f"--set {section}.{k}={_toml_value(v)}")
    return shlex.join(keep) + ("" if not sets else " " + " ".join(sets))


def pssr() -> list[str]:
    rows = [
        "| dataset | variant | classifier clean | PSSR clean | PGD on classifier, then purified (paper protocol) | adaptive worst (BPDA / mask-constant full gradient) | eps | n (adaptive n) | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    gpu = sorted((ROOT / "results").glob("*/gpu/pssr*.json"))  # runs made on a lent GPU
    for path in sorted((ROOT / "results").glob("*/pssr-train*.json")) + gpu:
        d = json.loads(path.read_text())
        t = d.get("test")
        if not t:
            continue
        cmd = pssr_command(d)
        suffix = f"GPU {path.stem}" if path in gpu else path.stem.removeprefix("pssr-train").lstrip("-")
        if "--set pssr." in cmd:  # trained with settings the config no longer has (spelled out in cmd)
            variant = suffix or "earlier config"
        else:
            variant = f"{suffix} (config default)" if suffix else "config default"
        # clean accuracy of the classifier the user started from (a fine-tuned one is PSSR's own)
        orig = d.get("validation", {}).get("val_original_classifier_clean_acc")
        clf = (
            _pct(t["clf_clean_acc"])
            if not d.get("validation", {}).get("classifier_finetuned")
            else f"{_pct(t['clf_clean_acc'])} (fine-tuned; original {_pct(orig)} on validation)"
        )
        rows.append(
            f"| {d['dataset']} | {variant} | {clf} | {_pct(t['pssr_clean_acc'])} | {_pct(t['pssr_graybox_pgd_acc'])} | "
            f"{_pct(t.get('pssr_adaptive_worst_acc'))} | {t['eps']} | {t['n']} ({t['adaptive_n']}) | `{cmd}` |"
        )
    return rows


def _labels(report_dir: Path, d: dict) -> set[int]:
    """The labels of the examples a report evaluated (from its per-example records)."""
    sys.path.insert(0, str(ROOT / "src"))
    from pssr.evaluation.report import read_records

    return {r["label"] for r in read_records(report_dir, d)}


def _finishing(cmd: str) -> str:
    """The command that computes everything: a partial report's without ``--report-only`` / ``--only M``."""
    return re.sub(r" --only(=| )\S+", "", cmd.replace(" --report-only", ""))


def _command(d: dict) -> str:
    """The command that computes report ``d`` (a partial one was written with ``--report-only`` or ``--only``)."""
    return _finishing(d.get("metadata", {}).get("command", "") or "")


def _partial(d: dict) -> str:
    """'' for a finished evaluation; else a note saying the report is partial and how many units pend."""
    if d.get("config", {}).get("complete") is not False:
        return ""
    k = sum(len(info.get("pending") or {}) for info in d["models"].values())
    return f"partial: {k} units pending"


def evaluations() -> list[str]:
    """Summary rows of every harness report under results/<dataset>/<name>/report.json.

    ``n`` says how many classes the examples cover when that is fewer than the dataset's (the most any
    report of the same dataset folder covers): a first n of a split stored class by class is biased."""
    rows = [
        "| report | model | clean | paper protocol worst | adaptive worst | flagged | n |",
        "|---|---|---|---|---|---|---|",
    ]
    commands = []
    reports = [(p, json.loads(p.read_text())) for p in sorted((ROOT / "results").glob("*/*/report.json"))]
    reports = [(p, d) for p, d in reports if "models" in d]
    labels = {p: _labels(p.parent, d) for p, d in reports}
    most: dict[Path, int] = {}
    for p, ls in labels.items():
        most[p.parent.parent] = max(most.get(p.parent.parent, 0), len(ls))
    for path, d in reports:
        rel = path.parent.relative_to(ROOT)
        n = d.get("config", {}).get("n")
        k, full = len(labels[path]), most[path.parent.parent]
        if 0 < k < full:
            n = f"{n} (⚠ {k} of {full} classes)"
        partial = _partial(d)
        waiting = [m for m, info in d["models"].items() if "clean" in (info.get("pending") or {})]
        if partial:
            n = f"{n} (partial)"
        commands.append(
            f"- `{rel}`: `{_command(d)}`"
            + (
                f" ({partial}"
                + (f", models not started: {', '.join(waiting)}" if waiting else "")
                + "; this command finishes it, with --report-only it re-renders what is saved)"
                if partial
                else ""
            )
        )
        for name, info in d["models"].items():
            if "clean" in (info.get("pending") or {}):
                continue
            s = info["summary"]
            wc = s.get("worst_case", {})
            paper = "; ".join(f"{_pct(v)} @{e}" for e, v in wc.get("paper", {}).items()) or "—"
            adaptive = "; ".join(f"{_pct(v)} @{e}" for e, v in wc.get("adaptive", {}).items()) or "—"
            rows.append(
                f"| [{rel}]({rel}/report.md) | {name} | {_pct(s.get('clean_accuracy'))} | {paper} | {adaptive} | "
                f"{'yes' if s.get('flagged') else 'no'} | {n} |"
            )
    return [*rows, "", "Commands:", "", *commands]


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


def _eps(eps: float) -> str:
    """A budget as written in papers: 8/255 rather than 0.0313725."""
    k = eps * 255
    return (
        f"{round(k)}/255" if 0 < eps < 1 and abs(k - round(k)) < 1e-6 and len(f"{eps:g}") > 5 else f"{eps:g}"
    )


def attack_tables(d: dict, title: str, command: bool = True) -> list[str]:
    """Issue-5 tables of one harness report: per threat model and budget, rows = defenses, columns =
    clean, each attack, worst case per example (from ``results`` and each model's summary).
    ``command=False`` leaves the command out of the note under each table (a preset gives it once)."""
    out: list[str] = []
    res = d.get("results", [])
    clean = {r["model"]: r["accuracy"] for r in res if r["attack"] == "clean"}
    for threat, order in (("paper", PAPER_ORDER), ("adaptive", ADAPTIVE_ORDER)):
        for eps in sorted({r["eps"] for r in res if r["threat_model"] == threat}):
            cell = {
                (r["model"], r["attack"]): r for r in res if r["threat_model"] == threat and r["eps"] == eps
            }
            if not cell:
                continue
            attacks = sorted(
                {a for _, a in cell if a != "worst-case"},
                key=lambda a: (order.index(a) if a in order else len(order), a),
            )
            models = [m for m in d["models"] if any((m, a) in cell for a in attacks)]
            if not attacks:
                continue
            name = (
                "paper protocol (attacks made on the classifier, then purified)"
                if threat == "paper"
                else "adaptive (white-box on the whole defense)"
            )
            out += [
                f"**{title}: {name}, eps {_eps(eps)}**",
                "",
                "| defense | clean | " + " | ".join(LABEL.get(a, a) for a in attacks) + " | worst case |",
                "|---|---:|" + "---:|" * len(attacks) + "---:|",
            ]
            for m in models:
                w = cell[(m, "worst-case")]["accuracy"] if (m, "worst-case") in cell else None
                cells = [_pct(cell[(m, a)]["accuracy"]) if (m, a) in cell else "—" for a in attacks]
                flag = " (flagged)" if d["models"][m]["summary"].get("flagged") else ""
                out.append(f"| {m}{flag} | {_pct(clean.get(m))} | " + " | ".join(cells) + f" | {_pct(w)} |")
            ns = sorted({r["n"] for r in cell.values()})
            partial = _partial(d)
            note = (
                f' **{partial}**: "—" is not computed yet, and a worst case is left out while an attack of its '
                "threat model is pending"
                if partial
                else ""
            )
            cmd = f"; command: `{_command(d)}`" if command else ""
            out += ["", f"n = {', '.join(map(str, ns))} test examples{cmd}{note}", ""]
    return out


def per_attack() -> list[str]:
    """The per-attack tables of every harness report that has more than one attack per threat model."""
    out: list[str] = []
    for path in sorted((ROOT / "results").glob("*/*/report.json")) + sorted(
        (ROOT / "results").glob("*/report.json")
    ):
        d = json.loads(path.read_text())
        if "models" not in d or "results" not in d:
            continue
        if len({r["attack"] for r in d["results"] if r["attack"] != "clean"}) < 2:
            continue
        out += attack_tables(d, str(path.parent.relative_to(ROOT)))
    return out


PRESETS = ("digits", "fashion-mnist", "mnist-10k", "cifar10-jpeg", "mnist", "cifar10", "cifar100")
NORM_TITLE = {"linf": "L-inf", "l2": "L2"}


def presets() -> list[str]:
    """Per ``pssr reproduce`` preset (results/<preset>/report.json): its command, its n, which models are
    ablations, then the paper-protocol and adaptive tables of each norm it evaluated."""
    out: list[str] = []
    for name in PRESETS:
        d = _load(f"{name}/report.json")
        if not d or "evaluations" not in d:
            continue
        cmd = _finishing(d.get("command") or "")
        partial = [e for e in d["evaluations"].values() if e.get("config", {}).get("complete") is False]
        pending = sum(len(i.get("pending") or {}) for e in partial for i in e["models"].values())
        norms = [n for n in ("linf", "l2") if n in d["evaluations"]]
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
        out += [
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
        full = {m: e for m, e in (d.get("clean_full_split") or {}).items() if not e.get("pending")}
        if full:
            n_full = next(iter(full.values()))["n"]
            out += [
                f"Clean accuracy on the **whole** test split ({n_full} images; the tables attack the first "
                f"{', '.join(map(str, n))}): "
                + ", ".join(f"{m} {_pct(e['accuracy'])}" for m, e in full.items()),
                "",
            ]
        for norm in norms:
            out += attack_tables(d["evaluations"][norm], f"{name}, {NORM_TITLE[norm]}", command=False)
    return out


def benchmarks() -> list[str]:
    """Speed tables of results/benchmarks.json (benchmarks/run_all.py)."""
    d = _load("benchmarks.json")
    if not d:
        return []
    env = d.get("environment", {})
    sections = d["purification"] if isinstance(d["purification"], list) else [d["purification"]]

    def load(key: str) -> str:
        v = env.get(key)
        return "?" if v is None else f"{v:.1f}"

    out = [
        f"{env.get('cpu_model', 'CPU')}, {env.get('torch_threads', '?')} threads, 1-minute load average "
        f"{load('load_average_1min_start')} -> {load('load_average_1min_end')} (the benchmark's own threads "
        "included).",
        "",
    ]
    for pur in sections:
        out += [
            f"Purification, {pur['dataset']} {'x'.join(map(str, pur['image_shape']))}, whole forward pass "
            f"(purify + classify){', trained weights' if pur.get('trained_weights') else ''}:",
            "",
            "| model | fp32 batch 1 (ms) | fp32 batch 256 (img/s) | bf16 batch 1 (ms) | bf16 batch 256 (img/s) | "
            "peak MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        cell = {(r["model"], r["precision"], r["batch"]): r for r in pur["rows"]}
        for m in dict.fromkeys(r["model"] for r in pur["rows"]):

            def g(prec: str, batch: int, key: str, fmt: str, m: str = m, cell: dict = cell) -> str:
                r = cell.get((m, prec, batch))
                return format(r[key], fmt) if r and r.get(key) is not None else "—"

            out.append(
                f"| {m} | {g('fp32', 1, 'latency_ms', '.2f')} | {g('fp32', 256, 'images_per_s', '.0f')} | "
                f"{g('bf16', 1, 'latency_ms', '.2f')} | {g('bf16', 256, 'images_per_s', '.0f')} | "
                f"{g('fp32', 256, 'peak_mib', '.0f')} |"
            )
        out.append("")
    kind = {r.get("memory_kind") for pur in sections for r in pur["rows"]}
    if kind == {"process_peak_rss"}:
        out += [
            "Peak MiB: the process's peak resident memory during the fp32 batch-256 row (the whole process: "
            "torch and every model built so far, not the row's own allocations).",
            "",
        ]
    out += [
        "Training, batch 128, random data (time per epoch extrapolated from timed steps):",
        "",
        "| workload | model | precision | img/s | s per epoch (or once per run) |",
        "|---|---|---|---:|---:|",
    ]
    for r in d["training"]["rows"]:
        per = (
            r["seconds_per_epoch"]
            if r.get("seconds_per_epoch") is not None
            else r.get("seconds_once_per_run")
        )
        out.append(
            f"| {r['workload']} | {r['model']} | {r['precision']} | {r['images_per_s']:.0f} | {per:.0f} |"
        )
    return [*out, "", "Command: `.venv/bin/python benchmarks/run_all.py` (writes results/benchmarks.json)."]


def calibrations() -> list[str]:
    """``pssr calibrate`` runs (results/<dataset>/calibrated/*.json): the ratio chosen on validation, then test."""
    rows = [
        "| dataset | checkpoint | validation (n): ratio -> clean / gray-box | trained -> chosen ratio | "
        "test n | classifier clean | PSSR clean | gray-box PGD | adaptive worst (n) | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted((ROOT / "results").glob("*/calibrated/*.json")):
        d = json.loads(p.read_text())
        c, t = d["calibration"], d.get("test")
        val = "; ".join(
            f"{r['ratio']:g}: {100 * r['clean_acc']:.1f} / {100 * r['graybox_acc']:.1f}" for r in c["rows"]
        )
        val = f"({c['n']}, classifier {100 * c['classifier_clean_acc']:.1f}) {val}"
        test = (
            f"{t['n']} | {_pct(t['clf_clean_acc'])} | {_pct(t['pssr_clean_acc'])} | {_pct(t['pssr_graybox_pgd_acc'])} | "
            f"{_pct(t.get('pssr_adaptive_worst_acc'))} ({t['adaptive_n']})"
            if t
            else "— | — | — | — | —"
        )
        rows.append(
            f"| [{d['dataset']}]({p.relative_to(ROOT)}) | `{d['checkpoint']}` | {val} | {c['trained_ratio']:g} -> "
            f"**{c['chosen']:g}**{'' if c['constraint_met'] else ' (bound not met)'} | {test} | `{d['command']}` |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--presets"]:
        print("\n".join([*presets(), "### Speed (benchmarks)", "", *benchmarks()]))
        return 0
    if argv:
        print("usage: results_table.py [--presets]", file=sys.stderr)
        return 2
    out = [
        "### Classifiers",
        "",
        *classifiers(),
        "",
        "### Adversarial-training baselines",
        "",
        *adversarial(),
        "",
        "### PSSR (quick evaluation of `pssr train-pssr`: PGD-40, L-inf)",
        "",
        "Each command reproduces its row with the configs as they are now: every setting of the run that differs "
        "from the config file's current value is spelled out as `--set`. On cifar10-jpeg and mnist-10k, an n (or adaptive "
        "n) below the test split's size means its first images in class order (airplanes; digits 0-2): these "
        "quick evaluations predate the loaders' shuffled evaluation order (see the correction above).",
        "",
        *pssr(),
        "",
        "### Inference removal ratio chosen on validation (`pssr calibrate`, gray-box PGD-20, L-inf)",
        "",
        "The ratio with the best gray-box accuracy on PSSR's own validation split within 3 points of the classifier's "
        "clean accuracy there (else the most accurate on clean images); then the whole test split with that ratio.",
        "",
        *calibrations(),
        "",
        "### Harness evaluations (paper protocol vs adaptive, worst case per example)",
        "",
        *evaluations(),
        "",
        "### Per-attack tables",
        "",
        *per_attack(),
        "",
        "### Speed (benchmarks)",
        "",
        *benchmarks(),
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
