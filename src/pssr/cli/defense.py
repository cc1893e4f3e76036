"""``pssr train-pssr``, ``pssr purify`` and ``pssr calibrate``: the PSSR defense from the shell.

``pssr train-pssr --config configs/pssr-digits.toml [--epochs N] [--set pssr.lr=...] [--out DIR]``
trains the scorer and regenerator in front of the classifier checkpoint named in ``[run]
classifier``, runs a quick gray-box + adaptive evaluation on the test split and writes
``DIR/pssr.pt`` and the JSON summary (rerunning the same command resumes); it shares its options
with the other training commands (:func:`pssr.cli.train.add_training_options`). Under ``torchrun
--nproc_per_node=N -m pssr train-pssr ...`` training and the quick evaluation are sharded over the N
ranks and rank 0 alone writes DIR and prints the summary (see docs/distributed.md).

``pssr purify --checkpoint ck.pt a.png b.png --out DIR [--figure]`` writes purified PNGs (and
side-by-side figures) after checking every input; a zoo model name may stand for the checkpoint
(``--model fashion-mnist/pssr``). ``pssr calibrate --checkpoint ck.pt --ratios 0,0.05,0.1 --out
ck-cal.pt`` chooses the inference removal ratio on PSSR's validation split
(:mod:`pssr.train.calibrate`).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _train_pssr(args: argparse.Namespace) -> int:
    from pssr import distributed as D
    from pssr.cli.train import config_mapping
    from pssr.experiments.pssr_train import run_from_config

    if args.quick and not args.results:  # a smoke run never overwrites the config's results file
        args.overrides = ['run.results=""', *args.overrides]
    mapping = config_mapping(args, "pssr")  # errors before any work
    out = args.out
    if args.quick and not out:
        run = mapping.get("run", {})
        out = (
            f"{run.get('out') or Path('runs') / mapping.get('data', {}).get('name', 'digits') / 'pssr'}-quick"
        )
    s, is_main = D.run_and_leave(
        lambda: run_from_config(
            mapping,
            out,
            results=args.results,
            resume=args.resume,
            progress=args.progress,
            command=args.command_line,
        )
    )
    if not is_main:  # under torchrun: rank 0 wrote the files and prints the summary
        return 0
    t = s["test"]
    adaptive = (
        f"adaptive (n={t['adaptive_n']}) bpda-identity {t['pssr_adaptive_pgd_identity_acc']:.4f}, "
        f"mask-constant {t['pssr_adaptive_pgd_mask-constant_acc']:.4f}, worst {t['pssr_adaptive_worst_acc']:.4f}"
        if t["adaptive_n"]
        else "no adaptive attack (run.adaptive_n = 0)"
    )
    print(
        f"pssr on {s['dataset']} (n={t['n']}, Linf eps={t['eps']:.4g}, PGD-{t['steps']}): "
        f"clean {t['clf_clean_acc']:.4f} -> {t['pssr_clean_acc']:.4f}; gray-box PGD {t['clf_pgd_acc']:.4f} -> "
        f"{t['pssr_graybox_pgd_acc']:.4f}; {adaptive}; checkpoint {s['checkpoint']}"
    )
    return 0


def _checkpoint(spec: str) -> str:
    """A checkpoint path, or a zoo model name turned into one (``pssr zoo list``)."""
    from pssr.zoo import resolve

    return resolve(spec)


def _purify(args: argparse.Namespace) -> int:
    from pssr.defense.files import purify_files

    ck = _checkpoint(args.checkpoint)
    for r in purify_files(ck, args.images, args.out, figure=args.figure, device=args.device):
        extra = f", figure {r['figure']}" if "figure" in r else ""
        print(
            f"{r['input']} -> {r['output']} ({r['removed_pixels']} pixels restored; "
            f"prediction {r['pred_before']} -> {r['pred_after']}{extra})"
        )
    return 0


def _ratios(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ratios takes comma-separated numbers in [0, 1], got {text!r}"
        ) from None


def _calibrate(args: argparse.Namespace) -> int:
    from pssr.experiments.calibrate import calibrate_checkpoint

    s = calibrate_checkpoint(
        _checkpoint(args.checkpoint),
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
    from pssr.cli.train import add_training_options

    p = subparsers.add_parser(
        "train-pssr",
        help="train the PSSR defense from a config file",
        description="Train PSSR ([data], [pssr], [run] tables of a TOML config) and evaluate it.",
    )
    add_training_options(p, "pssr", "configs/pssr-digits.toml")
    p.add_argument(
        "--out", default=None, help="output folder for pssr.pt (default: [run] out, else runs/<dataset>/pssr)"
    )
    p.add_argument(
        "--results", default=None, help="also write the JSON summary here (default: [run] results)"
    )
    p.set_defaults(func=_train_pssr)

    q = subparsers.add_parser(
        "purify",
        help="purify image files with a trained PSSR checkpoint",
        description="Purify PNG/JPEG images (of the model's exact input size) with PSSR.",
    )
    q.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        required=True,
        metavar="PATH_OR_NAME",
        help="PSSR checkpoint (pssr.pt from train-pssr) or zoo model name (pssr zoo list)",
    )
    q.add_argument("images", nargs="+", help="PNG/JPEG files (all are checked before anything is written)")
    q.add_argument(
        "--out",
        default="purified",
        help="output folder for purified PNGs (created when missing; default: purified)",
    )
    q.add_argument("--figure", action="store_true", help="also write input/score/mask/restored figures")
    q.add_argument("--device", default=None, help="cpu, cuda or auto (default: auto)")
    q.set_defaults(func=_purify)

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
    c.add_argument("--ratios", required=True, type=_ratios, help="candidate ratios, e.g. 0,0.02,0.05,0.1")
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
