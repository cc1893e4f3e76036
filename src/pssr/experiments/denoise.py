"""``pssr train-denoiser``: PSSR's regenerator trained as a Gaussian denoiser from a config file
(tables ``[data]``, ``[denoise]``, ``[run]``; the trainer is :func:`pssr.train.denoise.train_denoiser`)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from pssr.config import asdict, build
from pssr.experiments.data import DataConfig, load_data
from pssr.experiments.pssr_train import load_classifier_checkpoint
from pssr.experiments.summary import host_info
from pssr.train.denoise import DenoiseConfig, train_denoiser
from pssr.train.loop import plain_metadata


@dataclasses.dataclass(frozen=True)
class DenoiseRunConfig:
    """The ``[run]`` table of a ``configs/denoise-*.toml`` file (with ``[data]`` and ``[denoise]``)."""

    classifier: str = ""  # classifier checkpoint written by `pssr train-classifier` (required)
    out: str = ""  # output folder; "" = runs/<config file stem>


def run_from_config(
    mapping: dict[str, Any],
    out_dir: str | Path | None = None,
    *,
    classifier: str | None = None,
    resume: bool = True,
    command: str | None = None,
    default_out: str | Path = "runs/denoise",
) -> dict[str, Any]:
    """Train from a parsed config (``[data]``, ``[denoise]``, ``[run]``); write ``OUT/denoiser.pt`` and
    ``OUT/denoiser.json``; return the summary."""
    from pssr.utils import atomic_write_json

    data_cfg = build(DataConfig, mapping.get("data"), prefix="data.")
    cfg = build(DenoiseConfig, mapping.get("denoise"), prefix="denoise.")
    run = build(DenoiseRunConfig, mapping.get("run"), prefix="run.")
    clf_path = classifier or run.classifier
    if not clf_path:
        raise ValueError(
            "no classifier checkpoint: set [run] classifier = PATH in the config or pass --classifier"
        )
    out = Path(out_dir or run.out or default_out)
    clf, _ = load_classifier_checkpoint(clf_path, device=cfg.device)
    data = load_data(data_cfg)
    t0 = time.perf_counter()
    defense = train_denoiser(clf, data, cfg, out=out, resume=resume)
    summary = {
        "kind": "denoiser",
        "checkpoint": str(out / "denoiser.pt"),
        "classifier": str(clf_path),
        "dataset": data.name,
        "sigma": cfg.sigma,
        "surgery": cfg.use_surgery,
        "final": defense.metrics.get("final", {}),
        "history": defense.metrics["denoiser"]["history"],
        "config": asdict(cfg),
        "data_config": dataclasses.asdict(data_cfg),
        "command": command,
        "wall_seconds_this_invocation": time.perf_counter() - t0,
        "metadata": plain_metadata(),
        "host": host_info(),
    }
    atomic_write_json(out / "denoiser.json", summary)
    return summary


__all__ = ["DenoiseRunConfig", "run_from_config"]
