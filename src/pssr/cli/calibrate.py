"""``pssr calibrate --checkpoint ck.pt --ratios 0,0.05,0.1 --out ck-cal.pt``: PSSR's inference removal
ratio chosen on its validation split (:mod:`pssr.experiments.calibrate`, :mod:`pssr.train.calibrate`);
a zoo model name may stand for the checkpoint."""

from __future__ import annotations

import argparse


def parse_ratios(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ratios takes comma-separated numbers in [0, 1], got {text!r}"
        ) from None


def _calibrate(args: argparse.Namespace) -> int:
    from pssr.experiments.calibrate import calibrate_checkpoint
    from pssr.zoo import resolve

    s = calibrate_checkpoint(
        resolve(args.checkpoint),  # a checkpoint path, or a zoo model name (pssr zoo list)
        args.ratios,
        out=args.out,
        results=args.results,
        max_clean_drop=args.max_clean_drop / 100.0,
        eps=args.eps,
        steps=args.steps,
        seed=args.seed,
        data=args.data,
        data_dir=args.data_dir,
        test_n=args.test_n,
        adaptive_n=args.adaptive_n,
        device=args.device,
        command=args.command_line,
    )
    c = s["calibration"]
    print(
        f"validation split (n={c['n']}, Linf eps={c['eps']:.4g}, gray-box PGD-{c['steps']} on the classifier): "
        f"classifier clean {c['classifier_clean_acc']:.4f}, PGD {c['classifier_graybox_acc']:.4f}"
    )
    for r in c["rows"]:
        mark = "  <- chosen" if r["ratio"] == c["chosen"] else ""
        print(
            f"  ratio {r['ratio']:<6g} ({r['removed_pixels']} px): clean {r['clean_acc']:.4f}, "
            f"gray-box {r['graybox_acc']:.4f}{mark}"
        )
    if not c["constraint_met"]:
        print(
            f"no ratio keeps clean accuracy within {args.max_clean_drop:g} points of the classifier's; "
            "chose the most accurate on clean images"
        )
    if "test" in s:
        t = s["test"]
        adaptive = (
            f", adaptive worst (n={t['adaptive_n']}) {t['pssr_adaptive_worst_acc']:.4f}"
            if t["adaptive_n"]
            else ""
        )
        print(
            f"test (n={t['n']}, ratio {t['ratio']:g}): clean {t['clf_clean_acc']:.4f} -> {t['pssr_clean_acc']:.4f}; "
            f"gray-box PGD {t['clf_pgd_acc']:.4f} -> {t['pssr_graybox_pgd_acc']:.4f}{adaptive}"
        )
    if "calibrated_checkpoint" in s:
        print(f"wrote {s['calibrated_checkpoint']}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    c = subparsers.add_parser(
        "calibrate",
        help="choose PSSR's inference removal ratio on its validation split",
        description="Measure clean and gray-box accuracy of a PSSR checkpoint for several "
        "removal ratios on the validation images it was not trained on, choose one "
        "(highest gray-box accuracy within --max-clean-drop points of the classifier's "
        "clean accuracy) and optionally save it and evaluate it on the test split.",
    )
    c.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        required=True,
        metavar="PATH_OR_NAME",
        help="PSSR checkpoint (pssr.pt from train-pssr) or zoo model name (pssr zoo list)",
    )
    c.add_argument(
        "--ratios", required=True, type=parse_ratios, help="candidate ratios, e.g. 0,0.02,0.05,0.1"
    )
    c.add_argument(
        "--max-clean-drop", type=float, default=3.0, help="points of clean accuracy PSSR may lose (default 3)"
    )
    c.add_argument("--eps", type=float, default=None, help="Linf budget (default: the training eps)")
    c.add_argument("--steps", type=int, default=20, help="PGD steps of the gray-box attack (default 20)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--data", default=None, help="dataset (default: the one recorded in the checkpoint)")
    c.add_argument("--data-dir", default=None)
    c.add_argument("--out", default=None, help="save the calibrated checkpoint here")
    c.add_argument("--results", default=None, help="write the JSON summary here")
    c.add_argument(
        "--test-n",
        type=int,
        default=0,
        help="then evaluate the chosen ratio on N test images (-1: all; default 0: no test evaluation)",
    )
    c.add_argument(
        "--adaptive-n", type=int, default=0, help="test images also attacked adaptively (BPDA views)"
    )
    c.add_argument("--device", default=None, help="cpu, cuda or auto (default: auto)")
    c.set_defaults(func=_calibrate)
