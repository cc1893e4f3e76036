"""DDN: Decoupled Direction and Norm (Rony et al., CVPR 2019), L2.

Paper: https://arxiv.org/abs/1811.09600

Threat model: white-box, untargeted, minimum-norm L2. The perturbation ``delta`` takes a
normalized gradient-ascent step on the cross-entropy (``delta += alpha * g / ||g||_2``, ``alpha``
cosine-annealed from ``alpha`` to 0.01 over the run), and is then rescaled to a norm ``rho`` that
shrinks by a factor ``1 - gamma`` while the current point is adversarial and grows by ``1 + gamma``
while it is not (``rho`` starts at ``init_norm``); the point is clipped to [0, 1]. The smallest
adversarial perturbation seen is kept. For robust accuracy at a budget the result is projected
onto the L2 ball of radius ``eps`` (by :class:`Attack`); with ``early_stop`` (default) an example
stops once fooled within ``eps`` (``early_stop=False`` for true minimum norms). Examples never
fooled are returned unchanged.

Arguments:
    model (nn.Module): classifier or defense, images in [0, 1] -> logits.
    eps (float): L2 budget the result is clipped to, in pixel units of [0, 1] images.
    norm (str): "l2" only.
    seed (int): seed of the random direction used where the gradient is exactly zero.
    steps (int): iterations (default 100).
    gamma (float): norm update factor in (0, 1) (default 0.05).
    init_norm (float): initial norm rho in pixel units (default 1.0).
    alpha (float): initial step size (default 1.0), annealed to 0.01.
    early_stop (bool): stop an example once fooled within ``eps`` (default True).

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].

Example::

    atk = DDN(model, eps=0.5, steps=100)
    x_adv = atk(x, y)
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pssr.attacks._common import bshape, ce_loss, check_float, check_int, loss_and_grad
from pssr.attacks.base import ATTACKS, Attack, lp_norm


@ATTACKS.register("ddn")
class DDN(Attack):
    __doc__ = __doc__
    name = "ddn"
    norms = ("l2",)

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "l2",
        seed: int = 0,
        *,
        steps: int = 100,
        gamma: float = 0.05,
        init_norm: float = 1.0,
        alpha: float = 1.0,
        early_stop: bool = True,
    ) -> None:
        super().__init__(model, eps, norm, seed)
        self.steps = check_int(self.name, "steps", steps)
        self.gamma = check_float(self.name, "gamma", gamma, low_open=True, high=0.999)
        self.init_norm = check_float(self.name, "init_norm", init_norm, low_open=True)
        self.alpha = check_float(self.name, "alpha", alpha, low_open=True)
        self.early_stop = bool(early_stop)

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        gen = self.generator(x.device)
        n = x.shape[0]
        best_adv = x.clone()
        best_l2 = torch.full((n,), math.inf, device=x.device)
        # the largest useful norm per example: the distance to the farthest corner of [0, 1]^D
        worst = lp_norm(torch.maximum(x, 1 - x), "l2")
        act = torch.arange(n, device=x.device)
        delta = torch.zeros_like(x)
        rho = torch.full((n,), self.init_norm, device=x.device)
        for i in range(self.steps + 1):
            xa = x[act] + delta
            _, g, logits = loss_and_grad(self.model, xa, y[act], ce_loss)
            l2 = lp_norm(delta, "l2")
            adv = logits.argmax(1) != y[act]
            better = adv & (l2 < best_l2[act])
            best_l2[act[better]] = l2[better]
            best_adv[act[better]] = xa[better]
            if i == self.steps:
                break
            alpha = 0.01 + (self.alpha - 0.01) * (1 + math.cos(math.pi * i / self.steps)) / 2
            gn = lp_norm(g, "l2")
            zero = gn == 0
            if zero.any():  # no gradient signal: a random direction keeps the search moving
                g[zero] = torch.randn(g[zero].shape, generator=gen, device=x.device, dtype=x.dtype)
                gn = lp_norm(g, "l2")
            delta = delta + alpha * g / bshape(gn, g)
            r = rho[act] * torch.where(adv, 1 - self.gamma, 1 + self.gamma)
            r = torch.minimum(r, worst[act])
            rho[act] = r
            delta = delta * bshape(r / lp_norm(delta, "l2").clamp_min(1e-12), delta)
            delta = (x[act] + delta).clamp(0, 1) - x[act]
            if self.early_stop:
                keep = best_l2[act] > self.eps
                if not keep.any():
                    break
                act, delta = act[keep], delta[keep]
        return best_adv

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(
            steps=self.steps,
            gamma=self.gamma,
            init_norm=self.init_norm,
            alpha=self.alpha,
            early_stop=self.early_stop,
        )
        return cfg
