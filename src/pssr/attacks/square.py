"""Square Attack: score-based, gradient-free random search (Andriushchenko et al., ECCV 2020).

Paper: https://arxiv.org/abs/1912.00049

Threat model: black-box (scores only: it queries ``model``'s logits, never its gradients),
untargeted, Linf and L2. It is the control that exposes gradient masking: a defense that only
breaks gradients falls to it. Each iteration proposes one change localized in a random square
window of side ``s`` (shrinking along a fixed schedule of ``p``, the fraction of pixels changed,
halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 of a 10,000-query run, rescaled
to ``n_queries``) and keeps it only if the margin ``z_y - max_{j != y} z_j`` decreases. Examples
stop once misclassified.

* Linf: start from vertical stripes of +-eps; a proposal sets the window, per channel, to one
  random vertex value ``+-eps`` (a proposal identical to the current window is flipped so that no
  query is wasted).
* L2: start from a grid of square "double-pyramid" patterns with random signs, scaled to norm eps;
  a proposal moves the mass of a second random window into the first and redraws the first as a
  random-sign double pyramid, keeping the total L2 norm at eps before clipping to [0, 1].

The windows are drawn per image (Linf) or per batch (L2); randomness comes from ``seed``.

Arguments:
    model (nn.Module): classifier or defense, images in [0, 1] -> logits.
    eps (float): budget in pixel units of [0, 1] images.
    norm (str): "linf" or "l2".
    seed (int): seed of the search.
    n_queries (int): iterations after the initialization, i.e. model queries per example (default
        1000; AutoAttack uses 5000).
    p_init (float): initial fraction of pixels changed per proposal, in (0, 1] (default 0.8).
    loss (str): quantity to decrease: "margin" (default) or "ce" (minus cross-entropy).

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].

Example::

    atk = Square(model, eps=8 / 255, n_queries=1000)
    x_adv = atk(x, y)
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.attacks._common import bshape, check_float, check_int, margin_loss
from pssr.attacks.base import ATTACKS, Attack, lp_norm

_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)  # of a 10,000-iteration run


def _pyramid(h: int, w: int, device: torch.device) -> Tensor:
    """(h, w) sum of centred concentric squares weighted 1/(k+1)^2 (k = 0 innermost)."""
    if h == 0 or w == 0:
        return torch.zeros(h, w, device=device)
    kmax = max(h // 2 + 1, w // 2 + 1)
    ii = torch.arange(h, device=device)[:, None] - h // 2
    jj = torch.arange(w, device=device)[None, :] - w // 2
    d = torch.maximum(ii.abs(), jj.abs())  # Chebyshev distance to the centre pixel
    weights = 1.0 / (torch.arange(kmax, device=device, dtype=torch.float32) + 1) ** 2
    tail = weights.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} weights[j]
    return tail[d.clamp(max=kmax - 1)]


def _double_pyramid(s: int, device: torch.device, transpose: bool) -> Tensor:
    """(s, s) unit-L2 pattern: a positive pyramid on one half, a negative one on the other."""
    a = s // 2
    top = _pyramid(a, s, device)
    bottom = -_pyramid(s - a, s, device)
    pat = torch.cat([top, bottom], 0)
    pat = pat / pat.norm().clamp_min(1e-12)
    return pat.t() if transpose else pat


@ATTACKS.register("square")
class Square(Attack):
    __doc__ = __doc__
    name = "square"
    gradient_free = True

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        n_queries: int = 1000,
        p_init: float = 0.8,
        loss: str = "margin",
    ) -> None:
        super().__init__(model, eps, norm, seed)
        self.n_queries = check_int(self.name, "n_queries", n_queries)
        self.p_init = check_float(self.name, "p_init", p_init, low_open=True, high=1.0)
        if loss not in ("margin", "ce"):
            raise ValueError(f"{self.name}: loss={loss!r} not supported; choose from ('margin', 'ce')")
        self.loss = loss

    # ------------------------------------------------------------------------------------ helpers
    def _p(self, i: int) -> float:
        it = int(i / self.n_queries * 10000)
        return self.p_init / 2 ** sum(it > t for t in _HALVINGS)

    def _objective(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(value to decrease (N,), fooled (N,)) from one query of ``model``."""
        logits = self.model(x)
        fooled = logits.argmax(1) != y
        if self.loss == "margin":
            return -margin_loss(logits, y), fooled
        return -F.cross_entropy(logits, y, reduction="none"), fooled

    def _randint(
        self, high: int, size: tuple[int, ...], gen: torch.Generator, device: torch.device
    ) -> Tensor:
        return torch.randint(0, high, size, generator=gen, device=device)

    def _sign(self, size: tuple[int, ...], gen: torch.Generator, device: torch.device) -> Tensor:
        return self._randint(2, size, gen, device).float() * 2 - 1

    def _window(self, n: int, h: int, w: int, s: int, vh: Tensor, vw: Tensor) -> Tensor:
        """(n, 1, h, w) bool mask of the s x s windows with top-left corners (vh, vw), each (n,)."""
        rows = torch.arange(h, device=vh.device)[None, :]
        cols = torch.arange(w, device=vh.device)[None, :]
        r = (rows >= vh[:, None]) & (rows < vh[:, None] + s)  # (n, h)
        c = (cols >= vw[:, None]) & (cols < vw[:, None] + s)  # (n, w)
        return (r[:, :, None] & c[:, None, :])[:, None]

    # --------------------------------------------------------------------------------- the attack
    @torch.no_grad()
    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        gen = self.generator(x.device)
        n, c, h, w = x.shape
        dev = x.device
        if self.norm == "linf":
            x_best = (x + self.eps * self._sign((n, c, 1, w), gen, dev)).clamp(0, 1)
        else:
            x_best = (x + self.eps * self._l2_init(x, gen)).clamp(0, 1)
        obj_best, fooled = self._objective(x_best, y)
        for i in range(self.n_queries):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xc, xb, yc = x[idx], x_best[idx], y[idx]
            if self.norm == "linf":
                x_new = self._linf_proposal(xc, xb, self._p(i), gen)
            else:
                x_new = self._l2_proposal(xc, xb, self._p(i), gen)
            obj, f = self._objective(x_new, yc)
            better = obj < obj_best[idx]
            x_best[idx[better]] = x_new[better]
            obj_best[idx[better]] = obj[better]
            fooled[idx[better & f]] = True
        return x_best

    def _linf_proposal(self, xc: Tensor, xb: Tensor, p: float, gen: torch.Generator) -> Tensor:
        n, c, h, w = xc.shape
        s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1 if h > 1 else 1, w - 1 if w > 1 else 1)
        vh = self._randint(h - s + 1, (n,), gen, xc.device)
        vw = self._randint(w - s + 1, (n,), gen, xc.device)
        mask = self._window(n, h, w, s, vh, vw)  # (n, 1, h, w)
        sign = self._sign((n, c, 1, 1), gen, xc.device)
        cand = (xc + self.eps * sign).clamp(0, 1)  # window value per channel, broadcast to (n, c, h, w)
        unchanged = (((cand - xb).abs() < 1e-7) | ~mask).flatten(1).all(1)
        sign = torch.where(bshape(unchanged, sign), -sign, sign)
        delta = torch.where(mask, self.eps * sign, xb - xc)
        return (xc + delta).clamp(0, 1)

    def _l2_init(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """(N, C, H, W) unit-norm start: a grid of random-sign double pyramids of side H // 5."""
        n, c, h, w = x.shape
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        pat = _double_pyramid(s, x.device, transpose=False)
        off_h, off_w = (h - (h // s) * s) // 2, (w - (w // s) * s) // 2
        for vh in range(off_h, h - s + 1, s):
            for vw in range(off_w, w - s + 1, s):
                sign = self._sign((n, c, 1, 1), gen, x.device)
                delta[:, :, vh : vh + s, vw : vw + s] += pat * sign
        return delta / bshape(lp_norm(delta, "l2").clamp_min(1e-12), delta)

    def _l2_proposal(self, xc: Tensor, xb: Tensor, p: float, gen: torch.Generator) -> Tensor:
        n, c, h, w = xc.shape
        delta = xb - xc  # (n, c, h, w), norm <= eps
        s = max(int(round(math.sqrt(p * h * w))), 3)
        s = s + 1 if s % 2 == 0 else s
        s = min(s, h, w)
        vh, vh2 = (int(v) for v in self._randint(h - s + 1, (2,), gen, xc.device))
        vw, vw2 = (int(v) for v in self._randint(w - s + 1, (2,), gen, xc.device))
        win1 = (slice(None), slice(None), slice(vh, vh + s), slice(vw, vw + s))
        win2 = (slice(None), slice(None), slice(vh2, vh2 + s), slice(vw2, vw2 + s))
        union = torch.zeros(1, 1, h, w, device=xc.device)
        union[win1] = 1
        union[win2] = 1

        def hw_norm(t: Tensor) -> Tensor:  # (n, c, a, b) -> (n, c, 1, 1)
            return t.pow(2).sum((2, 3), keepdim=True).sqrt()

        norm_img = lp_norm(delta, "l2")  # (n,)
        norm_union = hw_norm(delta * union)  # (n, c, 1, 1): mass available in the two windows
        old = delta[win1] / (hw_norm(delta[win1]) + 1e-12)
        transpose = bool(self._randint(2, (1,), gen, xc.device).item())
        new = _double_pyramid(s, xc.device, transpose) * self._sign((n, c, 1, 1), gen, xc.device) + old
        # rescale so that the window takes the union's mass plus the image's unused budget
        budget = (bshape((self.eps**2 - norm_img**2).clamp_min(0) / c, new) + norm_union**2).sqrt()
        new = new / (hw_norm(new) + 1e-12) * budget
        delta = delta.clone()
        delta[win2] = 0
        delta[win1] = new
        delta = delta / bshape(lp_norm(delta, "l2").clamp_min(1e-12), delta) * self.eps
        return (xc + delta).clamp(0, 1)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(n_queries=self.n_queries, p_init=self.p_init, loss=self.loss)
        return cfg
