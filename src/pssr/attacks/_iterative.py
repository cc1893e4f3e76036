"""The projected steepest-ascent loop shared by FGSM, BIM, PGD, MI-FGSM and Linf-CW.

One loop, vectorized over the batch, with the choices that make robust accuracy a worst case:

* **Success is judged on ``model``, gradients come from ``grad_model``.** For adaptive attacks the
  gradient view (a BPDA view, an EOT average) differs from the defended model; a point counts as
  adversarial only when the real ``model`` misclassifies it. When both are the same object the
  logits of the gradient pass are reused, so the check is free.
* **Every iterate is checked.** The first iterate that fools ``model`` is kept (later iterates may
  wander back); for examples never fooled, the iterate with the highest loss is kept.
* **Early stop** (default): examples already fooled leave the batch, which saves the work on them
  without changing which examples end up fooled (every remaining example follows the same path).
* **Restarts** run only on the examples no earlier restart fooled: any restart that fools wins.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pssr.attacks._common import (
    bshape,
    check_float,
    check_int,
    check_module,
    get_loss,
    loss_and_grad,
    random_start,
    steepest_direction,
)
from pssr.attacks.base import Attack, project


def ascend(
    model: nn.Module,
    grad_model: nn.Module,
    x: Tensor,
    y: Tensor,
    x0: Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    alpha: float,
    loss: str,
    decay: float | None = None,
    early_stop: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``steps`` projected ascent steps from ``x0`` (N, C, H, W).

    Returns ``(x_best, fooled, best_loss)``: the kept iterate per example (N, C, H, W), whether it
    fools ``model`` (N,) bool, and the loss of the kept iterate on ``model`` (N,) (-inf if fooled
    before any loss was recorded).
    """
    loss_fn = get_loss(loss)
    n = x.shape[0]
    x_best = x0.clone()
    best_loss = torch.full((n,), -math.inf, device=x.device)
    fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
    same = grad_model is model
    idx = torch.arange(n, device=x.device)  # positions of the still-active examples in the batch
    xa, xc, yc = x0.clone(), x, y
    mom = torch.zeros_like(x) if decay is not None else None
    for t in range(steps + 1):
        last = t == steps
        if last:  # the final iterate only needs checking
            with torch.no_grad():
                logits = model(xa)
            cur_loss, grad = loss_fn(logits, yc), None
        else:
            cur_loss, grad, logits = loss_and_grad(grad_model, xa, yc, loss_fn)
            if not same:
                with torch.no_grad():
                    logits = model(xa)
                    cur_loss = loss_fn(logits, yc)
        adv = logits.argmax(1) != yc
        open_ = ~fooled[idx]
        take = open_ & (adv | (cur_loss > best_loss[idx]))
        x_best[idx[take]] = xa[take]
        best_loss[idx[take]] = cur_loss[take]
        fooled[idx[open_ & adv]] = True
        if last:
            break
        assert grad is not None
        if mom is not None:
            # MI-FGSM: accumulate L1-normalized gradients with decay factor mu (Dong et al., Eq. 6)
            g = grad / bshape(grad.abs().flatten(1).sum(1).clamp_min(1e-12), grad)
            mom = decay * mom + g
            grad = mom
        xa = project(xa + alpha * steepest_direction(grad, norm), xc, eps, norm)
        if early_stop:
            keep = ~fooled[idx]
            if not keep.any():
                break
            if not keep.all():
                idx, xa, xc, yc = idx[keep], xa[keep], xc[keep], yc[keep]
                mom = mom[keep] if mom is not None else None
    return x_best, fooled, best_loss


class IterativeAttack(Attack):
    """Projected steepest ascent on a loss (the engine behind FGSM, BIM, PGD, MI-FGSM, CW-Linf).

    Subclasses set the defaults and the docstring; see :func:`ascend` for the semantics.
    """

    name = "iterative"
    default_loss = "ce"

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
        loss: str | None = None,
        decay: float | None = None,
        early_stop: bool = True,
        grad_model: nn.Module | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed)
        self.steps = check_int(self.name, "steps", steps)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else check_float(self.name, "alpha", alpha)
        self.restarts = check_int(self.name, "restarts", restarts)
        self.random_start = bool(random_start)
        loss = self.default_loss if loss is None else loss
        get_loss(loss)  # validates the name
        self.loss = loss.lower()
        self.decay = None if decay is None else check_float(self.name, "decay", decay)
        self.early_stop = bool(early_stop)
        self.grad_model = (
            self.model if grad_model is None else check_module(self.name, "grad_model", grad_model)
        )

    def managed_modules(self) -> list[nn.Module]:
        return [self.model] if self.grad_model is self.model else [self.model, self.grad_model]

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        gen = self.generator(x.device)
        x_best = x.clone()
        best_loss = torch.full((x.shape[0],), -math.inf, device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for r in range(self.restarts):
            todo = (~fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            xs, ys = x[todo], y[todo]
            x0 = random_start(xs, self.eps, self.norm, gen) if (self.random_start or r > 0) else xs
            xb, f, lb = ascend(
                self.model,
                self.grad_model,
                xs,
                ys,
                x0,
                eps=self.eps,
                norm=self.norm,
                steps=self.steps,
                alpha=self.alpha,
                loss=self.loss,
                decay=self.decay,
                early_stop=self.early_stop,
            )
            take = f | (lb > best_loss[todo])
            x_best[todo[take]] = xb[take]
            best_loss[todo[take]] = lb[take]
            fooled[todo[f]] = True
        return x_best

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(
            steps=self.steps,
            alpha=self.alpha,
            restarts=self.restarts,
            random_start=self.random_start,
            loss=self.loss,
            early_stop=self.early_stop,
        )
        if self.decay is not None:
            cfg["decay"] = self.decay
        if self.grad_model is not self.model:
            cfg["grad_model"] = type(self.grad_model).__name__
        return cfg
