"""The attack interface shared by every attack in pssr.

Two lines, as in torchattacks::

    atk = pssr.attacks.create_attack("pgd", model, eps=8/255, steps=40)
    x_adv = atk(x, y)          # x in [0, 1], (N, C, H, W); y int64 (N,)

Every attack keeps ``x_adv`` in [0, 1] and inside its ``norm`` ball of radius ``eps`` around ``x``
(for minimum-norm attacks such as CW, DeepFool and DDN, ``eps`` is the budget the result is
projected / clipped to, so robust accuracy at ``eps`` is well defined). Attacks restore the model's
train/eval mode and leave no gradient on its parameters. Randomness comes from ``seed`` only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pssr.registry import Registry

ATTACKS: Registry[Attack] = Registry("attack")
NORMS = ("linf", "l2")


class Attack:
    """Base class: subclasses implement :meth:`perturb` (model in eval mode, grads enabled)."""

    name: str = "attack"
    norms: tuple[str, ...] = NORMS
    gradient_free: bool = False  # True for attacks that only query outputs (Square)

    def __init__(self, model: nn.Module, eps: float, norm: str = "linf", seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module returning logits, got {type(model).__name__}")
        norm = norm.lower()
        if norm not in self.norms:
            raise ValueError(f"{self.name}: norm={norm!r} not supported; choose from {self.norms}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"{self.name}: eps must be a finite number >= 0, got {eps!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{self.name}: seed must be a non-negative int, got {seed!r}")
        self.model, self.eps, self.norm, self.seed = model, float(eps), norm, seed

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        check_inputs(x, y)
        was_training = self.model.training
        req = [p.requires_grad for p in self.model.parameters()]
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        try:
            with torch.enable_grad():
                x_adv = self.perturb(x.detach().clone(), y)
        finally:
            self.model.train(was_training)
            for p, r in zip(self.model.parameters(), req):
                p.requires_grad_(r)
        return project(x_adv.detach(), x, self.eps, self.norm)

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps, "norm": self.norm, "seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def check_inputs(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor with pixels in [0, 1], got dtype {x.dtype}")
    if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be (N,) with N={x.shape[0]}, got {getattr(y, 'shape', type(y))}")
    if y.dtype != torch.int64:
        raise ValueError(f"y must be int64 labels, got {y.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"x must lie in [0, 1], got range [{x.min().item():.3g}, {x.max().item():.3g}]")


def lp_norm(d: Tensor, norm: str) -> Tensor:
    """Per-example norm of ``d`` (N, ...) -> (N,)."""
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, then into [0, 1]."""
    d = x_adv - x
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        n = lp_norm(d, "l2").clamp_min(1e-12).view(-1, *([1] * (d.ndim - 1)))
        d = d * torch.clamp(eps / n, max=1.0)
    return (x + d).clamp(0.0, 1.0)
