"""``pssr finding``: PSSR's salient/trivial finding measured for a classifier (arXiv 2402.00304).

``pssr finding --data fashion-mnist --checkpoint runs/zoo/fashion-mnist/classifier.pt
[--pssr [NAME=]PSSR.pt ...] [--n 500] [--out results/fashion-mnist/finding]`` attacks
``n`` seeded random test images (PGD, CW-Linf, AutoAttack on the first ``--n-slow``, DDN-L2 at the
dataset's budgets), puts back the clean value of a growing fraction of the pixels in several orders
(salient first, trivial first, random, each scorer's) and writes OUT/records.jsonl.gz, report.json,
report.md and curves.png (see :mod:`pssr.analysis.finding`). Adversarial examples are cached in
``--cache`` so that a rerun only redoes what changed. ``--render-only`` redraws report.md and the
figure from OUT/report.json.
"""

from __future__ import annotations

import argparse


def _floats(text: str) -> list[float]:
    from fractions import Fraction

    try:
        return [float(Fraction(t.strip())) for t in text.split(",") if t.strip()]
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [t.strip().lower() for t in text.split(",") if t.strip()]


def _finding(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pssr.analysis.render import render_folder

    if not (args.out or args.data):
        raise ValueError("give --data NAME (and --checkpoint), or --out DIR with --render-only")
    out = Path(args.out or f"results/{args.data}/finding")
    if args.render_only:
        for path in render_folder(out).values():
            print(f"wrote {path}")
        return 0
    if not args.data or not args.checkpoint:
        raise ValueError("--data and --checkpoint are required (unless --render-only)")
    from pssr.analysis.files import finding_from_files

    rep = finding_from_files(
        args.data,
        args.checkpoint,
        out,
        pssr=args.pssr,
        n=args.n,
        n_slow=args.n_slow,
        attacks=args.attacks,
        rankings=args.rankings,
        grid=args.grid,
        ratio=args.ratio,
        seed=args.seed,
        batch_size=args.batch_size,
        cache_dir=args.cache or f"runs/finding/{args.data}",
        data_dir=args.data_dir,
        device=args.device,
    )
    for label, a in rep["attacks"].items():
        halves = ", ".join(
            f"{r} {'never' if k is None else f'{100 * k:.1f}%'}" for r, k in a["k_half"].items()
        )
        rate = "n/a" if a["success_rate"] is None else f"{100 * a['success_rate']:.1f}%"
        print(f"{label}: success {rate} on {a['n_clean_correct']} images; k to halve it: {halves}")
    print(f"wrote {out}/report.json, report.md, curves.png, records.jsonl.gz")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from pssr.analysis.finding import DEFAULT_ATTACKS, DEFAULT_GRID, DEFAULT_RANKINGS

    p = subparsers.add_parser(
        "finding",
        help="measure PSSR's salient/trivial finding: does restoring a few salient pixels break the attack?",
        description="Attack a classifier, put back the clean value of a fraction of the pixels (salient "
        "first, trivial first, random, each scorer's order) and record the attack's success rate against "
        "that fraction; also how well each Pixel Surgery scorer finds the salient pixels.",
    )
    p.add_argument("--data", default=None, help="dataset name (e.g. fashion-mnist, mnist-10k, cifar10-jpeg)")
    p.add_argument(
        "--checkpoint", default=None, help="classifier checkpoint (or a PSSR checkpoint: its classifier)"
    )
    p.add_argument(
        "--pssr",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="PSSR checkpoint whose trained scorer is measured too (repeatable; NAME defaults to its scorer)",
    )
    p.add_argument("--n", type=int, default=500, help="test images, a seeded random draw (default 500)")
    p.add_argument(
        "--n-slow", type=int, default=100, help="images for AutoAttack, the first of the draw (default 100)"
    )
    p.add_argument(
        "--attacks",
        type=_names,
        default=list(DEFAULT_ATTACKS),
        help=f"labels of the paper attack set (default {','.join(DEFAULT_ATTACKS)})",
    )
    p.add_argument(
        "--rankings",
        type=_names,
        default=list(DEFAULT_RANKINGS),
        help=f"default {','.join(DEFAULT_RANKINGS)}",
    )
    p.add_argument("--grid", type=_floats, default=list(DEFAULT_GRID), help="fractions k, from 0, increasing")
    p.add_argument(
        "--ratio", type=float, default=None, help="scorers' removal ratio (default: the PSSR's, else 0.1)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", default=None, help="output folder (default results/<data>/finding)")
    p.add_argument("--cache", default=None, help="adversarial-example cache (default runs/finding/<data>)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default cpu)")
    p.add_argument(
        "--render-only", action="store_true", help="redraw report.md and curves.png from report.json"
    )
    p.set_defaults(func=_finding)
