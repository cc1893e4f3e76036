"""Shared pieces of the classifiers: the registry and the normalization layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pssr.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer, so callers pass pixels in [0, 1]."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def default_stats(
    in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    if mean is None:
        mean = [0.5] * in_channels
    if std is None:
        std = [0.25] * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"mean/std need {in_channels} values (one per channel), got {list(mean)} / {list(std)}"
        )
    return list(mean), list(std)
