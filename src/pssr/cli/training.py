"""The options the training commands share, and how they run: ``pssr train-classifier``,
``train-adversarial`` and ``train-pssr`` (:mod:`.train_classifier`, :mod:`.train_adversarial`,
:mod:`.train_pssr`).

Each reads the tables it owns (``[data]`` plus ``[classifier]``, ``[adv_train]`` or ``[pssr]`` and
``[run]``); a table of another command (the shipped configs hold several) is left alone, a table no
command knows is an error (:func:`pssr.config.load_config`). ``--set section.key=value`` overrides a
value of a table the command reads; the command trains with per-epoch checkpoints (rerunning the same
command resumes) and writes the checkpoint plus a JSON summary into ``--out``. Under ``torchrun`` the
training is data-parallel and rank 0 alone prints the summary (see docs/distributed.md).

The shared options (:func:`add_training_options`): ``--config``, ``--set``, ``--epochs``, ``--device``,
``--bf16``, ``--out``, ``--results``, ``--quick``, ``--no-resume``, ``--no-progress``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

# section a command trains -> the overrides of --quick (a smoke run in seconds to minutes, not a result)
QUICK: dict[str, tuple[str, ...]] = {
    "classifier": ("classifier.epochs=1",),
    "adv_train": ("adv_train.epochs=1", "adv_train.eval_steps=5", "adv_train.eval_n=200"),
    "pssr": ("pssr.epochs=2", "pssr.train_subset=1000", "run.eval_n=200", "run.adaptive_n=100"),
}


def add_training_options(p: argparse.ArgumentParser, section: str, example: str) -> None:
    """The options every training command shares; ``section`` is the table it trains from."""
    from pssr.config import COMMAND_SECTIONS

    tables = " + ".join(f"[{t}]" for t in COMMAND_SECTIONS.get(p.prog, ("data", section)))
    p.add_argument("--config", required=True, help=f"TOML file with {tables} tables, e.g. {example}")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override one config value of {tables} (repeatable), e.g. --set {section}.lr=0.05",
    )
    p.add_argument("--epochs", type=int, default=None, help=f"shortcut for --set {section}.epochs=N")
    p.add_argument(
        "--device", default=None, help=f"shortcut for --set {section}.device=... (auto, cpu, cuda)"
    )
    p.add_argument(
        "--bf16", action="store_true", default=None, help=f"shortcut for --set {section}.bf16=true"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run, not a result ({', '.join(QUICK[section])}); writes to <default out>-quick "
        "and no results file unless --out / --results say where",
    )
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing checkpoint")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def overrides_of(args: argparse.Namespace, section: str) -> list[str]:
    """``--quick`` first, then ``--set`` and the shortcuts (later ones win)."""
    quick = QUICK.get(section, ()) if getattr(args, "quick", False) else ()
    sets = [*quick, *args.overrides]
    if args.epochs is not None:
        sets.append(f"{section}.epochs={args.epochs}")
    if args.device is not None:
        sets.append(f'{section}.device="{args.device}"')
    if args.bf16:
        sets.append(f"{section}.bf16=true")
    return sets


def config_mapping(args: argparse.Namespace, section: str, requires: str | None = None) -> dict[str, Any]:
    """The config file checked strictly (:func:`pssr.config.load_config`) with the overrides applied;
    ``requires``: the table the file must hold (default: ``section``)."""
    from pssr.config import COMMAND_SECTIONS, load_config

    command = f"pssr {args.command}"
    return load_config(
        args.config,
        overrides_of(args, section),
        command=command if command in COMMAND_SECTIONS else None,
        requires=requires or section,
    )


def _out(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    return Path("runs") / (Path(args.config).stem + ("-quick" if args.quick else ""))


def _print(summary: dict[str, Any]) -> None:
    m = summary["metrics"]
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()]
    print(
        f"{summary['kind']} {summary['model']} on {summary['dataset']}: {', '.join(parts)}; "
        f"{summary['epochs']} epochs, {summary['train_seconds']:.0f} s training, "
        f"{summary['images_per_second']:.0f} img/s; checkpoint {summary['checkpoint']}"
    )


def run_and_print(run: Callable[[], dict[str, Any]]) -> int:
    """``run()`` on every rank (under torchrun), the summary printed by rank 0 alone; the process
    group is left at the end."""
    from pssr import distributed as D

    summary, is_main = D.run_and_leave(run)
    if is_main:
        _print(summary)
    return 0


def train_from_config(
    args: argparse.Namespace, section: str, run_from_config: Callable[..., dict[str, Any]]
) -> int:
    mapping = config_mapping(args, section)  # errors before any work
    return run_and_print(
        lambda: run_from_config(
            mapping,
            _out(args),
            summary_path=args.results,
            resume=args.resume,
            progress=args.progress,
            command=args.command_line,
        )
    )


def add_output_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", default=None, help=f"output folder (default: runs/<config file stem>) for {what}")
    p.add_argument(
        "--results",
        "--summary",
        dest="results",
        default=None,
        help="also write the JSON summary to this path (--summary: the former name)",
    )
