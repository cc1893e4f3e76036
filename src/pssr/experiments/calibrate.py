"""``pssr calibrate``: a saved PSSR's removal ratio chosen on its validation split
(:func:`pssr.train.calibrate.calibrate_ratio`), saved with the chosen ratio and evaluated quickly."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pssr.defense.pssr import PSSR
from pssr.experiments.data import DataConfig, load_data
from pssr.experiments.quick_eval import quick_eval
from pssr.train.calibrate import calibrate_ratio, with_ratio


def calibrate_checkpoint(
    checkpoint: str,
    ratios: Sequence[float],
    *,
    out: str | None = None,
    results: str | None = None,
    max_clean_drop: float = 0.03,
    eps: float | None = None,
    steps: int = 20,
    seed: int = 0,
    data: str | None = None,
    data_dir: str | None = None,
    test_n: int = 0,
    adaptive_n: int = 0,
    device: str | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """``pssr calibrate``: :func:`calibrate_ratio` on a saved PSSR, then (``out``) save it with the
    chosen ratio and (``test_n`` > 0, or -1 for the whole test split) a quick evaluation of it on the
    test split (:func:`pssr.experiments.quick_eval.quick_eval`, PGD-``steps``, ``adaptive_n`` images
    attacked through the BPDA views). The dataset is the one recorded in the checkpoint unless
    ``data`` names another. Returns the summary also written to ``results`` (JSON)."""
    from pssr.utils import atomic_write_json, run_metadata
    from pssr.utils.runtime import default_device

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no PSSR checkpoint at {checkpoint}")
    if test_n < -1 or adaptive_n < 0:
        raise ValueError(
            f"test_n must be >= -1 (-1 = whole test split) and adaptive_n >= 0, got {test_n}, {adaptive_n}"
        )
    defense = PSSR.load(checkpoint, device=default_device(device))
    stored = defense.metrics.get("data") if isinstance(defense.metrics.get("data"), dict) else {}
    if data is None and not stored.get("name"):
        raise ValueError(f"{checkpoint} records no dataset; pass --data NAME")
    if data is not None and data != stored.get("name"):
        stored = {"name": data}
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    data_cfg = DataConfig(**{k: v for k, v in stored.items() if k in fields})
    if data_dir is not None:
        data_cfg = dataclasses.replace(data_cfg, data_dir=data_dir)
    ds = load_data(data_cfg)
    cal = calibrate_ratio(defense, ds, ratios, max_clean_drop=max_clean_drop, eps=eps, steps=steps, seed=seed)
    summary: dict[str, Any] = {
        "kind": "pssr-calibration",
        "command": command,
        "checkpoint": str(checkpoint),
        "dataset": data_cfg.name,
        "data": dataclasses.asdict(data_cfg),
        "calibration": cal,
    }
    defense = with_ratio(defense, cal["chosen"])
    if test_n:
        test = ds.test if test_n == -1 else ds.test.subset(test_n, seed=seed)
        ev = quick_eval(
            defense, test.x, test.y, eps=cal["eps"], steps=steps, adaptive_n=adaptive_n, seed=seed
        )
        summary["test"] = {"ratio": cal["chosen"], **ev}
    summary["metadata"] = run_metadata()
    if out is not None:
        if "test" in defense.metrics:  # measured at the trained ratio: keep it, under a name that says so
            defense.metrics["test_at_trained_ratio"] = defense.metrics.pop("test")
        if "test" in summary:
            defense.metrics["test"] = summary["test"]
        defense.metrics["calibration"] = cal
        defense.save(out)
        summary["calibrated_checkpoint"] = str(out)
    if results is not None:
        atomic_write_json(Path(results), summary)
    return summary


__all__ = ["calibrate_checkpoint"]
