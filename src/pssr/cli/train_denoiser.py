"""``pssr train-denoiser --config configs/denoise-mnist-10k-s0.5.toml``: PSSR's regenerator trained as a
Gaussian denoiser for a frozen classifier (:mod:`pssr.experiments.denoise`, :mod:`pssr.train.denoise`),
for ``pssr certify``; rerunning resumes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _train_denoiser(args: argparse.Namespace) -> int:
    from pssr.cli.training import config_mapping
    from pssr.experiments.denoise import run_from_config

    summary = run_from_config(
        config_mapping(args, "denoise"),
        args.out,
        classifier=args.classifier,
        resume=args.resume,
        command=args.command_line,
        default_out=Path("runs") / Path(args.config).stem,
    )
    f = summary["final"]
    nan = float("nan")
    print(
        f"denoiser (sigma {summary['sigma']:g}, surgery {summary['surgery']}) on {summary['dataset']}: "
        f"noisy accuracy {100 * f.get('noisy_acc_denoised', nan):.1f}% with it, "
        f"{100 * f.get('noisy_acc_classifier', nan):.1f}% without; checkpoint {summary['checkpoint']}"
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-denoiser",
        help="train PSSR's regenerator as a Gaussian denoiser for a frozen classifier",
        description="Train a denoiser ([data] + [denoise] + [run] tables of a TOML config).",
    )
    p.add_argument("--config", required=True, help="TOML file with [data], [denoise] and [run] tables")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (repeatable), e.g. --set denoise.sigma=0.25",
    )
    p.add_argument("--classifier", default=None, help="classifier checkpoint (default: [run] classifier)")
    p.add_argument("--out", default=None, help="output folder (default: [run] out, else runs/<config stem>)")
    p.add_argument("--epochs", type=int, default=None, help="shortcut for --set denoise.epochs=N")
    p.add_argument("--device", default=None, help="shortcut for --set denoise.device=... (auto, cpu, cuda)")
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast for training")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing state")
    p.set_defaults(func=_train_denoiser)
