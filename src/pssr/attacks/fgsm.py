"""FGSM: the fast gradient sign method (Goodfellow, Shlens & Szegedy, ICLR 2015).

Paper: https://arxiv.org/abs/1412.6572

Threat model: white-box, untargeted, one gradient step of size ``eps`` on the loss of the true
class: ``x + eps * sign(grad)`` (Linf) or ``x + eps * grad / ||grad||_2`` (L2, the "fast gradient
method"), then clipped to [0, 1]. The clean input is kept instead when it already fools the model
or has the higher loss (worst case of the two points checked).

Arguments:
    model (nn.Module): classifier (or whole defense) taking images in [0, 1], returning logits.
    eps (float): budget, in the pixel units of [0, 1] images (e.g. 8/255 Linf, 0.5 L2).
    norm (str): "linf" or "l2".
    seed (int): unused (FGSM is deterministic); kept for the common interface.
    loss (str): "ce" (default), "margin" or "dlr".
    grad_model (nn.Module, optional): module whose gradient is used (e.g. a BPDA view); success is
        always judged on ``model``.

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].

Example::

    atk = FGSM(model, eps=8 / 255)
    x_adv = atk(x, y)
"""

from __future__ import annotations

from torch import nn

from pssr.attacks._iterative import IterativeAttack
from pssr.attacks.base import ATTACKS


@ATTACKS.register("fgsm")
class FGSM(IterativeAttack):
    __doc__ = __doc__
    name = "fgsm"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        loss: str = "ce",
        grad_model: nn.Module | None = None,
    ) -> None:
        alpha = float(eps) if isinstance(eps, (int, float)) else eps  # one step of the full budget
        super().__init__(
            model,
            eps,
            norm,
            seed,
            steps=1,
            alpha=alpha,
            restarts=1,
            random_start=False,
            loss=loss,
            grad_model=grad_model,
        )
