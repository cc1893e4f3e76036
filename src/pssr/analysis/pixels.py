"""Pixel-level measurements behind PSSR's key finding: which pixels of a perturbation carry the attack.

PSSR (Fu, Zhou, Ma, Zhang, arXiv 2402.00304) splits an adversarial perturbation ``delta = x_adv - x``
into a *salient attack* (a few pixels that dominate the attack's effect) and a *trivial attack* (the
rest). Its finding: removing the salient part breaks the attack. This module measures that with an
oracle that knows the clean image: put back the clean value of a fraction ``k`` of the pixels
(all channels of a pixel together) in a chosen order, and see whether the classifier is still fooled.

Orders (``RANKINGS``; each returns a priority (N, 1, H, W), restored highest first):

* ``"salient"``: ``sum_c |delta|`` -- largest perturbation first (the paper's salient attack);
* ``"salient-grad"``: ``|sum_c delta * g|`` with ``g`` the mean of ``grad_x CE(f(.), y)`` at ``x`` and
  ``x_adv`` -- the size of each pixel's first-order share of the loss change (trapezoid rule of the
  integrated gradient, as the learned scorer's ``delta-grad`` target);
* ``"trivial"``: ``-sum_c |delta|`` -- smallest perturbation first;
* ``"random"``: a seeded uniform draw per image.

Equal priorities (frequent: under Linf attacks many ``|delta|`` sit exactly at ``eps``, and pixels
clipped at 0 or 1 carry none) are ordered at random from the same seeded generator, never by
position, so that a tie cannot smuggle a spatial bias into a curve.

Scorer agreement (:func:`scorer_agreement`): a Pixel Surgery scorer sees ``x_adv`` only; its top
``ratio`` pixels are compared with the oracle salient set, the top ``ratio`` pixels by ``|delta|``.

Shapes: x, x_adv (N, C, H, W) in [0, 1]; y (N,) int64; orders (N, H*W) int64 (pixel indices,
restored first to last).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from pssr.defense.scoring import input_gradient
from pssr.defense.surgery import num_removed
from pssr.registry import Registry
from pssr.utils import eval_mode

RankingFn = Callable[[Tensor, Tensor, Tensor, nn.Module, torch.Generator], Tensor]
RANKINGS: Registry[Tensor] = Registry("pixel ranking")


DELTA_RESOLUTION = 1e-6  # |delta| is rounded to this: far below one 8-bit grey level (1/255)


def delta_magnitude(x: Tensor, x_adv: Tensor) -> Tensor:
    """``sum_c |x_adv - x|`` per pixel, (N, 1, H, W), float32, rounded to ``DELTA_RESOLUTION``.

    Rounded because in float32 ``(x + eps) - x`` differs from ``eps`` by an amount that depends on
    ``x`` (0.1 + 0.5 - 0.5 != 0.1): without it, pixels an L-inf attack moved by exactly eps would be
    ordered by their clean intensity instead of being tied (and then ordered at random).
    """
    d = (x_adv.float() - x.float()).abs().sum(1, keepdim=True)
    return torch.round(d / DELTA_RESOLUTION) * DELTA_RESOLUTION


@RANKINGS.register("salient")
def salient_priority(
    x: Tensor, x_adv: Tensor, y: Tensor, classifier: nn.Module, gen: torch.Generator
) -> Tensor:
    return delta_magnitude(x, x_adv)


@RANKINGS.register("salient-grad")
def salient_grad_priority(
    x: Tensor, x_adv: Tensor, y: Tensor, classifier: nn.Module, gen: torch.Generator
) -> Tensor:
    g = 0.5 * (input_gradient(classifier, x, y) + input_gradient(classifier, x_adv, y))  # (N, C, H, W)
    return ((x_adv.float() - x.float()) * g).sum(1, keepdim=True).abs()


@RANKINGS.register("trivial")
def trivial_priority(
    x: Tensor, x_adv: Tensor, y: Tensor, classifier: nn.Module, gen: torch.Generator
) -> Tensor:
    return -delta_magnitude(x, x_adv)


@RANKINGS.register("random")
def random_priority(
    x: Tensor, x_adv: Tensor, y: Tensor, classifier: nn.Module, gen: torch.Generator
) -> Tensor:
    n, _, h, w = x.shape
    return torch.rand((n, 1, h, w), generator=gen).to(x.device)


def list_rankings(pattern: str = "*") -> list[str]:
    return RANKINGS.list(pattern)


def restore_order(priority: Tensor, gen: torch.Generator) -> Tensor:
    """Pixel indices (N, H*W), highest priority first; ties in a seeded random order (see module doc)."""
    if priority.ndim != 4 or priority.shape[1] != 1:
        raise ValueError(f"priority must be (N, 1, H, W), got {tuple(priority.shape)}")
    flat = priority.detach().flatten(1).float().cpu()  # (N, P)
    n, p = flat.shape
    shuffle = torch.rand((n, p), generator=gen).argsort(1)  # a random order per image ...
    # ... then a stable sort on the priority keeps that random order among equal priorities
    by_priority = torch.sort(flat.gather(1, shuffle), dim=1, descending=True, stable=True).indices
    return shuffle.gather(1, by_priority).to(priority.device)


def restore_mask(order: Tensor, k: float, hw: tuple[int, int]) -> Tensor:
    """(N, 1, H, W) mask, 1 on the first ``round(k * H * W)`` pixels of ``order``."""
    h, w = hw
    m = num_removed(k, h, w)
    mask = torch.zeros(order.shape, device=order.device)
    if m > 0:
        mask.scatter_(1, order[:, :m], 1.0)
    return mask.view(order.shape[0], 1, h, w)


def restore_pixels(x: Tensor, x_adv: Tensor, order: Tensor, k: float) -> Tensor:
    """``x_adv`` with the clean value put back on the first fraction ``k`` of the pixels of ``order``."""
    mask = restore_mask(order, k, (x.shape[2], x.shape[3])).bool()
    return torch.where(mask, x, x_adv)


@torch.no_grad()
def fooled_curve(
    classifier: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    order: Tensor,
    grid: Sequence[float],
    batch_size: int = 256,
) -> Tensor:
    """(N, G) bool: is ``classifier`` still fooled once the first ``grid[j]`` of ``order`` is restored?"""
    with eval_mode(classifier):
        cols = []
        for k in grid:
            xk = restore_pixels(x, x_adv, order, float(k))
            pred = torch.cat(
                [classifier(xk[i : i + batch_size]).argmax(1) for i in range(0, len(xk), batch_size)]
            )
            cols.append(pred != y)
        return torch.stack(cols, 1) if cols else torch.zeros(len(x), 0, dtype=torch.bool)


def halving_k(grid: Sequence[float], rates: Sequence[float]) -> float | None:
    """The fraction ``k`` at which ``rates`` first falls to half of ``rates[0]`` (linear between grid
    points); None when it never does or when ``rates[0]`` is 0."""
    if len(grid) != len(rates) or not grid:
        raise ValueError(
            f"grid and rates must have the same positive length, got {len(grid)} and {len(rates)}"
        )
    half = 0.5 * rates[0]
    if rates[0] <= 0:
        return None
    for j in range(1, len(grid)):
        if rates[j] <= half:
            k0, k1, r0, r1 = grid[j - 1], grid[j], rates[j - 1], rates[j]
            return float(k1 if r0 == r1 else k0 + (r0 - half) * (k1 - k0) / (r0 - r1))
    return None


# ---------------------------------------------------------------- scorer agreement with the oracle
def average_ranks(v: Tensor) -> Tensor:
    """Per-row ranks (0-based) of ``v`` (N, P), ties given their average rank (as Spearman needs)."""
    s = v.sort(1).values
    lo = torch.searchsorted(s, v.contiguous(), right=False)
    hi = torch.searchsorted(s, v.contiguous(), right=True)
    return (lo + hi - 1).to(torch.float64) / 2.0


def spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per row of (N, P) tensors; NaN where a row is constant."""
    ra, rb = average_ranks(a.double()), average_ranks(b.double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.full_like(den, float("nan")))


