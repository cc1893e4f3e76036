"""``pssr demo``: the digits preset, quick, in minutes on a CPU (the whole pipeline of ``pssr reproduce``)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_ATTACKS = {
    "linf": "fgsm,pgd,pgd-full@adaptive,pgd-bpda,square",
    "l2": "ddn-l2",
}
# `pssr demo --quick`: every step of the demo at a smoke-test size (CI runs it on each change)
QUICK_ATTACKS = {"linf": "fgsm,pgd,pgd-full@adaptive"}
QUICK_SETS = (
    "pssr.epochs=4",
    "adv_train.epochs=1",
    "classifier.epochs=5",
    "run.adaptive_n=20",
    "run.eval_n=40",
)
QUICK_N = 40


def _demo(args: argparse.Namespace) -> int:
    from pssr.cli.reproduce import print_summary
    from pssr.experiments.reproduce import reproduce

    # A demo, not a result: the quick digits preset without ablations, TV minimization or
    # AutoAttack (the slow parts on a CPU); `pssr reproduce --preset digits` runs everything.
    out = args.out if not args.quick or args.out != Path("runs/demo") else Path("runs/demo-quick")
    n = args.n if args.n is not None else QUICK_N if args.quick else 100
    res = reproduce(
        "digits",
        runs_dir=out,
        results_dir=out / "report",
        quick=True,
        ablations=False,
        attacks=QUICK_ATTACKS if args.quick else DEMO_ATTACKS,
        eval_n=n,
        input_transforms=("jpeg", "bit-depth", "median"),
        overrides=QUICK_SETS if args.quick else (),
        progress=args.progress,
        command=args.command_line,
    )
    print_summary(res)
    print(f"report: {out / 'report' / 'report.md'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the whole pipeline on the embedded digits data, in minutes on a CPU")
    d.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="folder for checkpoints and the report"
    )
    d.add_argument("--n", type=int, default=None, help="test examples to evaluate (default 100; 0 = all 359)")
    d.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run of the same pipeline (a few epochs, 40 examples, no L2 table; what CI runs): "
        "not a result",
    )
    d.add_argument("--no-progress", dest="progress", action="store_false")
    d.set_defaults(func=_demo)
