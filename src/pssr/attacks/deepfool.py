"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016), multi-class, L2 and Linf.

Paper: https://arxiv.org/abs/1511.04599

Threat model: white-box, untargeted, minimum-norm. At each iteration the classifier is linearized
around the current point; for each candidate class ``k`` (the ``candidates`` classes with the
highest clean logits other than the true one) with ``w_k = grad z_k - grad z_y`` and
``f_k = z_k - z_y``, the closest linearized boundary is ``l = argmin_k |f_k| / ||w_k||_q`` (q the
dual norm: 2 for L2, 1 for Linf), and the step to it is added to the total perturbation ``r``:
``(|f_l| + 1e-4) * w_l / ||w_l||_2^2`` (L2) or ``(|f_l| + 1e-4) * sign(w_l) / ||w_l||_1`` (Linf).
The iterate is ``x + (1 + overshoot) * r`` clipped to [0, 1]; an example stops as soon as it is
misclassified, or after ``steps``. The result is then projected onto the ``eps`` ball (by
:class:`Attack`) for robust accuracy at a budget; examples never fooled end at their last iterate.

Arguments:
    model (nn.Module): classifier or defense, images in [0, 1] -> logits.
    eps (float): budget the result is clipped to, in pixel units of [0, 1] images.
    norm (str): "l2" (the paper's main variant) or "linf".
    seed (int): unused (deterministic); kept for the common interface.
    steps (int): maximum iterations (default 50).
    overshoot (float): overshoot factor (default 0.02, the paper's value).
    candidates (int): classes considered per step, the true one included (default 10).

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].
    Cost: ``candidates`` backward passes per iteration on the examples not yet fooled.

Example::

    atk = DeepFool(model, eps=0.5, norm="l2")
    x_adv = atk(x, y)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pssr.attacks._common import bshape, check_float, check_int
from pssr.attacks.base import ATTACKS, Attack


@ATTACKS.register("deepfool")
class DeepFool(Attack):
    __doc__ = __doc__
    name = "deepfool"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "l2",
        seed: int = 0,
        *,
        steps: int = 50,
        overshoot: float = 0.02,
        candidates: int = 10,
    ) -> None:
        super().__init__(model, eps, norm, seed)
        self.steps = check_int(self.name, "steps", steps)
        self.overshoot = check_float(self.name, "overshoot", overshoot)
        self.candidates = check_int(self.name, "candidates", candidates, low=2)

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            logits0 = self.model(x)  # (N, K)
        k = min(self.candidates, logits0.shape[1])
        # candidate classes: the true class first, then the k - 1 highest other clean logits
        others = logits0.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices  # (N, k-1)
        cand = torch.cat([y[:, None], others], 1)  # (N, k)
        x_adv = x.clone()
        r_tot = torch.zeros_like(x)
        act = torch.arange(x.shape[0], device=x.device)
        for it in range(self.steps + 1):
            xa = (x[act] + (1 + self.overshoot) * r_tot[act]).clamp(0, 1).requires_grad_(True)
            logits = self.model(xa)
            z = logits.gather(1, cand[act])  # (n, k): z[:, 0] is the true class
            fooled = logits.argmax(1) != y[act]
            x_adv[act] = xa.detach()
            keep = ~fooled
            if not keep.any() or it == self.steps:
                break
            grads = [torch.autograd.grad(z[:, j].sum(), xa, retain_graph=j < k - 1)[0] for j in range(k)]
            jac = torch.stack(grads, 1)  # (n, k, C, H, W)
            w = (jac[:, 1:] - jac[:, :1]).flatten(2)  # (n, k-1, D)
            f = (z[:, 1:] - z[:, :1]).detach()  # (n, k-1)
            if self.norm == "l2":
                wn = w.norm(dim=2)
            else:
                wn = w.abs().sum(2)
            dist = f.abs() / (wn + 1e-8)
            l_idx = dist.argmin(1)  # (n,) closest linearized boundary
            ar = torch.arange(w.shape[0], device=x.device)
            w_l, f_l, n_l = w[ar, l_idx], f[ar, l_idx].abs(), wn[ar, l_idx]
            if self.norm == "l2":
                r = (f_l + 1e-4)[:, None] * w_l / (n_l**2 + 1e-8)[:, None]
            else:
                r = (f_l + 1e-4)[:, None] * w_l.sign() / (n_l + 1e-8)[:, None]
            r = r.view_as(xa) * bshape(keep.to(x.dtype), xa)  # fooled examples do not move
            r_tot[act] += r
            act = act[keep]
        return x_adv

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(steps=self.steps, overshoot=self.overshoot, candidates=self.candidates)
        return cfg
