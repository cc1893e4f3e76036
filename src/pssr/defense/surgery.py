"""Pixel Surgery: turn pixel scores into a removal mask and cut the salient pixels out.

PSSR (arXiv 2402.00304) removes the *salient attack* and keeps the *trivial attack* in place as
invariance information. Our reading (paper-notes item 2):

* ``topk_mask(scores, ratio)``: exactly ``round(ratio * H * W)`` ones per image (1 = removed).
  Ties are broken deterministically by the lower flat index (a stable descending sort), so the
  same scores always give the same mask on every device.
* ``threshold_mask(scores, threshold)``: ones where the per-image min-max normalized score is
  strictly above ``threshold`` (in [0, 1]); the number of removed pixels then varies per image.
* ``apply_fill(x, mask, name)``: removed pixels take a defined value (registered fills:
  ``"constant"`` = ``value``, ``"mean"`` = the per-image, per-channel mean of the *kept* pixels,
  ``"local-mean"`` = normalized convolution: repeatedly the mean of the already-known 3x3
  neighbours, a fixed non-learned inpainting used by the surgery-only ablation). Kept pixels are
  bit-identical. The mask itself is passed on to the regenerator as an extra channel.

Shapes: scores (N, 1, H, W); mask (N, 1, H, W) float in {0, 1}; x (N, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pssr.registry import Registry

FILLS: Registry[Callable[..., Tensor]] = Registry("fill")


def _check_scores(scores: Tensor) -> None:
    if not isinstance(scores, Tensor) or scores.ndim != 4 or scores.shape[1] != 1:
        raise ValueError(
            f"scores must be a (N, 1, H, W) tensor, got {getattr(scores, 'shape', type(scores))}"
        )
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")


def num_removed(ratio: float, h: int, w: int) -> int:
    """``round(ratio * H * W)``, the number of pixels :func:`topk_mask` removes per image."""
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0.0 <= ratio <= 1.0):
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}")
    return int(round(ratio * h * w))


def topk_mask(scores: Tensor, ratio: float) -> Tensor:
    """Mask (N, 1, H, W) with exactly ``round(ratio*H*W)`` ones per image at the highest scores."""
    _check_scores(scores)
    n, _, h, w = scores.shape
    k = num_removed(ratio, h, w)
    flat = scores.detach().flatten(1).float()  # (N, H*W)
    mask = torch.zeros_like(flat)
    if k > 0:
        # stable=True keeps equal scores in index order, so ties go to the lower flat index
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
        mask.scatter_(1, order, 1.0)
    return mask.view(n, 1, h, w)


def threshold_mask(scores: Tensor, threshold: float) -> Tensor:
    """Ones where ``(s - min) / (max - min) > threshold`` per image; a constant image removes nothing."""
    _check_scores(scores)
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    flat = scores.detach().flatten(1).float()
    lo, hi = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    norm = (flat - lo) / (hi - lo).clamp_min(1e-12)
    return ((norm > threshold) & (hi > lo)).float().view_as(scores)


MASK_MODES: dict[str, Callable[[Tensor, float], Tensor]] = {"topk": topk_mask, "threshold": threshold_mask}


@FILLS.register("constant")
def fill_constant(x: Tensor, mask: Tensor, value: float = 0.5) -> Tensor:
    return torch.full_like(x, float(value))


@FILLS.register("mean")
def fill_mean(x: Tensor, mask: Tensor, value: float = 0.5) -> Tensor:
    """Per-image, per-channel mean of the kept pixels (``value`` when nothing is kept)."""
    keep = 1.0 - mask.to(x.dtype)  # (N, 1, H, W)
    num = (x * keep).sum((2, 3), keepdim=True)  # (N, C, 1, 1)
    den = keep.sum((2, 3), keepdim=True)
    mean = torch.where(den > 0, num / den.clamp_min(1.0), torch.full_like(num, float(value)))
    return mean.expand_as(x)


@FILLS.register("local-mean")
def fill_local_mean(x: Tensor, mask: Tensor, value: float = 0.5, max_iters: int = 64) -> Tensor:
    """Normalized-convolution inpainting: each unknown pixel becomes the mean of its known 3x3
    neighbours, growing inwards until every hole is filled (``value`` for images with no kept pixel)."""
    c = x.shape[1]
    known = 1.0 - mask.to(x.dtype)  # (N, 1, H, W)
    filled = x * known
    kernel_img = torch.ones(c, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel_m = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    for _ in range(max_iters):
        if bool((known > 0).all()):
            break
        s = F.conv2d(filled, kernel_img, padding=1, groups=c)  # (N, C, H, W) sum of known neighbours
        cnt = F.conv2d(known, kernel_m, padding=1)  # (N, 1, H, W)
        new = (cnt > 0) & (known == 0)
        filled = torch.where(new, s / cnt.clamp_min(1.0), filled)
        known = torch.where(new, torch.ones_like(known), known)
    return torch.where(known > 0, filled, torch.full_like(filled, float(value)))


def apply_fill(x: Tensor, mask: Tensor, name: str = "mean", value: float = 0.5) -> Tensor:
    """``x`` with the masked pixels replaced by fill ``name``; kept pixels bit-identical."""
    if mask.shape != (x.shape[0], 1, *x.shape[2:]):
        raise ValueError(f"mask must be (N, 1, H, W) matching x {tuple(x.shape)}, got {tuple(mask.shape)}")
    fill = FILLS.get(name)(x, mask, value=value)
    return torch.where(mask.bool(), fill, x)


def list_fills(pattern: str = "*") -> list[str]:
    return FILLS.list(pattern)
