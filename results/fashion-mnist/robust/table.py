"""Issue 18's one table for Fashion-MNIST: every model of an evaluation report (evaluate.py) with its
parameters and training compute, written as report.json / report.md beside this script.

    python results/fashion-mnist/robust/table.py [EVAL_DIR]    # default: results/fashion-mnist/robust/e4

Accuracies (clean, paper-protocol worst case, adaptive worst case, worst case per example) come from
EVAL_DIR/report.json; parameters from the same report; training compute from the training records
committed here and the zoo's cards (wall seconds on one CPU thread, the whole chain from scratch:
a model fine-tuned from another counts that other's time too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _json(name: str) -> dict[str, Any]:
    return json.loads((HERE / name).read_text())


def _adv_seconds(rec: dict[str, Any]) -> float:
    m = rec["metrics"]
    return float(m["train_seconds"]) + float(m.get("val_seconds") or 0.0)


def training() -> dict[str, dict[str, Any]]:
    """``{eval model name: {"what", "train_seconds", "chain"}}`` from the committed records and cards."""
    from pssr.zoo.store import card

    clf = float(card("fashion-mnist/classifier")["train_wall_seconds"])
    pgd_at_card = card("fashion-mnist/pgd-at")
    pgd_at = float(pgd_at_card["train_wall_seconds"])
    trades = _json("trades-e4.json")
    robust = _json("pssr-robust-e4-train.json")
    out = {
        "undefended": {
            "what": "small-cnn, standard training (zoo fashion-mnist/classifier, 6 epochs)",
            "train_seconds": clf,
            "chain": "classifier",
        },
        "pgd-at": {
            "what": "PGD-AT (Madry; 10 steps, 4 epochs from the classifier, epoch chosen on 5,000 held-out "
            "training images; zoo fashion-mnist/pgd-at)",
            "train_seconds": clf + pgd_at,
            "chain": "classifier + PGD-AT "
            f"({pgd_at_card['trainer_metrics']['passes_per_example']} passes per example per epoch)",
        },
        "trades": {
            "what": "TRADES (beta 6; 10 KL steps, 4 epochs from the classifier, epoch chosen on the same "
            "5,000; trades-e4.json)",
            "train_seconds": clf + _adv_seconds(trades),
            "chain": "classifier + TRADES "
            f"({trades['metrics']['passes_per_example']} passes per example per epoch)",
        },
        "pssr": {
            "what": "PSSR, the paper's training (zoo fashion-mnist/pssr: 8 epochs on 12,000 images)",
            "train_seconds": clf + float(card("fashion-mnist/pssr")["train_wall_seconds"]),
            "chain": "classifier + PSSR",
        },
        "pssr-robust-e4": {
            "what": "robust PSSR (pssr.mode robust, from zoo fashion-mnist/pgd-at; 2 epochs on 6,000 "
            "images, classifier fine-tuned; pssr-robust-e4-train.json)",
            "train_seconds": clf + pgd_at + float(robust["train_seconds_this_invocation"]),
            "chain": "classifier + PGD-AT + robust PSSR",
        },
    }
    if (HERE / "pgd-at-w44.json").is_file():
        w44 = _json("pgd-at-w44.json")
        out["pgd-at-w44"] = {
            "what": "capacity-matched PGD-AT (small-cnn width 44, the same recipe; pgd-at-w44.json)",
            "train_seconds": float(_json("classifier-w44.json")["train_seconds"]) + _adv_seconds(w44),
            "chain": "classifier (width 44) + PGD-AT",
        }
    return out


ORDER = ("undefended", "pgd-at", "trades", "pgd-at-w44", "pssr", "pssr-robust-e4")


def build(eval_dir: Path) -> dict[str, Any]:
    rep = json.loads((eval_dir / "report.json").read_text())
    train = training()
    cfg = rep["config"]
    rows = []
    for name in sorted(rep["models"], key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        m = rep["models"][name]
        s = m["summary"]
        eps = next(iter(s["worst_case"]["adaptive"]))
        t = train.get(name, {})
        rows.append(
            {
                "model": name,
                "what": t.get("what", ""),
                "parameters": m["parameters"],
                "train_seconds": t.get("train_seconds"),
                "train_chain": t.get("chain", ""),
                "clean": s["clean_accuracy"],
                "paper_worst": s["worst_case"]["paper"][eps],
                "adaptive_worst": s["worst_case"]["adaptive"][eps],
                "flagged": s["flagged"],
            }
        )
    return {
        "kind": "pssr.issue18.table",
        "dataset": "fashion-mnist",
        "eval_report": str(eval_dir.relative_to(HERE) if eval_dir.is_relative_to(HERE) else eval_dir),
        "n": cfg.get("n") or cfg.get("num_examples"),
        "eps": eps,
        "rows": rows,
        "missing": [k for k in ORDER if k not in rep["models"]],
    }


def markdown(t: dict[str, Any]) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "# Fashion-MNIST: robust PSSR against the baselines (issue 18)",
        "",
        f"L-inf eps = {t['eps']}; {t['n']} test images drawn at random (seed 0) from the whole split; worst "
        f"case per example over every attack of the column's threat model (evaluation: "
        f"[{t['eval_report']}/report.md]({t['eval_report']}/report.md), where every attack, check and "
        "time is). Training: wall seconds on one shared CPU thread for the whole chain from scratch.",
        "",
        "| model | parameters | training (s) | clean | paper worst | adaptive worst | what |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in t["rows"]:
        secs = f"{r['train_seconds']:,.0f}" if r["train_seconds"] is not None else "–"
        flag = " ⚠" if r["flagged"] else ""
        lines.append(
            f"| {r['model']}{flag} | {r['parameters']:,} | {secs} | {pct(r['clean'])} | {pct(r['paper_worst'])} "
            f"| **{pct(r['adaptive_worst'])}** | {r['what']} |"
        )
    if t["missing"]:
        lines += ["", "Not in this evaluation: " + ", ".join(t["missing"]) + " (docs/robust.md says why)."]
    lines += [
        "",
        "⚠: the evaluation flagged the model (see its checks); its robust accuracies may be upper bounds.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    eval_dir = Path(argv[0]) if argv else HERE / "e4"
    t = build(eval_dir.resolve())
    (HERE / "report.json").write_text(json.dumps(t, indent=2) + "\n")
    (HERE / "report.md").write_text(markdown(t))
    print(markdown(t))


if __name__ == "__main__":
    main(sys.argv[1:])
