"""``pssr train-adversarial``: PGD-AT or TRADES trained from a config file (:mod:`pssr.train.adversarial`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from pssr.config import build
from pssr.experiments.data import DataConfig, load_data
from pssr.experiments.summary import summarize, write_summary
from pssr.train.adversarial import AdvTrainConfig, adversarial_train_run


def run_from_config(
    mapping: dict[str, Any],
    out_dir: str | Path,
    *,
    summary_path: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train from a parsed config (tables ``[data]`` and ``[adv_train]``; others ignored); write
    ``out_dir/<method>.pt`` and ``out_dir/<method>.json`` (and a copy at ``summary_path``). Under
    torchrun every rank returns the summary and rank 0 alone writes the files."""
    t0 = time.perf_counter()
    data_cfg = build(DataConfig, mapping.get("data"), prefix="data.")
    cfg = build(AdvTrainConfig, mapping.get("adv_train"), prefix="adv_train.")
    data = load_data(data_cfg)
    out_dir = Path(out_dir)
    ckpt = out_dir / f"{cfg.method}.pt"
    res = adversarial_train_run(cfg.model, data, cfg, checkpoint=ckpt, resume=resume, progress=progress)
    summary = summarize(res.checkpoint)
    summary.update(
        {
            "command": command,
            "checkpoint": str(ckpt),
            "data_config": dataclasses.asdict(data_cfg),
            "robust_eval_note": "robust accuracy from pssr.train.adversarial.pgd_accuracy (L-inf PGD, random start, "
            "fp32, eval mode); see pssr.evaluation for the full adaptive evaluation",
            "wall_seconds_this_invocation": time.perf_counter() - t0,
        }
    )
    write_summary(summary, out_dir / f"{cfg.method}.json", summary_path)
    return summary


__all__ = ["run_from_config"]
