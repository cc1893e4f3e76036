"""Shared pieces of the attacks: losses, argument checks, steps, random starts, input gradients.

Losses are *per example* (shape (N,)) and written so that the attacker **maximizes** them:

* ``ce``: cross-entropy of the true class.
* ``margin`` (alias ``cw``): Carlini & Wagner's margin ``max_{j != y} z_j - z_y`` on the logits
  ``z`` (positive exactly when the example is misclassified), optionally capped at ``kappa``.
* ``dlr``: Croce & Hein's (ICML 2020) Difference of Logits Ratio,
  ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3))`` with ``z_(k)`` the k-th largest logit; invariant
  to shifting and scaling the logits, so it does not saturate like cross-entropy. Needs >= 3 classes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.attacks.base import lp_norm

log = logging.getLogger("pssr.attacks")

LossFn = Callable[[Tensor, Tensor], Tensor]


def _other_max(logits: Tensor, y: Tensor) -> Tensor:
    """Largest logit among the classes other than ``y``: (N, K), (N,) -> (N,)."""
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return other.amax(1)


def ce_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: Tensor, y: Tensor, kappa: float = math.inf) -> Tensor:
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return (_other_max(logits, y) - z_y).clamp(max=kappa)


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    if logits.shape[1] < 3:
        raise ValueError(f"the dlr loss needs at least 3 classes, the model has {logits.shape[1]}")
    top = logits.topk(3, dim=1).values  # (N, 3), descending
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return -(z_y - _other_max(logits, y)) / (top[:, 0] - top[:, 2] + 1e-12)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "cw": margin_loss, "dlr": dlr_loss}


def get_loss(name: str) -> LossFn:
    key = name.lower() if isinstance(name, str) else name
    if key not in LOSSES:
        raise ValueError(f"loss={name!r} not supported; choose from {sorted(LOSSES)}")
    return LOSSES[key]


# ---------------------------------------------------------------------------------- argument checks
def check_int(owner: str, name: str, value: object, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}: {name} must be an int >= {low}, got {value!r}")
    return value


def check_float(
    owner: str, name: str, value: object, low: float = 0.0, high: float = math.inf, low_open: bool = False
) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{owner}: {name} must be a finite number in {bracket}{low}, {high}], got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_module(owner: str, name: str, value: object) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise ValueError(f"{owner}: {name} must be an nn.Module returning logits, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------ step helpers
def bshape(v: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1, 1) to broadcast against ``like`` (N, C, H, W)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def steepest_direction(g: Tensor, norm: str) -> Tensor:
    """Unit-norm steepest-ascent direction for the norm: sign(g) (Linf) or g / ||g||_2 (L2)."""
    if norm == "linf":
        return g.sign()
    return g / bshape(lp_norm(g, "l2").clamp_min(1e-12), g)


def random_start(x: Tensor, eps: float, norm: str, gen: torch.Generator) -> Tensor:
    """A uniformly random point of the ``norm`` ball of radius ``eps`` around ``x``, clipped to [0, 1]."""
    if norm == "linf":
        d = (torch.rand(x.shape, generator=gen, device=x.device, dtype=x.dtype) * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        d = d / bshape(lp_norm(d, "l2").clamp_min(1e-12), d)
        dim = x[0].numel()
        r = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype) ** (1.0 / dim) * eps
        d = d * bshape(r, d)
    return (x + d).clamp(0.0, 1.0)


def loss_and_grad(model: nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example loss (N,), its input gradient (N, C, H, W) and the logits (N, K), detached.

    A model whose output does not depend on ``x`` through autograd (``x.detach()`` inside, a numpy
    step) gets an all-zero gradient and a debug message instead of an error: that is gradient
    masking, which the attack should expose by failing, not crash on.
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    loss = loss_fn(logits, y)
    if loss.requires_grad:
        (grad,) = torch.autograd.grad(loss.sum(), x, allow_unused=True)
    else:
        grad = None
    if grad is None:
        log.debug("input gradient is disconnected (gradient masking?); using zeros")
        grad = torch.zeros_like(x)
    return loss.detach(), grad.detach(), logits.detach()
