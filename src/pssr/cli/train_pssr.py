"""``pssr train-pssr``: the PSSR defense trained from a TOML config file.

``pssr train-pssr --config configs/pssr-digits.toml [--epochs N] [--set pssr.lr=...] [--out DIR]``
trains the scorer and regenerator in front of the classifier checkpoint named in ``[run]
classifier``, runs a quick gray-box + adaptive evaluation on the test split and writes
``DIR/pssr.pt`` and the JSON summary (rerunning the same command resumes); it shares its options
with the other training commands (:func:`pssr.cli.training.add_training_options`). Under ``torchrun
--nproc_per_node=N -m pssr train-pssr ...`` training and the quick evaluation are sharded over the N
ranks and rank 0 alone writes DIR and prints the summary (see docs/distributed.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pssr.cli.training import add_training_options, config_mapping


def _train_pssr(args: argparse.Namespace) -> int:
    from pssr import distributed as D
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


def register(subparsers: argparse._SubParsersAction) -> None:
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
