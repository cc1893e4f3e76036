"""Render the README's results tables from the JSON files under results/ (never typed by hand).

    .venv/bin/python scripts/results_table.py            # prints Markdown
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(rel: str) -> dict | None:
    p = ROOT / "results" / rel
    return json.loads(p.read_text()) if p.is_file() else None


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def classifiers() -> list[str]:
    rows = ["| dataset | model | test accuracy | epochs | training wall time | img/s | command |", "|---|---|---|---|---|---|---|"]
    for ds in ("fashion-mnist", "cifar10-jpeg"):
        d = _load(f"{ds}/classifier.json")
        if not d:
            continue
        rows.append(f"| {ds} | {d['model']} | {_pct(d['metrics']['test_acc'])} (n={d['metrics']['n_test']}) | {d['epochs']} | "
                    f"{d['train_seconds'] / 60:.0f} min | {d['images_per_second']:.0f} | `{d['command']}` |")
    return rows


def adversarial() -> list[str]:
    rows = ["| dataset | model | clean | PGD-20 robust (own trainer's eval) | eps | epochs | command |", "|---|---|---|---|---|---|---|"]
    for ds in ("fashion-mnist",):
        for m in ("pgd-at", "trades"):
            d = _load(f"{ds}/{m}.json")
            if not d:
                continue
            mt = d["metrics"]
            rows.append(f"| {ds} | {m} | {_pct(mt['test_acc'])} | {_pct(mt.get('pgd20_robust_acc'))} (n={mt.get('pgd20_n')}) | "
                        f"{mt.get('pgd20_eps')} | {d['epochs']} | `{d['command']}` |")
    return rows


def pssr() -> list[str]:
    rows = ["| dataset | classifier clean | PSSR clean | PGD on classifier, then purified (paper protocol) | adaptive worst (BPDA / mask-constant full gradient) | eps | n (adaptive n) | command |",
            "|---|---|---|---|---|---|---|---|"]
    for ds in ("digits", "fashion-mnist"):
        d = _load(f"{ds}/pssr-train.json")
        if not d:
            continue
        t = d["test"]
        rows.append(f"| {ds} | {_pct(t['clf_clean_acc'])} | {_pct(t['pssr_clean_acc'])} | {_pct(t['pssr_graybox_pgd_acc'])} | "
                    f"{_pct(t['pssr_adaptive_worst_acc'])} | {t['eps']} | {t['n']} ({t['adaptive_n']}) | `{d['command']}` |")
    return rows


def evaluations() -> list[str]:
    """Summary rows of every harness report under results/<dataset>/<name>/report.json."""
    rows = ["| report | model | clean | paper protocol worst | adaptive worst | flagged | n |",
            "|---|---|---|---|---|---|---|"]
    commands = []
    for path in sorted((ROOT / "results").glob("*/*/report.json")):
        d = json.loads(path.read_text())
        if "models" not in d:
            continue
        rel = path.parent.relative_to(ROOT)
        n = d.get("config", {}).get("n")
        commands.append(f"- `{rel}`: `{d.get('metadata', {}).get('command', '')}`")
        for name, info in d["models"].items():
            s = info["summary"]
            wc = s.get("worst_case", {})
            paper = "; ".join(f"{_pct(v)} @{e}" for e, v in wc.get("paper", {}).items()) or "—"
            adaptive = "; ".join(f"{_pct(v)} @{e}" for e, v in wc.get("adaptive", {}).items()) or "—"
            rows.append(f"| [{rel}]({rel}/report.md) | {name} | {_pct(s.get('clean_accuracy'))} | {paper} | {adaptive} | "
                        f"{'yes' if s.get('flagged') else 'no'} | {n} |")
    return [*rows, "", "Commands:", "", *commands]


def main() -> int:
    out = ["### Classifiers", "", *classifiers(), "", "### Adversarial-training baselines", "", *adversarial(), "",
           "### PSSR (quick evaluation of `pssr train-pssr`: PGD-40, L-inf)", "", *pssr(), "",
           "### Harness evaluations (paper protocol vs adaptive, worst case per example)", "", *evaluations()]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
