"""``pssr reproduce --preset NAME``: a preset end to end (classifier, baselines, PSSR and its ablations,
evaluation, ``results/NAME/``; :mod:`pssr.experiments.reproduce`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def _ratio_list(text: str) -> tuple[float, ...]:
    from pssr.cli.calibrate import parse_ratios

    return tuple(parse_ratios(text))


def register(sub: argparse._SubParsersAction) -> None:
    from pssr.cli.evaluate import model_names
    from pssr.experiments.presets import list_presets

    r = sub.add_parser(
        "reproduce", help="train classifier, baselines and PSSR, evaluate, write results/NAME/"
    )
    r.add_argument("--preset", required=True, choices=list_presets())
    r.add_argument("--quick", action="store_true", help="smoke run: few epochs and examples (not a result)")
    r.add_argument("--no-ablations", dest="ablations", action="store_false", help="skip the PSSR ablations")
    r.add_argument(
        "--no-baselines", dest="baselines", action="store_false", help="skip the baseline defenses"
    )
    # --num-examples: torchrun's parser rejects "--n" anywhere on its command line (see cli/evaluate.py)
    r.add_argument(
        "--n",
        "--num-examples",
        dest="n",
        type=int,
        default=None,
        help="test examples to evaluate (0 = all; default: the preset's); under torchrun write --num-examples",
    )
    r.add_argument("--runs", type=Path, default=None, help="checkpoints folder (default runs/NAME)")
    r.add_argument("--out", type=Path, default=None, help="results folder (default results/NAME)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config value (repeatable)",
    )
    r.add_argument(
        "--calibrate",
        type=_ratio_list,
        default=(),
        metavar="RATIOS",
        help="also evaluate PSSR with the removal ratio (of these, e.g. 0,0.05,0.1) its validation split prefers",
    )
    r.add_argument(
        "--device",
        default="auto",
        help="where the evaluation runs: auto (CUDA when available), cpu, cuda (training: the configs' device)",
    )
    r.add_argument(
        "--report-only",
        action="store_true",
        help="train and compute nothing: write results/NAME/ from the models and saved evaluation state in "
        "the runs folder (a partial report while an evaluation is unfinished; pending cells show '–'; no "
        "example images)",
    )
    r.add_argument(
        "--only",
        type=model_names,
        default=(),
        metavar="MODELS",
        help="evaluate only these models (comma-separated report names, e.g. pssr,pssr-calibrated); the "
        "others' rows come from the saved state (pending where none is saved). Training is unchanged",
    )
    r.add_argument(
        "--attacks",
        dest="attacks",
        type=_norm_attacks,
        action="append",
        default=None,
        metavar="NORM=ATTACKS",
        help="evaluate these attacks (sets or names, comma-separated) for this norm, e.g. linf=paper "
        "(repeatable; the norms named are the only ones run; default: linf=paper,adaptive and "
        "l2=paper). The saved state is per attack: a later run with the default lists reuses it",
    )
    r.add_argument("--no-progress", dest="progress", action="store_false")
    r.set_defaults(func=_reproduce)


def _norm_attacks(text: str) -> tuple[str, str]:
    """``linf=paper,adaptive`` -> ("linf", "paper,adaptive")."""
    from pssr.attacks.base import NORMS

    norm, sep, names = text.partition("=")
    norm, names = norm.strip().lower(), names.strip()
    if not sep or norm not in NORMS or not names:
        raise argparse.ArgumentTypeError(
            f"expected NORM=ATTACKS with NORM {' or '.join(NORMS)} (e.g. linf=paper), got {text!r}"
        )
    return norm, names


def _reproduce(args: argparse.Namespace) -> int:
    from pssr import distributed as D
    from pssr.experiments.reproduce import reproduce

    # Under torchrun the evaluation is sharded over the ranks (training steps are reused or run as
    # the configs say); rank 0 writes the results and prints the summary.
    res, is_main = D.run_and_leave(
        lambda: reproduce(
            args.preset,
            runs_dir=args.runs,
            results_dir=args.out,
            quick=args.quick,
            ablations=args.ablations,
            baselines=args.baselines,
            eval_n=args.n,
            overrides=tuple(args.overrides),
            progress=args.progress,
            command=args.command_line,
            device=args.device,
            calibrate=args.calibrate,
            report_only=args.report_only,
            only=args.only,
            attacks=dict(args.attacks) if args.attacks else None,
        )
    )
    if not is_main:
        return 0
    print_summary(res)
    if res.get("complete") is False:
        print(
            "\npartial report: the evaluation is unfinished (pending units in report.md); rerun without "
            "--report-only / --only to finish it"
        )
    return 0


def print_summary(res: dict) -> None:
    """Clean and worst-case accuracy per model and threat model, from the report JSON."""
    for norm, rep in res["evaluations"].items():
        print(
            f"\n{res['preset']} ({norm}, n={rep.get('config', {}).get('n', '?')}): clean / worst case per threat model"
        )
        for model, info in rep.get("models", {}).items():
            summ = info.get("summary", {})
            parts = (
                [f"clean {100 * summ['clean_accuracy']:.1f}%"]
                if summ.get("clean_accuracy") is not None
                else []
            )
            for tm, per_eps in (summ.get("worst_case") or {}).items():
                parts += [f"{tm}@{eps} {100 * acc:.1f}%" for eps, acc in per_eps.items()]
            print(f"  {model:28s} " + ", ".join(parts) + ("  [flagged]" if summ.get("flagged") else ""))
