"""``pssr report``: redraw a saved report, and render what the results/ folder of a checkout holds.

``pssr report DIR`` redraws report.md and the plots of an evaluation's or a preset's report folder from
its report.json. With one of these options it works on a checkout's ``results/`` folder instead
(:mod:`pssr.reporting`; ``--root`` names the checkout, the current folder by default):

- ``--tables`` prints every results table (docs/results.md's block), ``--tables presets`` the
  presets' tables and speed (README.md's block), Markdown on stdout;
- ``--update-docs`` rewrites those generated blocks of README.md and docs/results.md;
- ``--calibration-plot [PNG]`` plots the ``pssr calibrate`` sweeps (default docs/figures/calibration.png);
- ``--compress DIR...`` gzips the per-example records of finished report folders before they are
  committed (an evaluation's or a preset's folder).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def _rerender(args: argparse.Namespace) -> int:
    from pssr.experiments.preset_report import rerender_report

    if not args.dirs:
        raise ValueError(
            "pass a report folder (pssr report DIR), or one of --tables, --update-docs, --calibration-plot, "
            "--compress DIR"
        )
    for d in args.dirs:
        print(f"wrote {rerender_report(d)}")
    return 0


def _compress(args: argparse.Namespace) -> int:
    from pssr.reporting.compress import compress_folder

    if not args.dirs:
        raise ValueError(
            "--compress needs the report folders to compress: pssr report --compress DIR [DIR ...]"
        )
    for d in args.dirs:
        print("\n".join(compress_folder(Path(d))))
    return 0


def _checkout(args: argparse.Namespace, option: str) -> Path:
    """The checkout whose results/ the option renders (a report folder given beside it is a mistake)."""
    if args.dirs:
        raise ValueError(
            f"{option} renders ROOT/results and takes no report folder; pass --root ROOT instead"
        )
    root = Path(args.root)
    if not (root / "results").is_dir():
        raise ValueError(f"no results/ folder in {root}: run from the repository root or pass --root")
    return root


def _tables(args: argparse.Namespace) -> int:
    from pssr.reporting.tables import all_tables, preset_tables

    root = _checkout(args, "--tables")
    print(preset_tables(root) if args.tables == "presets" else all_tables(root))
    return 0


def _update_docs(args: argparse.Namespace) -> int:
    from pssr.reporting.docs import update_docs

    for page in update_docs(_checkout(args, "--update-docs")):
        print(f"wrote {page}")
    return 0


def _calibration_plot(args: argparse.Namespace) -> int:
    from pssr.reporting.calibration_plot import plot_calibration

    root = _checkout(args, "--calibration-plot")
    out = (
        Path(args.calibration_plot)
        if args.calibration_plot
        else root / "docs" / "figures" / "calibration.png"
    )
    print(f"wrote {plot_calibration(root / 'results', out)}")
    return 0


# option (its argparse dest) -> handler; without any of them, the folders are redrawn
_MODES: dict[str, Callable[[argparse.Namespace], int]] = {
    "compress": _compress,
    "tables": _tables,
    "update_docs": _update_docs,
    "calibration_plot": _calibration_plot,
}


def _report(args: argparse.Namespace) -> int:
    chosen = [m for m in _MODES if getattr(args, m) not in (None, False)]
    return _MODES[chosen[0]](args) if chosen else _rerender(args)


def register(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser(
        "report",
        help="re-render report.md and plots from a saved report.json; render the results/ tables",
        description="Redraw report.md and the plots of an evaluation report folder, or render the tables, "
        "the README/docs blocks and the calibration plot from a checkout's results/ folder.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  pssr report runs/demo/report                 # redraw one report (an evaluation's or a preset's)\n"
        "  pssr report --tables > tables.md             # every results table, from ./results\n"
        "  pssr report --tables presets                 # the presets' tables and speed (README.md's)\n"
        "  pssr report --update-docs                    # rewrite README.md's and docs/results.md's blocks\n"
        "  pssr report --calibration-plot               # -> docs/figures/calibration.png\n"
        "  pssr report --compress results/digits        # gzip records.jsonl before committing",
    )
    q.add_argument("dirs", nargs="*", metavar="DIR", help="report folder(s) holding report.json")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument(
        "--compress",
        action="store_true",
        help="gzip the DIRs' records.jsonl (finished reports, before committing)",
    )
    mode.add_argument(
        "--tables",
        nargs="?",
        const="all",
        choices=("all", "presets"),
        help="print the tables rendered from ROOT/results: all (docs/results.md's) or presets (README.md's)",
    )
    mode.add_argument(
        "--update-docs",
        action="store_true",
        help="rewrite the generated blocks of ROOT/README.md and ROOT/docs/results.md",
    )
    mode.add_argument(
        "--calibration-plot",
        nargs="?",
        const="",
        metavar="PNG",
        help="plot ROOT/results/*/calibrated/*.json (default: ROOT/docs/figures/calibration.png)",
    )
    q.add_argument("--root", default=".", help="the checkout whose results/ is rendered (default: .)")
    q.set_defaults(func=_report)
