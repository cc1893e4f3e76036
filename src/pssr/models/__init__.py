"""Classifiers registry: ``create_model(name, num_classes=..., in_channels=..., mean=..., std=...)``.

Every model takes images in [0, 1] (normalization is its first layer) and returns logits.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pssr.models import cifar_nets, small  # noqa: F401  (registration)
from pssr.models.common import MODELS, Normalize


def create_model(name: str, **kwargs: Any) -> nn.Module:
    return MODELS.create(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    return MODELS.list(pattern)


__all__ = ["MODELS", "Normalize", "create_model", "list_models"]
