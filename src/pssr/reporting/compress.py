"""Gzip the per-example records of finished evaluation reports before they are committed to results/.

For each report folder: records.jsonl -> records.jsonl.gz (deterministic: no timestamp in the gzip
header), report.json's ``records_file`` (and report.md) pointed at it, then records.jsonl removed.
``Report.load`` reads either form. Folders already compressed are left alone.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from pssr.utils import atomic_write_bytes, atomic_write_json, atomic_write_text


def compress(folder: Path) -> str:
    """Compress the records of one evaluation report folder; returns a line saying what was done."""
    from pssr.evaluation.report import render_markdown

    folder = Path(folder)
    report, plain = folder / "report.json", folder / "records.jsonl"
    if not report.is_file():
        raise ValueError(
            f"{folder}: no report.json (not an evaluation report folder); pass a report's folder"
        )
    if not plain.is_file():
        return f"{folder}: nothing to do"
    d = json.loads(report.read_text())
    data = plain.read_bytes()
    atomic_write_bytes(folder / "records.jsonl.gz", gzip.compress(data, compresslevel=9, mtime=0))
    d["records_file"] = "records.jsonl.gz"
    atomic_write_json(report, d)
    atomic_write_text(folder / "report.md", render_markdown(d))  # it names the records file
    plain.unlink()
    return (
        f"{folder}: {len(data) / 1e6:.1f} MB -> {(folder / 'records.jsonl.gz').stat().st_size / 1e6:.2f} MB"
    )


def compress_preset(folder: Path) -> list[str]:
    """A preset's results folder (``report.json`` with one evaluation per norm in sub-folders): compress
    each sub-folder, then point the combined report at the compressed files and re-render it."""
    from pssr.experiments.preset_report import render_preset_markdown

    folder = Path(folder)
    d = json.loads((folder / "report.json").read_text())
    lines = [
        compress(folder / norm) for norm in d["evaluations"] if (folder / norm / "report.json").is_file()
    ]
    changed = False
    for norm, ev in d["evaluations"].items():
        if (folder / norm / "records.jsonl.gz").is_file() and ev.get("records_file") != "records.jsonl.gz":
            ev["records_file"] = "records.jsonl.gz"
            changed = True
    if changed:
        atomic_write_json(folder / "report.json", d)
    atomic_write_text(folder / "report.md", render_preset_markdown(d))  # re-rendered by the current code
    return [
        *lines,
        f"{folder}: combined report {'pointed at the compressed records' if changed else 'already up to date'}",
    ]


def compress_folder(folder: Path) -> list[str]:
    """An evaluation report folder or a preset's (told apart by its report.json): :func:`compress` or
    :func:`compress_preset`; returns the lines saying what was done."""
    report = Path(folder) / "report.json"
    if report.is_file() and "evaluations" in json.loads(report.read_text()):
        return compress_preset(Path(folder))
    return [compress(Path(folder))]
