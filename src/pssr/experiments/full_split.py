"""Clean accuracy of each model over a whole split, beside an attacked evaluation of a subset.

Attacks are costly, so an evaluation attacks ``n`` examples (500 for the cifar10-jpeg preset); a
clean pass over the whole split is one forward per image. Reporting both shows how far the subset's
clean accuracy is from the split's: one draw of 500 examples varies by a few points (for PSSR on
cifar10-jpeg: 85.6% on the first 500 test images, 79.7% on all 10,000).

    acc = clean_accuracy({"none": clf, "pssr": defense}, data.test, cache="runs/clean-full.json")
    acc["pssr"]["accuracy"]

The cache keeps one entry per model, reused while the model's weights and the split are unchanged
(written after each model, atomically: an interrupted call loses at most the model it was on).
Under torchrun the batches are dealt out over the ranks and every rank gets the same result.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pssr import distributed as D
from pssr.data.base import Split
from pssr.evaluation.common import data_fingerprint, derived_seed, model_fingerprint, reseed
from pssr.utils import model_device

log = logging.getLogger(__name__)

__all__ = ["clean_accuracy"]


def clean_accuracy(
    models: Mapping[str, nn.Module],
    split: Split,
    *,
    batch_size: int = 250,
    seed: int = 0,
    cache: str | os.PathLike[str] | None = None,
    compute: bool | Collection[str] = True,
) -> dict[str, dict[str, Any]]:
    """``{name: {"n", "correct", "accuracy", "seconds", "fingerprint"}}`` of each model on ``split``.

    Args:
        models: ``{name: model}``, images in [0, 1] -> logits; each runs on its own device.
        split: the examples (all of them are used).
        batch_size: images per forward.
        seed: root of the per-batch seeds of randomized defenses (each batch reseeded from it, the
            model's name and the batch's index: the same numbers on any number of ranks).
        cache: JSON file of saved results (read, and written after each model computed).
        compute: False computes nothing (models without a saved result get ``{"pending": True}``);
            a collection of names computes those models only.
    """
    if (
        not isinstance(models, Mapping)
        or not models
        or not all(isinstance(m, nn.Module) for m in models.values())
    ):
        raise ValueError("models must be a non-empty dict {name: nn.Module}")
    if not isinstance(split, Split):
        raise ValueError(f"split must be a pssr.data.Split, got {type(split).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(compute, bool):
        unknown = sorted(set(compute) - set(models))
        if isinstance(compute, str) or unknown:
            raise ValueError(
                f"compute must be True, False or a collection of model names; unknown: {unknown or compute!r}"
            )
    info = D.current()
    path = Path(cache) if cache is not None else None
    data_fp = data_fingerprint(split.x, split.y)
    saved = D.on_main(lambda: _read(path, data_fp), info) if path is not None else {}
    out: dict[str, dict[str, Any]] = {}
    n = len(split)
    starts = list(range(0, n, batch_size))
    for name, model in models.items():
        fp = model_fingerprint(model)
        entry = saved.get(name)
        if isinstance(entry, dict) and entry.get("fingerprint") == fp and entry.get("n") == n:
            out[name] = entry
            continue
        if compute is False or (compute is not True and name not in compute):
            out[name] = {"pending": True, "fingerprint": fp}
            continue
        t0 = time.perf_counter()
        mine = D.shard_range(len(starts), info)

        def count(model: nn.Module = model, name: str = name, mine: range = mine) -> int:
            dev, c = model_device(model), 0
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    for b in mine:
                        reseed(model, derived_seed(seed, "clean-full-split", name, b))
                        xb = split.x[starts[b] : starts[b] + batch_size].to(dev)
                        yb = split.y[starts[b] : starts[b] + batch_size].to(dev)
                        c += int((model(xb).argmax(1) == yb).sum())
            finally:
                model.train(was_training)
            return c

        correct = sum(D.all_gather_results(count, info))
        entry = {
            "n": n,
            "correct": correct,
            "accuracy": correct / n,
            "seconds": round(time.perf_counter() - t0, 1),
            "fingerprint": fp,
        }
        out[name] = saved[name] = entry
        if info.is_main:
            log.info(
                "clean accuracy of %s on the whole split: %.2f%% (n=%d), %.0f s",
                name,
                100 * entry["accuracy"],
                n,
                entry["seconds"],
            )
        if path is not None:
            D.on_main(lambda: _write(path, data_fp, saved), info)
    return out


def _read(path: Path | None, data_fp: str) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable clean-accuracy cache %s (%s): computing again", path, e)
        return {}
    if not isinstance(doc, dict) or doc.get("data") != data_fp or not isinstance(doc.get("models"), dict):
        return {}
    return dict(doc["models"])


def _write(path: Path, data_fp: str, models: Mapping[str, Any]) -> None:
    from pssr.utils import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"data": data_fp, "models": dict(models)})
