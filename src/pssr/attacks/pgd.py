"""PGD: projected gradient descent with random restarts (Madry et al., ICLR 2018).

Paper: https://arxiv.org/abs/1706.06083

Threat model: white-box, untargeted. From a uniformly random point of the ``norm`` ball
(``random_start``), take ``steps`` steepest-ascent steps of size ``alpha`` on the loss
(``x += alpha * sign(grad)`` for Linf, ``alpha * grad / ||grad||_2`` for L2), projecting onto the
ball and [0, 1] after each. Every iterate is checked on ``model``: the first one that fools it is
kept; otherwise the highest-loss iterate. ``restarts`` re-run the attack from new random points on
the examples not yet fooled (any restart that fools wins).

Adaptive use: ``grad_model`` supplies the gradients (a BPDA view, an EOT average of a randomized
defense) while success is judged on ``model`` -- see :mod:`pssr.attacks.adaptive` and the
registered ``pgd-bpda`` / ``pgd-bpda-eot`` / ``pgd-full``.

Arguments:
    model (nn.Module): classifier or whole defense, images in [0, 1] -> logits.
    eps (float): budget, in pixel units of [0, 1] images (e.g. 0.3 Linf on MNIST, 8/255 on CIFAR).
    norm (str): "linf" or "l2".
    seed (int): seed of the random starts (a ``torch.Generator`` on the input's device).
    steps (int): ascent steps per restart (default 40).
    alpha (float, optional): step size in pixel units; default ``2.5 * eps / steps`` (the
        Madry-lab convention, so the walk can cross the ball and come back).
    restarts (int): number of runs (default 1).
    random_start (bool): start the first run from a random point (later runs always do).
    loss (str): "ce" (default), "dlr" (Croce & Hein 2020) or "margin" (Carlini & Wagner).
    early_stop (bool): drop examples from the batch once fooled (default True; results unchanged).
    grad_model (nn.Module, optional): gradient view; defaults to ``model``.

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].

Example::

    atk = PGD(model, eps=8 / 255, steps=20, restarts=2)
    x_adv = atk(x, y)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.attacks._iterative import IterativeAttack
from pssr.attacks.base import ATTACKS


@ATTACKS.register("pgd")
class PGD(IterativeAttack):
    __doc__ = __doc__
    name = "pgd"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        steps: int = 40,
        alpha: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        early_stop: bool = True,
        grad_model: nn.Module | None = None,
    ) -> None:
        super().__init__(
            model,
            eps,
            norm,
            seed,
            steps=steps,
            alpha=alpha,
            restarts=restarts,
            random_start=random_start,
            loss=loss,
            early_stop=early_stop,
            grad_model=grad_model,
        )


def pgd_linf(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    random_start: bool = True,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    loss: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Fixed-budget L-inf PGD (Madry et al. 2018) for *training* and calibration: ``steps`` signed
    steps of ``alpha`` on ``loss(model(x'), y)`` (summed cross-entropy by default), projected on the
    ``eps``-ball around ``x`` and [0, 1]; returns the last iterate (N, C, H, W), detached. ``steps=1,
    alpha=eps`` without random start is FGSM. Unlike :class:`PGD` there are no restarts and no early
    stop: every example takes every step, so a batch's result does not depend on the others.

    The random start is ``x + (2 * noise - 1) * eps`` with ``noise`` uniform in [0, 1), float32,
    (N, C, H, W): given (so that sharded callers reproduce one process's draws bit for bit), or drawn
    from the CPU ``generator``. The model's train/eval mode is the caller's; no gradient reaches its
    parameters (gradients are taken with respect to the input only)."""
    loss_fn = loss or (lambda logits, t: F.cross_entropy(logits.float(), t, reduction="sum"))
    x = x.detach()
    if random_start and eps > 0:
        if noise is None:
            noise = torch.rand(x.shape, generator=generator, dtype=torch.float32)
        elif noise.shape != x.shape:
            raise ValueError(
                f"pgd_linf: noise must have the shape of x {tuple(x.shape)}, got {tuple(noise.shape)}"
            )
        x_adv = (x + (2 * noise.to(x.device) - 1) * eps).clamp(0, 1)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(loss_fn(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * g.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()
