"""Base models for ``pssr certify`` from checkpoints, and the end-to-end certification of a dataset.

A model spec is the one of ``pssr evaluate`` (:mod:`pssr.experiments.loading`): ``[NAME=]PATH`` or
``[NAME=]BASELINE[:K=V,...]@PATH``. A classifier checkpoint is smoothed as it is (the bare
classifier; or Cohen's Gaussian-trained one, whose ``augment = "gaussian-<sigma>"`` records its
sigma). A PSSR checkpoint -- a denoiser of :mod:`pssr.train.denoise` or any PSSR defense -- becomes
:class:`~pssr.certify.denoised.DenoisedClassifier` (its purifier in front of its classifier, taking
unclipped noisy inputs): denoised smoothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pssr.certify.denoised import DenoisedClassifier

__all__ = ["certify_checkpoints", "load_base_model", "trained_sigma"]


def trained_sigma(checkpoint: dict[str, Any]) -> float | None:
    """The noise level a checkpoint was trained for: a denoiser's ``metrics.denoiser.sigma``, a
    classifier's ``gaussian-<sigma>`` augmentation; None for anything else."""
    from pssr.train.augment import gaussian_sigma

    metrics = checkpoint.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("denoiser"), dict):
        s = metrics["denoiser"].get("sigma")
        return float(s) if s is not None else None
    cfg = checkpoint.get("config")
    if isinstance(cfg, dict):
        return gaussian_sigma(cfg.get("augment", ""))
    return None


def load_base_model(spec: str) -> tuple[str, nn.Module, dict[str, Any]]:
    """``(name, base model, info)``; ``info`` has ``kind``, ``path``, ``checkpoint`` and ``trained_sigma``."""
    from pssr.experiments.loading import load_model_spec

    name, model, info = load_model_spec(spec)
    if info["kind"] == "pssr":
        model = DenoisedClassifier(model)
        surgery = model.defense.config.use_surgery
        info = {**info, "kind": "pssr-denoiser", "surgery": surgery}
        if name == "pssr":
            name = "pssr-denoised" + ("" if not surgery else "-surgery")
    info["trained_sigma"] = trained_sigma(info["checkpoint"])
    return name, model.eval(), info


def _sigmas_for(name: str, info: dict[str, Any], sigma: Sequence[float] | None) -> list[float]:
    if sigma:
        return [float(s) for s in sigma]
    if info.get("trained_sigma") is None:
        raise ValueError(
            f"model {name!r} records no training sigma (a bare classifier); give --sigma, e.g. --sigma 0.25,0.5"
        )
    return [float(info["trained_sigma"])]


def certify_checkpoints(
    specs: Sequence[str],
    out: str | os.PathLike[str],
    *,
    sigma: Sequence[float] | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    device: str | None = None,
    channels_last: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Load ``specs``, certify each at ``sigma`` (default: the sigma it was trained for) on the split.

    The dataset defaults to the one recorded in the first checkpoint that names one (with its split
    seed and validation fraction). ``channels_last``: convert the models' weights to NHWC memory
    format (measured 1.3-1.8x faster for small-cnn on an AVX2 CPU; the numbers are the same up to
    floating-point order). Other keyword arguments go to :func:`pssr.certify.certify_models`.
    Under torchrun: call :func:`pssr.distributed.init_distributed` first (the CLI does).
    """
    import pssr.data
    from pssr.certify.run import certify_models
    from pssr.experiments.loading import checkpoint_data
    from pssr.utils import default_device

    if not specs:
        raise ValueError("give at least one model (--model)")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r}; choose from train, val, test")
    models: dict[str, nn.Module] = {}
    infos: dict[str, dict[str, Any]] = {}
    for s in specs:
        name, model, info = load_base_model(s)
        if name in models:
            raise ValueError(f"two models are named {name!r}; name them with NAME=SPEC")
        models[name], infos[name] = model, info
    sigmas = {name: _sigmas_for(name, infos[name], sigma) for name in models}
    stored = checkpoint_data(infos)
    dname = data or stored.get("name")
    if not dname:
        raise ValueError("no dataset given and none recorded in the checkpoints; pass --data NAME")
    kw: dict[str, Any] = {}
    if stored.get("name") == dname:
        kw.update({k: stored[k] for k in ("seed", "val_fraction", "data_dir") if stored.get(k) is not None})
    if data_dir is not None:
        kw["data_dir"] = data_dir
    ds = pssr.data.load(dname, **kw)
    from pssr import distributed as D

    dev = D.device_for(D.current(), default_device(device or "cpu"))
    for m in models.values():
        m.to(dev)
        if channels_last:
            m.to(memory_format=torch.channels_last)
    descriptions = {
        k: {
            "kind": v["kind"],
            "path": str(v["path"]),
            "trained_sigma": v["trained_sigma"],
            **({"surgery": v["surgery"]} if "surgery" in v else {}),
        }
        for k, v in infos.items()
    }
    return certify_models(
        models, getattr(ds, split), sigmas, out=out, dataset=ds.name, descriptions=descriptions, **kwargs
    )
