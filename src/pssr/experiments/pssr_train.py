"""``pssr train-pssr``: PSSR trained from a config file (tables ``[data]``, ``[pssr]``, ``[run]``),
evaluated quickly on the test split (:mod:`pssr.experiments.quick_eval`) and summarized in JSON.

The trainer itself, :func:`pssr.train.pssr_train.train_pssr`, takes Python objects; this module reads
the ``[run]`` table, loads the classifier checkpoint and the data, reuses a finished run made with the
same settings, and writes ``<out>/pssr.pt`` and ``<out>/pssr-train.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pssr import distributed as D
from pssr.config import asdict
from pssr.defense.pssr import PSSRConfig
from pssr.experiments.quick_eval import quick_eval
from pssr.train.pssr_data import classifier_digest
from pssr.train.pssr_train import FINAL_FILE, train_pssr
from pssr.utils import default_device, load_checkpoint

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PSSRRunConfig:
    """The ``[run]`` table of a ``configs/pssr-*.toml`` file (``[data]`` and ``[pssr]`` are the others)."""

    classifier: str = ""  # classifier checkpoint written by `pssr train-classifier` (required)
    out: str = ""  # output folder; "" = runs/<dataset>/pssr
    results: str = ""  # JSON summary path; "" = <out>/pssr-train.json only
    eval_n: int = 1000  # test images of the quick gray-box evaluation (0 = the whole test split)
    eval_steps: int = 40  # PGD steps of the evaluation attacks
    eval_eps: float = -1.0  # Linf budget of the evaluation; < 0 = pssr.eps
    adaptive_n: int = 300  # test images attacked adaptively (through bpda views)
    eval_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("eval_n", "eval_steps", "adaptive_n", "eval_seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"run.{name} must be >= 0, got {getattr(self, name)}")


def load_classifier_checkpoint(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """(classifier in eval mode, ``{"name", "kwargs"}``) from a ``pssr train-classifier`` checkpoint."""
    from pssr.train.classifier import load_classifier

    # rebuild_model (behind load_classifier) refuses checkpoints without a registered model name
    # and records {"name", "kwargs"} on model.pssr_spec.
    model = load_classifier(path, device=default_device(device))
    return model, model.pssr_spec


def run_from_config(
    mapping: dict[str, Any],
    out_dir: str | Path | None = None,
    *,
    results: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train PSSR from a parsed config (tables ``[data]``, ``[pssr]``, ``[run]``), evaluate it quickly
    (:func:`quick_eval` on the test split) and write ``<out>/pssr.pt`` and the JSON summary.

    Under torchrun every rank calls it: training and the quick evaluation are sharded, every rank
    returns the same summary, and rank 0 alone writes the files."""
    from pssr.config import build
    from pssr.defaults import resolved
    from pssr.experiments.data import DataConfig, load_data
    from pssr.utils import atomic_write_json, run_metadata

    data_cfg = build(DataConfig, mapping.get("data"), prefix="data.")
    cfg = resolved(build(PSSRConfig, mapping.get("pssr"), prefix="pssr."), data_cfg.name)  # eps 0: the budget
    run = build(PSSRRunConfig, mapping.get("run"), prefix="run.")
    if not run.classifier:
        raise ValueError(
            "run.classifier (the classifier checkpoint path) is required; train one with "
            "`pssr train-classifier --config configs/<dataset>.toml`"
        )
    out = Path(out_dir or run.out or Path("runs") / data_cfg.name / "pssr")
    data = load_data(data_cfg)
    info = D.init_distributed(default_device(cfg.device))  # under torchrun; a no-op otherwise
    classifier, spec = load_classifier_checkpoint(
        run.classifier, device=D.device_for(info, default_device(cfg.device))
    )
    done = _finished_run(out, cfg, data_cfg, classifier) if resume else None
    if done is not None:
        log.info(
            "%s holds a finished run with these settings: reused (its quick evaluation included); "
            "resume=False / --no-resume trains again",
            out,
        )
        if results or run.results:
            D.on_main(lambda: atomic_write_json(Path(results or run.results), done), info)
        return done
    t0 = time.time()
    defense = train_pssr(
        classifier, data, cfg, out_dir=out, resume=resume, progress=progress, classifier_spec=spec
    )
    train_s = time.time() - t0
    test = data.test.subset(run.eval_n or None, seed=run.eval_seed) if run.eval_n else data.test
    eps = run.eval_eps if run.eval_eps >= 0 else cfg.eps
    t1 = time.time()
    ev = quick_eval(
        defense,
        test.x,
        test.y,
        eps=eps,
        steps=run.eval_steps,
        adaptive_n=run.adaptive_n,
        seed=run.eval_seed,
        progress=progress,
        shard=info,
    )
    ev["seconds"] = round(time.time() - t1, 1)
    defense.metrics["test"] = ev
    # The dataset (name, split seed, validation fraction), as training checkpoints record it, so that
    # `pssr evaluate --checkpoint pssr.pt` needs no --data.
    defense.metrics["data"] = dataclasses.asdict(data_cfg)
    summary = {
        "kind": "pssr",
        "dataset": data_cfg.name,
        "command": command,
        "checkpoint": str(out / FINAL_FILE),
        "classifier_checkpoint": run.classifier,
        "config": {"data": dataclasses.asdict(data_cfg), "pssr": asdict(cfg), "run": asdict(run)},
        "train_seconds_this_invocation": round(train_s, 1),
        "test": ev,
        "validation": {k: v for k, v in defense.metrics.items() if k != "test"},
        "metadata": run_metadata(),
    }
    if info.enabled:
        summary["distributed"] = {
            "world_size": info.world_size,
            "backend": info.backend,
            "seconds": "wall-clock of rank 0",
        }

    def write() -> None:
        defense.save(out / FINAL_FILE)
        atomic_write_json(out / "pssr-train.json", summary)
        if results or run.results:
            atomic_write_json(Path(results or run.results), summary)

    D.on_main(write, info)  # rank 0 writes; an error there raises on every rank
    return summary


def _finished_run(out: Path, cfg: PSSRConfig, data_cfg: Any, classifier: nn.Module) -> dict[str, Any] | None:
    """The stored summary of a finished run in ``out`` made with these training settings, this dataset
    and this classifier; None when there is none (or any of them differs).

    A rerun of a finished configuration (a preset run again, say) then costs no training and no
    evaluation. The evaluation settings of ``[run]`` may differ: the stored quick evaluation is
    returned with its own settings. A fine-tuned classifier (``classifier_lr > 0``) changes during
    training, so such runs are never reused this way (they resume from their training state)."""
    final, stored = out / FINAL_FILE, out / "pssr-train.json"
    if cfg.classifier_lr > 0 or not (final.is_file() and stored.is_file()):
        return None
    try:
        summary = json.loads(stored.read_text())
        ck = load_checkpoint(final)
    except (OSError, ValueError, RuntimeError, EOFError):
        return None
    plain = json.loads(json.dumps(asdict(cfg)))
    saved = json.loads(json.dumps({**ck.get("config", {}), **(ck.get("training") or {})}))  # the recipe
    runtime = {"device"}
    same = (
        {k: v for k, v in plain.items() if k not in runtime}
        == {k: v for k, v in saved.items() if k not in runtime}
        and (summary.get("config") or {}).get("data") == json.loads(json.dumps(dataclasses.asdict(data_cfg)))
        and classifier_digest(ck["classifier"]["state_dict"]) == classifier_digest(classifier)
    )
    return summary if same else None


__all__ = ["PSSRRunConfig", "load_classifier_checkpoint", "run_from_config"]
