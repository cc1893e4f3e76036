"""Trustworthy evaluation: the harness, its sanity checks, resumable state, reports and plots.

    report = pssr.evaluation.evaluate({"none": clf, "pssr": defense}, data.test, attacks="paper,adaptive")
    report.save("runs/report")          # report.json, records.jsonl, report.md, plots

The package is ``pssr.evaluation`` (``pssr.evaluate`` is the function).
"""

from __future__ import annotations

from pssr.evaluation.checks import CheckConfig
from pssr.evaluation.harness import THREAT_MODELS, AttackSpec, evaluate, parse_attacks
from pssr.evaluation.report import Report, render_markdown, rerender, summarize

__all__ = [
    "THREAT_MODELS",
    "AttackSpec",
    "CheckConfig",
    "Report",
    "evaluate",
    "parse_attacks",
    "render_markdown",
    "rerender",
    "summarize",
]
