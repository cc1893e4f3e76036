"""Run summaries: the JSON a training run writes beside its checkpoint (accuracy, time, speed,
config, versions, the host it ran on)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def host_info() -> dict[str, Any]:
    """CPU model, thread settings and the load average (other jobs on a shared machine slow a run down)."""
    import os
    import platform

    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1_5_15min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def summarize(ck: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary of a finished training checkpoint (accuracy, time, speed, config, versions)."""
    hist = ck.get("history", [])
    train_s = sum(h["train_seconds"] for h in hist)
    wall_s = sum(h.get("epoch_seconds", h["train_seconds"]) for h in hist)
    images = sum(h["train_seconds"] * h["images_per_second"] for h in hist)
    return {
        "kind": ck.get("kind"),
        "model": ck.get("model", {}).get("name"),
        "dataset": ck.get("data", {}).get("name"),
        "metrics": ck.get("metrics", {}),
        "epochs": ck.get("epoch"),
        "seed": ck.get("config", {}).get("seed"),
        "train_seconds": train_s,
        "wall_seconds_training": wall_s,
        "images_per_second": images / train_s if train_s > 0 else None,
        "history": hist,
        "config": ck.get("config"),
        "metadata": ck.get("metadata"),
        "host": host_info(),
    }


def write_summary(summary: dict[str, Any], path: Path, copy_to: str | Path | None = None) -> None:
    """Write a trainer's JSON summary to ``path`` (and a copy at ``copy_to``): by rank 0 alone under
    torchrun (it also writes the checkpoint, in :func:`pssr.train.loop.fit`); an error there raises on
    every rank."""
    from pssr import distributed as D
    from pssr.utils import atomic_write_json

    def write() -> None:
        atomic_write_json(path, summary)
        if copy_to is not None:
            atomic_write_json(copy_to, summary)

    D.on_main(write, D.current())


__all__ = ["host_info", "summarize", "write_summary"]
