"""Helpers shared by the evaluation harness, its runner, whole-split accuracy and certification:
derived seeds, reseeding of randomized defenses, model and data fingerprints (what resumable state is
keyed by), predictions with the caller's train/eval mode restored, and model descriptions."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


def derived_seed(seed: int, *parts: Any) -> int:
    h = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).hexdigest()
    return int(h[:8], 16)


def reseed(model: nn.Module, seed: int) -> None:
    """Seed the global RNGs and every submodule that offers ``reseed`` (randomized defenses)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    seen = set()
    for m in model.modules():
        fn = getattr(m, "reseed", None)
        if callable(fn) and id(m) not in seen:
            seen.add(id(m))
            fn(seed)


def model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, Tensor):
            h.update(str(tuple(v.shape)).encode())
            h.update(
                v.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                if v.numel()
                else b""
            )
    return h.hexdigest()[:24]


def data_fingerprint(x: Tensor, y: Tensor) -> str:
    h = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def class_coverage(split_y: Tensor, y: Tensor) -> dict[str, Any]:
    """How many of the split's classes the evaluated examples hold (and which are missing)."""
    have, full = set(y.tolist()), set(split_y.tolist())
    return {"in_subset": len(have), "in_split": len(full), "missing": sorted(full - have)}


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(1)


def describe(model: nn.Module, source_kind: str) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "purifier": callable(getattr(model, "purify", None)),
        "bpda": callable(getattr(model, "bpda", None)),
        "gray_box_source": source_kind,
        "fingerprint": model_fingerprint(model),
    }
    cfg = getattr(model, "config", None)
    if callable(cfg):
        try:
            c = cfg()
        except TypeError:
            c = None
        if isinstance(c, Mapping):
            d["config"] = {
                k: v for k, v in c.items() if isinstance(v, (str, int, float, bool, type(None), list))
            }
    return d


def model_config(model: nn.Module) -> Any:
    """The settings of a model that its weights do not show (a PSSR's removal ratio, a baseline's
    JPEG quality): a dataclass ``config`` attribute or a ``config()`` mapping, JSON-able; else None.
    Part of every unit's fingerprint, so that the same weights with another ratio are a new model."""
    cfg = getattr(model, "config", None)
    if callable(cfg):
        try:
            cfg = cfg()
        except TypeError:
            return None
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    return jsonable(cfg) if isinstance(cfg, Mapping) else None


def jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return obj.item()
    return repr(obj)
