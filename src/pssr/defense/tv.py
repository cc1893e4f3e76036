"""Total-variation minimization (Guo et al., "Countering Adversarial Images using Input
Transformations", ICLR 2018), batched in torch: the solver of the ``tvm`` baseline defense
(:class:`pssr.defense.baselines.TVMDefense`), and the argument checks the baselines share with it.

:func:`tvm_keep_mask` draws the random pixel subset that is kept, :func:`tv_minimize` reconstructs
the image from it, :func:`total_variation` is the regularizer. Images are (N, C, H, W) floats in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def check_images(x: Any) -> None:
    """A float (N, C, H, W) tensor, or a ValueError saying what ``x`` is."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a float (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` if it is an int in [lo, hi], else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    return value


def _forward_differences(z: Tensor) -> tuple[Tensor, Tensor]:
    """(dx, dy), each shaped like ``z`` (N, C, H, W); zero in the last column / row (Neumann boundary)."""
    dx = torch.zeros_like(z)
    dy = torch.zeros_like(z)
    dx[..., :, :-1] = z[..., :, 1:] - z[..., :, :-1]
    dy[..., :-1, :] = z[..., 1:, :] - z[..., :-1, :]
    return dx, dy


def check_norm(norm: Any) -> int:
    """``norm`` as an int if it is 1 (anisotropic TV) or 2 (isotropic TV), else a ValueError."""
    if isinstance(norm, bool) or norm not in (1, 2):
        raise ValueError(f"norm must be 1 (anisotropic TV) or 2 (isotropic TV), got {norm!r}")
    return int(norm)


def total_variation(x: Tensor, norm: int = 2) -> Tensor:
    """Total variation of each image, summed over channels: (N, C, H, W) -> (N,).

    ``norm=1``: anisotropic, sum of ``|dx| + |dy|``; ``norm=2``: isotropic, sum of
    ``sqrt(dx^2 + dy^2)`` per pixel and channel (forward differences, Neumann boundary).
    """
    check_images(x)
    dx, dy = _forward_differences(x)
    per_pixel = dx.abs() + dy.abs() if check_norm(norm) == 1 else torch.hypot(dx, dy)
    return per_pixel.flatten(1).sum(1)


