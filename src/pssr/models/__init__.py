"""Classifiers registry: ``create_model(name, num_classes=..., in_channels=..., mean=..., std=...)``.

Every model takes images in [0, 1] (normalization is its first layer) and returns logits. A model of
your own that expects normalized inputs is wrapped the same way:
``nn.Sequential(Normalize(mean, std), model)``; :func:`check_input_shape` tells whether a model
takes a dataset's images.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pssr.models import cifar_nets, small  # noqa: F401  (registration)
from pssr.models.common import (
    MODELS,
    Normalize,
    check_input_shape,
    declared_image_shape,
    describe_model,
    load_matching_weights,
)
from pssr.models.specs import attach_spec, model_spec, rebuild_model


def create_model(name: str, **kwargs: Any) -> nn.Module:
    return MODELS.create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)


__all__ = [
    "MODELS",
    "Normalize",
    "attach_spec",
    "check_input_shape",
    "create_model",
    "declared_image_shape",
    "describe_model",
    "list_models",
    "load_matching_weights",
    "model_spec",
    "rebuild_model",
]
