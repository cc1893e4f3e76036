"""MI-FGSM: momentum iterative FGSM (Dong et al., CVPR 2018).

Paper: https://arxiv.org/abs/1710.06081

Threat model: white-box (and, its purpose, better transfer to other models), untargeted. From the
clean input, accumulate the L1-normalized gradient with decay ``decay`` (mu):
``g <- mu * g + grad / ||grad||_1``, then step ``x <- x + alpha * sign(g)`` (Linf) or
``alpha * g / ||g||_2`` (L2), clipping to the ``eps`` ball and [0, 1]. The paper takes
``alpha = eps / steps``, ``steps = 10``, ``mu = 1.0``. As in PGD, the first iterate that fools
``model`` is kept.

Arguments:
    model (nn.Module): classifier or defense, images in [0, 1] -> logits.
    eps (float): budget in pixel units of [0, 1] images.
    norm (str): "linf" or "l2".
    seed (int): unused (deterministic); kept for the common interface.
    steps (int): iterations (default 10).
    alpha (float, optional): step size in pixel units; default ``eps / steps``.
    decay (float): momentum decay factor mu (default 1.0).
    loss (str): "ce" (default), "margin" or "dlr".
    early_stop (bool): drop fooled examples from the batch (default True).
    grad_model (nn.Module, optional): gradient view; success judged on ``model``.

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].

Example::

    atk = MIFGSM(model, eps=8 / 255, steps=10, decay=1.0)
    x_adv = atk(x, y)
"""

from __future__ import annotations

from torch import nn

from pssr.attacks._iterative import IterativeAttack
from pssr.attacks.base import ATTACKS


@ATTACKS.register("mifgsm")
class MIFGSM(IterativeAttack):
    __doc__ = __doc__
    name = "mifgsm"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        steps: int = 10,
        alpha: float | None = None,
        decay: float = 1.0,
        loss: str = "ce",
        early_stop: bool = True,
        grad_model: nn.Module | None = None,
    ) -> None:
        if alpha is None and isinstance(steps, int) and steps > 0 and isinstance(eps, (int, float)):
            alpha = float(eps) / steps
        super().__init__(
            model,
            eps,
            norm,
            seed,
            steps=steps,
            alpha=alpha,
            restarts=1,
            random_start=False,
            loss=loss,
            decay=decay,
            early_stop=early_stop,
            grad_model=grad_model,
        )
