"""``pssr train-classifier`` and ``pssr train-adversarial``: train from a TOML config file.

Each reads the tables it owns (``[data]`` plus ``[classifier]`` or ``[adv_train]``) and ignores the
others, applies ``--set section.key=value`` overrides, trains with per-epoch checkpoints (rerunning
the same command resumes) and writes the checkpoint plus a JSON summary into ``--out``. Under
``torchrun`` the training is data-parallel and rank 0 alone prints the summary (see
docs/distributed.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _common(p: argparse.ArgumentParser, section: str) -> None:
    p.add_argument("--config", required=True, help=f"TOML file with [data] and [{section}] tables")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override one config value (repeatable), e.g. --set {section}.lr=0.05",
    )
    p.add_argument("--out", default=None, help="output folder (default: runs/<config file stem>)")
    p.add_argument("--epochs", type=int, default=None, help=f"shortcut for --set {section}.epochs=N")
    p.add_argument(
        "--device", default=None, help=f"shortcut for --set {section}.device=... (auto, cpu, cuda)"
    )
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast for training")
    p.add_argument("--summary", default=None, help="also write the JSON summary to this path")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _mapping(args: argparse.Namespace, section: str) -> dict[str, Any]:
    from pssr.config import apply_overrides, load_toml

    sets = list(args.overrides)
    if args.epochs is not None:
        sets.append(f"{section}.epochs={args.epochs}")
    if args.device is not None:
        sets.append(f'{section}.device="{args.device}"')
    if args.bf16:
        sets.append(f"{section}.bf16=true")
    return apply_overrides(load_toml(args.config), sets)


def _out(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else Path("runs") / Path(args.config).stem


def _print(summary: dict[str, Any]) -> None:
    m = summary["metrics"]
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()]
    print(
        f"{summary['kind']} {summary['model']} on {summary['dataset']}: {', '.join(parts)}; "
        f"{summary['epochs']} epochs, {summary['train_seconds']:.0f} s training, "
        f"{summary['images_per_second']:.0f} img/s; checkpoint {summary['checkpoint']}"
    )


def _run_and_print(run: Callable[[], dict[str, Any]]) -> int:
    """``run()`` on every rank (under torchrun), the summary printed by rank 0 alone; the process
    group is left at the end."""
    from pssr import distributed as D

    summary, is_main = D.run_and_leave(run)
    if is_main:
        _print(summary)
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    from pssr.train.classifier import run_from_config

    return _run_and_print(
        lambda: run_from_config(
            _mapping(args, "classifier"),
            _out(args),
            summary_path=args.summary,
            resume=args.resume,
            progress=args.progress,
            command=args.command_line,
        )
    )


def _train_adversarial(args: argparse.Namespace) -> int:
    from pssr.train.adversarial import run_from_config

    return _run_and_print(
        lambda: run_from_config(
            _mapping(args, "adv_train"),
            _out(args),
            summary_path=args.summary,
            resume=args.resume,
            progress=args.progress,
            command=args.command_line,
        )
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-classifier",
        help="train a classifier from a config file",
        description="Train a classifier ([data] + [classifier] tables of a TOML config).",
    )
    _common(p, "classifier")
    p.set_defaults(func=_train_classifier)

    p = subparsers.add_parser(
        "train-adversarial",
        help="adversarial training baseline (PGD-AT, TRADES)",
        description="Adversarial training ([data] + [adv_train] tables of a TOML config).",
    )
    _common(p, "adv_train")
    p.set_defaults(func=_train_adversarial)
