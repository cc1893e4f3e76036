"""Standard (non-robust) classifier training: cross-entropy with optional label smoothing.

This trains the classifier that PSSR protects and that the paper's gray-box attacks target.
The loop (whole dataset as tensors, seeded shuffling, batched augmentation, per-step LR schedule,
optional bf16 autocast and channels_last, atomic per-epoch checkpoints with exact resume) lives in
:mod:`pssr.train.loop`. Example::

    data = pssr.data.load("digits")
    clf = train_classifier("tiny-cnn", data, epochs=20, lr=0.05, checkpoint="runs/digits/classifier.pt")
    evaluate_accuracy(clf, data.test)        # fp32, eval mode
    clf2 = load_classifier("runs/digits/classifier.pt")   # rebuilt from the checkpoint alone

Inputs are images in [0, 1], (N, C, H, W); the model returns logits (N, num_classes).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.data import Dataset
from pssr.models.specs import attach_spec, rebuild_model
from pssr.train.loop import (
    EpochCallback,
    FitResult,
    TrainConfig,
    evaluate_accuracy,
    fit,
)
from pssr.utils import load_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassifierConfig(TrainConfig):
    """The ``[classifier]`` table. All fields come from :class:`pssr.train.loop.TrainConfig`."""


def build_model(
    model: str | nn.Module,
    data: Dataset,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, str | None, dict[str, Any]]:
    """``(module, registry name or None, kwargs)`` for a model name or a ready module."""
    if isinstance(model, nn.Module):
        return model, None, {}
    from pssr.models import create_model

    kw = {"num_classes": data.num_classes, "in_channels": data.image_shape[0], **(model_kwargs or {})}
    return create_model(model, **kw), model, kw


def resolve_config(
    cls: type[TrainConfig], config: TrainConfig | None, model: str | nn.Module, overrides: dict[str, Any]
) -> TrainConfig:
    """``config`` (or the defaults) with the keyword ``overrides`` that are not None applied."""
    base = config if config is not None else cls()
    if not isinstance(base, cls):
        raise ValueError(f"config must be a {cls.__name__}, got {type(base).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown training option(s) {sorted(unknown)}; allowed: {sorted(known)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(model, str):
        changes["model"] = model
    return dataclasses.replace(base, **changes)


def cross_entropy_loss(
    label_smoothing: float,
) -> Callable[[nn.Module, Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]:
    def batch_loss(model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing), logits

    return batch_loss


def train_classifier_run(
    model: str | nn.Module,
    data: Dataset,
    config: ClassifierConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    **overrides: Any,
) -> FitResult:
    """Like :func:`train_classifier` but returns the :class:`FitResult` (model, history, checkpoint dict)."""
    cfg = resolve_config(ClassifierConfig, config, model, overrides)
    torch.manual_seed(cfg.seed)  # weight init of a model built here; fit() reseeds for training
    module, name, kw = build_model(
        model if isinstance(model, nn.Module) else cfg.model, data, cfg.model_kwargs
    )
    return fit(
        module,
        data,
        cfg,
        cross_entropy_loss(cfg.label_smoothing),
        model_name=name,
        model_kwargs=kw,
        kind="classifier",
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        callbacks=callbacks,
    )


def train_classifier(
    model: str | nn.Module,
    data: Dataset,
    config: ClassifierConfig | None = None,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    label_smoothing: float | None = None,
    augment: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    bf16: bool | None = None,
    channels_last: bool | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    **more: Any,
) -> nn.Module:
    """Train a classifier on ``data.train``; return it in eval mode with its test accuracy logged.

    ``model`` is a registry name (``pssr.models.list_models()``) or any ``nn.Module`` mapping
    [0, 1] images to logits. Settings come from ``config`` (a :class:`ClassifierConfig`), with any
    keyword given here taking precedence (``more`` accepts the other config fields: ``optimizer``,
    ``momentum``, ``warmup``, ``crop_padding``, ``eval_batch_size``, ``model_kwargs``).
    ``checkpoint``: path of the per-epoch checkpoint; with ``resume=True`` an existing one from the
    same settings is continued (a finished one is just loaded).
    """
    overrides = dict(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        label_smoothing=label_smoothing,
        augment=augment,
        seed=seed,
        device=device,
        bf16=bf16,
        channels_last=channels_last,
        **more,
    )
    res = train_classifier_run(
        model,
        data,
        config,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        callbacks=callbacks,
        **overrides,
    )
    log.info("test accuracy %.4f", res.checkpoint["metrics"]["test_acc"])
    return attach_spec(res.model, res.checkpoint.get("model"), res.checkpoint.get("data"))


def load_classifier(path: str | Path, device: str | torch.device | None = "cpu") -> nn.Module:
    """Rebuild a classifier (or adversarially trained model) from its checkpoint alone, in eval mode."""
    ck = load_checkpoint(path)
    model = rebuild_model(ck)
    if device is not None:
        from pssr.utils import default_device

        model.to(default_device(device))
    return model


__all__ = [
    "ClassifierConfig",
    "evaluate_accuracy",
    "load_classifier",
    "train_classifier",
    "train_classifier_run",
]
