"""Small, fast, deterministic models on the embedded digits, for tests, examples and benchmarks.

Both train in seconds on one CPU core and need no download (scikit-learn's 8x8 digits). They are
fixtures, not results: their accuracy is whatever a few seconds of training gives (about 95%).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pssr.data import Dataset, load
from pssr.models import create_model

__all__ = ["accuracy", "digits_cnn", "digits_mlp"]


def digits_mlp(seed: int = 0) -> tuple[nn.Module, Dataset]:
    """A 64-64-10 MLP trained full-batch with Adam on the digits (150 steps, under a second)."""
    torch.manual_seed(seed)
    data = load("digits")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(data.train.x), data.train.y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), data


def digits_cnn(seed: int = 0, epochs: int = 15) -> tuple[nn.Module, Dataset]:
    """The registry's ``tiny-cnn`` trained on the digits (Adam, batch 128: 2-3 s on one core)."""
    torch.manual_seed(seed)
    data = load("digits")
    model = create_model("tiny-cnn", num_classes=10, in_channels=1)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(data.train), generator=gen)
        for i in range(0, len(perm), 128):
            b = perm[i : i + 128]
            loss = F.cross_entropy(model(data.train.x[b]), data.train.y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval(), data


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in one batch."""
    return (model(x).argmax(1) == y).float().mean().item()