def tvm_keep_mask(
    n: int,
    h: int,
    w: int,
    keep: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bernoulli(``keep``) pixel mask, (N, 1, H, W) float in {0, 1}: 1 = pixel kept, shared by all channels.

    Drawn on the generator's device (a CPU generator gives the same mask on every device), then moved
    to ``device``.
    """
    for name, v in (("n", n), ("h", h), ("w", w)):
        check_int(name, v, 1, 2**31 - 1)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise ValueError(f"keep (fraction of pixels kept) must be in (0, 1], got {keep!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, 1, h, w, generator=generator, device=gen_device)
    return (u < keep).to(torch.float32).to(device if device is not None else gen_device)


def _fill_dropped(x: Tensor, m: Tensor) -> Tensor:
    """Start point of the solver from the kept pixels only: kept pixels as they are, each dropped pixel
    the mean of the kept pixels in its 3x3 neighbourhood (normalized convolution), or of its image and
    channel when it has none (0.5 for an image with no kept pixel). x: (N, C, H, W), m: (N, C, H, W)."""
    n, c, h, w = x.shape
    box = torch.ones(1, 1, 3, 3, dtype=x.dtype, device=x.device)
    num = F.conv2d((x * m).reshape(n * c, 1, h, w), box, padding=1).reshape(n, c, h, w)
    den = F.conv2d(m.reshape(n * c, 1, h, w), box, padding=1).reshape(n, c, h, w)
    kept = m.sum((2, 3), keepdim=True)  # (N, C, 1, 1)
    mean = torch.where(
        kept > 0, (x * m).sum((2, 3), keepdim=True) / kept.clamp_min(1.0), torch.full_like(kept, 0.5)
    )
    local = torch.where(den > 0, num / den.clamp_min(1e-12), mean)
    return torch.where(m > 0, x, local)


@torch.no_grad()
def tv_minimize(x: Tensor, keep_mask: Tensor, lam: float, norm: int = 2, iters: int = 100) -> Tensor:
    """Total-variation reconstruction of ``x`` from its kept pixels (Guo et al., ICLR 2018), batched.

    Approximately solves, for every image and channel independently::

        min_{z in [0, 1]}  sum_ij m_ij (z_ij - x_ij)^2  +  lam * TV_norm(z)

    with ``m`` the keep mask (1 = kept) and ``TV_norm`` as in :func:`total_variation`, by ``iters``
    iterations of the Chambolle-Pock primal-dual algorithm (Chambolle & Pock, JMIV 2011; steps
    tau = sigma = 1/sqrt(8), theta = 1; the [0, 1] box is part of the primal proximal step). The
    start point is built from the kept pixels alone (:func:`_fill_dropped`), so the output does not
    depend on the values of dropped pixels. ``lam = 0``: every ``z`` matching the kept pixels is a
    minimizer and the start point is returned.

    Args:
        x: (N, C, H, W) float images in [0, 1].
        keep_mask: (N, 1, H, W) or (N, C, H, W), values in {0, 1} (bool allowed).
        lam: TV weight (>= 0), in intensity units ([0, 1] pixels), so that lam * TV is a squared intensity
            like the fidelity term.
        norm: 1 (anisotropic TV) or 2 (isotropic TV).
        iters: solver iterations (>= 1).

    Returns:
        (N, C, H, W) in [0, 1], dtype of ``x`` (computed in float32, or float64 for float64 input).
        Not differentiable: attacks go through BPDA (:meth:`InputTransformDefense.bpda`).
    """
    check_images(x)
    if (
        not isinstance(keep_mask, Tensor)
        or keep_mask.ndim != 4
        or keep_mask.shape[0] != x.shape[0]
        or keep_mask.shape[2:] != x.shape[2:]
        or keep_mask.shape[1] not in (1, x.shape[1])
    ):
        raise ValueError(
            f"keep_mask must be (N, 1, H, W) or (N, C, H, W) for x of shape {tuple(x.shape)}, "
            f"got {getattr(keep_mask, 'shape', type(keep_mask))}"
        )
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam (TV weight) must be a finite number >= 0, got {lam!r}")
    norm = check_norm(norm)
    iters = check_int("iters", iters, 1, 100_000)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(work)
    m = keep_mask.to(device=x.device, dtype=work).expand_as(xf).contiguous()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("keep_mask must contain only 0 and 1")
    z = _fill_dropped(xf, m).clamp_(0.0, 1.0)
    if lam == 0:
        return z.to(x.dtype)
    tau = sigma = 1.0 / math.sqrt(8.0)  # tau * sigma * ||grad||^2 <= 1, as ||grad||^2 <= 8
    wgt = (2.0 * tau) * m  # prox of tau * m (z - x)^2: (v + wgt x) / (1 + wgt)
    wx = wgt * xf
    inv = 1.0 / (1.0 + wgt)
    z_bar = z.clone()
    px, py = torch.zeros_like(xf), torch.zeros_like(xf)  # dual variables, one per difference
    for _ in range(iters):
        px[..., :, :-1].add_(z_bar[..., :, 1:] - z_bar[..., :, :-1], alpha=sigma)
        py[..., :-1, :].add_(z_bar[..., 1:, :] - z_bar[..., :-1, :], alpha=sigma)
        if norm == 1:  # project onto |p| <= lam, componentwise
            px.clamp_(-lam, lam)
            py.clamp_(-lam, lam)
        else:  # project onto |(px, py)| <= lam, per pixel
            scale = torch.hypot(px, py).div_(lam).clamp_(min=1.0)
            px.div_(scale)
            py.div_(scale)
        div = px + py  # divergence = -(adjoint of the forward differences)
        div[..., :, 1:] -= px[..., :, :-1]
        div[..., 1:, :] -= py[..., :-1, :]
        z_new = div.mul_(tau).add_(z).add_(wx).mul_(inv).clamp_(0.0, 1.0)
        torch.sub(2.0 * z_new, z, out=z_bar)
        z = z_new
    return z.to(x.dtype)


__all__ = ["check_images", "check_int", "check_norm", "total_variation", "tv_minimize", "tvm_keep_mask"]
