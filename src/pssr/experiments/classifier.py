"""``pssr train-classifier``: a classifier trained from a config file (:mod:`pssr.train.classifier`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from pssr.config import build
from pssr.experiments.data import DataConfig, load_data
from pssr.experiments.summary import summarize, write_summary
from pssr.train.classifier import ClassifierConfig, train_classifier_run


def run_from_config(
    mapping: dict[str, Any],
    out_dir: str | Path,
    *,
    summary_path: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train from a parsed config file (tables ``[data]`` and ``[classifier]``; other tables are
    ignored); write ``out_dir/classifier.pt`` and the JSON summary ``out_dir/classifier.json``
    (and a copy at ``summary_path``); return the summary. Under torchrun every rank returns it and
    rank 0 alone writes the files."""
    t0 = time.perf_counter()
    data_cfg = build(DataConfig, mapping.get("data"), prefix="data.")
    cfg = build(ClassifierConfig, mapping.get("classifier"), prefix="classifier.")
    data = load_data(data_cfg)
    load_s = time.perf_counter() - t0
    out_dir = Path(out_dir)
    ckpt = out_dir / "classifier.pt"
    res = train_classifier_run(cfg.model, data, cfg, checkpoint=ckpt, resume=resume, progress=progress)
    summary = summarize(res.checkpoint)
    summary.update(
        {
            "command": command,
            "checkpoint": str(ckpt),
            "data_config": dataclasses.asdict(data_cfg),
            "data_load_seconds": load_s,
            "wall_seconds_this_invocation": time.perf_counter() - t0,
        }
    )
    write_summary(summary, out_dir / "classifier.json", summary_path)
    return summary


__all__ = ["run_from_config"]
