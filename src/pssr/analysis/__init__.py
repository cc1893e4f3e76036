"""Measurements of what PSSR's method rests on (arXiv 2402.00304), beside the defense itself.

* :mod:`pssr.analysis.pixels` -- pixel rankings, oracle restoration, halving points, scorer agreement;
* :mod:`pssr.analysis.finding` -- :func:`run_finding`: the salient/trivial finding for a classifier;
* :mod:`pssr.analysis.render` -- report.md and the figure, drawn from report.json;
* :mod:`pssr.analysis.files` -- the same from checkpoint files (what ``pssr finding`` calls).
"""

from __future__ import annotations

from pssr.analysis.finding import FindingConfig, read_records, run_finding
from pssr.analysis.pixels import RANKINGS, halving_k, list_rankings, restore_order, scorer_agreement

__all__ = [
    "RANKINGS",
    "FindingConfig",
    "halving_k",
    "list_rankings",
    "read_records",
    "restore_order",
    "run_finding",
    "scorer_agreement",
]
