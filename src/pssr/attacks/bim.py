"""BIM: the basic iterative method, a.k.a. I-FGSM (Kurakin, Goodfellow & Bengio, ICLR 2017 workshop).

Paper: https://arxiv.org/abs/1607.02533

Threat model: white-box, untargeted. FGSM repeated ``steps`` times with step ``alpha`` from the
clean input (no random start), clipping to the ``eps`` ball and [0, 1] after each step. Kurakin et
al. take alpha = 1/255 and about ``1.25 * eps * 255`` steps, i.e. a total path of ``1.25 * eps``;
we keep that total path with a fixed step count: ``alpha = 1.25 * eps / steps``. As in PGD, the first
iterate that fools ``model`` is kept.

Arguments:
    model (nn.Module): classifier or defense, images in [0, 1] -> logits.
    eps (float): budget in pixel units of [0, 1] images.
    norm (str): "linf" or "l2".
    seed (int): unused (deterministic); kept for the common interface.
    steps (int): number of steps (default 10).
    alpha (float, optional): step size in pixel units; default ``1.25 * eps / steps``.
    loss (str): "ce" (default), "margin" or "dlr".
    early_stop (bool): drop fooled examples from the batch (default True).
    grad_model (nn.Module, optional): gradient view (e.g. BPDA); success judged on ``model``.

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].

Example::

    atk = BIM(model, eps=8 / 255, steps=10)
    x_adv = atk(x, y)
"""

from __future__ import annotations

from torch import nn

from pssr.attacks._iterative import IterativeAttack
from pssr.attacks.base import ATTACKS


@ATTACKS.register("bim")
class BIM(IterativeAttack):
    __doc__ = __doc__
    name = "bim"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        steps: int = 10,
        alpha: float | None = None,
        loss: str = "ce",
        early_stop: bool = True,
        grad_model: nn.Module | None = None,
    ) -> None:
        if alpha is None and isinstance(steps, int) and steps > 0 and isinstance(eps, (int, float)):
            alpha = 1.25 * float(eps) / steps
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
            early_stop=early_stop,
            grad_model=grad_model,
        )
