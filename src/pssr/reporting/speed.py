"""Speed tables of ``results/benchmarks.json`` (written by ``benchmarks/run_all.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pssr.reporting.common import load_result


def _purification_table(pur: dict[str, Any]) -> list[str]:
    out = [
        f"Purification, {pur['dataset']} {'x'.join(map(str, pur['image_shape']))}, whole forward pass "
        f"(purify + classify){', trained weights' if pur.get('trained_weights') else ''}:",
        "",
        "| model | fp32 batch 1 (ms) | fp32 batch 256 (img/s) | bf16 batch 1 (ms) | bf16 batch 256 (img/s) | "
        "peak MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    cell = {(r["model"], r["precision"], r["batch"]): r for r in pur["rows"]}
    for m in dict.fromkeys(r["model"] for r in pur["rows"]):

        def g(prec: str, batch: int, key: str, fmt: str, m: str = m) -> str:
            r = cell.get((m, prec, batch))
            return format(r[key], fmt) if r and r.get(key) is not None else "—"

        out.append(
            f"| {m} | {g('fp32', 1, 'latency_ms', '.2f')} | {g('fp32', 256, 'images_per_s', '.0f')} | "
            f"{g('bf16', 1, 'latency_ms', '.2f')} | {g('bf16', 256, 'images_per_s', '.0f')} | "
            f"{g('fp32', 256, 'peak_mib', '.0f')} |"
        )
    return [*out, ""]


def benchmarks(root: Path) -> list[str]:
    """Speed tables of results/benchmarks.json (benchmarks/run_all.py); [] when there is none."""
    d = load_result(root, "benchmarks.json")
    if not d:
        return []
    env = d.get("environment", {})
    # one run per purification config (a list), or one run (files written before the list)
    sections = d["purification"] if isinstance(d["purification"], list) else [d["purification"]]

    def load(key: str) -> str:
        v = env.get(key)
        return "?" if v is None else f"{v:.1f}"

    out = [
        f"{env.get('cpu_model', 'CPU')}, {env.get('torch_threads', '?')} threads, 1-minute load average "
        f"{load('load_average_1min_start')} -> {load('load_average_1min_end')} (the benchmark's own threads "
        "included).",
        "",
    ]
    for pur in sections:
        out += _purification_table(pur)
    kind = {r.get("memory_kind") for pur in sections for r in pur["rows"]}
    if kind == {"process_peak_rss"}:
        out += [
            "Peak MiB: the process's peak resident memory during the fp32 batch-256 row (the whole process: "
            "torch and every model built so far, not the row's own allocations).",
            "",
        ]
    out += [
        "Training, batch 128, random data (time per epoch extrapolated from timed steps):",
        "",
        "| workload | model | precision | img/s | s per epoch (or once per run) |",
        "|---|---|---|---:|---:|",
    ]
    for r in d["training"]["rows"]:
        per = (
            r["seconds_per_epoch"]
            if r.get("seconds_per_epoch") is not None
            else r.get("seconds_once_per_run")
        )
        out.append(
            f"| {r['workload']} | {r['model']} | {r['precision']} | {r['images_per_s']:.0f} | {per:.0f} |"
        )
    return [*out, "", "Command: `.venv/bin/python benchmarks/run_all.py` (writes results/benchmarks.json)."]