def top_set(scores: Tensor, ratio: float, gen: torch.Generator) -> Tensor:
    """(N, P) bool: the top ``round(ratio * P)`` pixels of ``scores`` (N, 1, H, W), random tie-break."""
    n, _, h, w = scores.shape
    m = num_removed(ratio, h, w)
    order = restore_order(scores, gen)
    sel = torch.zeros(n, h * w, dtype=torch.bool, device=scores.device)
    sel.scatter_(1, order[:, :m], True)
    return sel


def scorer_agreement(
    scores: Tensor, x: Tensor, x_adv: Tensor, ratio: float, gen: torch.Generator
) -> dict[str, Tensor]:
    """How well a scorer's removal set matches the oracle salient set, per image (each value (N,)).

    * ``precision`` = |S n O| / |S| and ``recall`` = |S n O| / |O|, with S the scorer's top ``ratio``
      and O the top ``ratio`` by ``|delta|`` (ties at the cut broken at random). Both sets hold
      ``round(ratio * H * W)`` pixels, so the two are equal; both are reported as asked;
    * ``tie_precision``: share of S whose ``|delta|`` reaches the cut value of O (counts every pixel
      tied with the oracle's last one as salient: the fair precision when many ``|delta|`` equal eps);
    * ``mass_recall``: ``sum_S |delta| / sum_O |delta|``, the share of the largest ``|delta|`` mass
      any set of that size can hold (insensitive to ties);
    * ``chance_tie_precision``: the share of all pixels at or above the cut (what a random S gets);
    * ``spearman``: rank correlation of the scores with ``|delta|`` over all pixels.
    """
    d = delta_magnitude(x, x_adv)  # (N, 1, H, W)
    n = d.shape[0]
    s_set, o_set = top_set(scores, ratio, gen), top_set(d, ratio, gen)
    dflat = d.flatten(1)
    size = s_set.sum(1).clamp_min(1).double()
    hit = (s_set & o_set).sum(1).double()
    cut = torch.where(o_set, dflat, torch.full_like(dflat, float("inf"))).amin(1, keepdim=True)  # (N, 1)
    at_or_above = (dflat >= cut) & (dflat > 0)
    o_mass = (dflat * o_set).sum(1).double()
    out = {
        "precision": hit / size,
        "recall": hit / o_set.sum(1).clamp_min(1).double(),
        "tie_precision": (s_set & at_or_above).sum(1).double() / size,
        "chance_tie_precision": at_or_above.sum(1).double() / dflat.shape[1],
        "mass_recall": torch.where(
            o_mass > 0, (dflat * s_set).sum(1).double() / o_mass.clamp_min(1e-30), torch.zeros(n).double()
        ),
        "spearman": spearman_rows(scores.detach().flatten(1).float().cpu(), dflat.cpu()),
    }
    return {k: v.cpu() for k, v in out.items()}
