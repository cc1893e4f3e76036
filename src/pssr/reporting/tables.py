"""The two generated pages: every results table (docs/results.md) and the presets' (README.md).

Rendered from the JSON files under ``<root>/results/`` by :mod:`~pssr.reporting.training`,
:mod:`~pssr.reporting.evaluations` and :mod:`~pssr.reporting.speed`; ``pssr report --tables`` prints
them and ``pssr report --update-docs`` writes them into the pages' marked blocks.
"""

from __future__ import annotations

from pathlib import Path

from pssr.reporting.evaluations import evaluations, per_attack, presets
from pssr.reporting.speed import benchmarks
from pssr.reporting.training import adversarial, calibrations, classifiers, pssr_runs

PSSR_NOTE = (
    "Each command reproduces its row with the configs as they are now: every setting of the run that differs "
    "from the config file's current value is spelled out as `--set`. On cifar10-jpeg and mnist-10k, an n (or "
    "adaptive n) below the test split's size means its first images in class order (airplanes; digits 0-2): "
    "these quick evaluations predate the loaders' shuffled evaluation order (see the correction above)."
)
CALIBRATION_NOTE = (
    "The ratio with the best gray-box accuracy on PSSR's own validation split within 3 points of the "
    "classifier's clean accuracy there (else the most accurate on clean images); then the whole test split "
    "with that ratio."
)


def preset_tables(root: Path) -> str:
    """The presets' tables and the speed tables (README.md's generated block), Markdown."""
    return "\n".join([*presets(root), "### Speed (benchmarks)", "", *benchmarks(root)]).strip()


def all_tables(root: Path) -> str:
    """Every table (docs/results.md's generated block), Markdown, links relative to ``root``."""
    sections = [
        ("### Classifiers", None, classifiers),
        ("### Adversarial-training baselines", None, adversarial),
        ("### PSSR (quick evaluation of `pssr train-pssr`: PGD-40, L-inf)", PSSR_NOTE, pssr_runs),
        (
            "### Inference removal ratio chosen on validation (`pssr calibrate`, gray-box PGD-20, L-inf)",
            CALIBRATION_NOTE,
            calibrations,
        ),
        ("### Harness evaluations (paper protocol vs adaptive, worst case per example)", None, evaluations),
        ("### Per-attack tables", None, per_attack),
        ("### Speed (benchmarks)", None, benchmarks),
    ]
    out: list[str] = []
    for title, note, render in sections:
        out += [title, "", *([note, ""] if note else []), *render(root), ""]
    return "\n".join(out).strip()
