"""Pixel scores for Pixel Surgery: ``scorer(x, classifier) -> (N, 1, H, W)``, higher = more salient attack.

PSSR (arXiv 2402.00304) removes the *salient attack* -- the few pixels that dominate an adversarial
perturbation's effect -- with a *score-based* module. At test time the clean image is unknown, so a
score must come from the input alone. Registered scorers (``create_scorer(name, ...)``):

* ``"learned"`` (default, the paper's score-based module in our reading, paper-notes item 1): a
  small U-Net ``S(x)`` trained on pairs ``(x, x_adv)`` to predict each pixel's *share of the
  attack* (:func:`attack_share_target`). Cheap at inference (one small forward pass), needs no
  classifier gradient, and learns what "salient" means for the attack family it was trained on.
* ``"gradient"``: the classifier's saliency ``|grad_x CE(f(x), argmax f(x))|`` summed over
  channels (``times_input=True``: ``|x * grad|``). No training; one backward pass per call.
* ``"random"``: one fixed seeded map of uniform scores shared by all images, the ablation baseline
  (deterministic, and independent of the batch an image comes in).

Every scorer leaves no gradient on the classifier's parameters and restores its train/eval mode.
Scores are only ranked (top-k) or thresholded after a per-image min-max, so their scale is free.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.defense.regeneration import UNet
from pssr.registry import Registry
from pssr.utils import eval_mode

SCORERS: Registry[nn.Module] = Registry("scorer")
TARGETS: Registry[Callable[..., Tensor]] = Registry("scorer target")


def input_gradient(classifier: nn.Module, x: Tensor, y: Tensor | None = None) -> Tensor:
    """``grad_x CE(f(x), y)`` (y defaults to the prediction), (N, C, H, W); no grad on parameters."""
    with eval_mode(classifier, requires_grad=False), torch.enable_grad():
        xi = x.detach().float().requires_grad_(True)
        logits = classifier(xi)
        target = logits.argmax(1) if y is None else y
        (g,) = torch.autograd.grad(F.cross_entropy(logits.float(), target, reduction="sum"), xi)
    return g


@SCORERS.register("learned")
class LearnedScorer(nn.Module):
    """``S(x)``: a small U-Net from the image (N, C, H, W) to raw scores (N, 1, H, W).

    Trained by ``pssr.train.pssr_train`` with a pixel-wise softmax cross-entropy against
    :func:`attack_share_target`; the classifier argument is accepted for the common interface and
    not used.
    """

    needs_training = True

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.kwargs = {"channels": channels, "width": width, "depth": depth}
        self.channels = channels
        self.net = UNet(channels, 1, width=width, depth=depth)

    def forward(self, x: Tensor, classifier: nn.Module | None = None) -> Tensor:
        return self.net(x.float())


@SCORERS.register("gradient")
class GradientScorer(nn.Module):
    """``|grad_x CE(f(x), y_hat)|`` summed over channels (optionally times the input)."""

    needs_training = False

    def __init__(self, channels: int = 1, times_input: bool = False) -> None:
        super().__init__()
        self.kwargs = {"channels": channels, "times_input": times_input}
        self.times_input = times_input

    def forward(self, x: Tensor, classifier: nn.Module | None = None) -> Tensor:
        if classifier is None:
            raise ValueError("the 'gradient' scorer needs the classifier")
        g = input_gradient(classifier, x)
        if self.times_input:
            g = g * x.detach().float()
        return g.abs().sum(1, keepdim=True)


@SCORERS.register("random")
class RandomScorer(nn.Module):
    """One fixed map of uniform scores (seeded with ``seed``) shared by every image: the ablation of
    scoring. The same map for every image keeps an image's purification independent of its batch
    (a per-position draw would change with batch composition and act like hidden randomness)."""

    needs_training = False

    def __init__(self, channels: int = 1, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"RandomScorer: seed must be a non-negative int, got {seed!r}")
        self.kwargs = {"channels": channels, "seed": seed}
        self.seed = seed

    def forward(self, x: Tensor, classifier: nn.Module | None = None) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        n, _, h, w = x.shape
        return torch.rand((1, 1, h, w), generator=g).to(x.device).expand(n, 1, h, w)  # (N, 1, H, W)


def create_scorer(name: str, **kwargs: object) -> nn.Module:
    return SCORERS.create(name, **kwargs)


def list_scorers(pattern: str = "*") -> list[str]:
    return SCORERS.list(pattern)


# ---- training targets: each pixel's share of the attack, (N, 1, H, W), summing to 1 per image ----


def _normalize_share(t: Tensor) -> Tensor:
    """Per-image distribution over pixels; uniform where an image has no attack at all."""
    n, _, h, w = t.shape
    flat = t.flatten(1)
    tot = flat.sum(1, keepdim=True)
    uniform = torch.full_like(flat, 1.0 / (h * w))
    return torch.where(tot > 0, flat / tot.clamp_min(1e-30), uniform).view(n, 1, h, w)


@TARGETS.register("delta")
def delta_target(
    x: Tensor, x_adv: Tensor, classifier: nn.Module | None = None, y: Tensor | None = None
) -> Tensor:
    """``|delta|`` summed over channels. Weak under Linf PGD, where most |delta| saturate at eps."""
    return _normalize_share((x_adv - x).abs().sum(1, keepdim=True))


@TARGETS.register("delta-grad")
def delta_grad_target(
    x: Tensor, x_adv: Tensor, classifier: nn.Module | None = None, y: Tensor | None = None
) -> Tensor:
    """Each pixel's first-order contribution to the loss increase, ``relu(sum_c delta * g)``.

    ``g`` is the mean of ``grad_x CE`` at ``x`` and at ``x_adv`` (trapezoid rule of the integrated
    gradient, so ``sum(delta * g)`` approximates ``L(x_adv) - L(x)``). Only the positive part
    counts: a pixel whose change lowers the loss is not part of the salient attack.
    """
    if classifier is None or y is None:
        raise ValueError("the 'delta-grad' target needs the classifier and the labels")
    g = 0.5 * (input_gradient(classifier, x, y) + input_gradient(classifier, x_adv, y))
    contrib = ((x_adv - x).float() * g).sum(1, keepdim=True)  # (N, 1, H, W)
    return _normalize_share(contrib.clamp_min(0))


def attack_share_target(
    kind: str, x: Tensor, x_adv: Tensor, classifier: nn.Module | None = None, y: Tensor | None = None
) -> Tensor:
    """The learned scorer's target (see :data:`TARGETS`): (N, 1, H, W), each image sums to 1."""
    return TARGETS.get(kind)(x, x_adv, classifier, y)
