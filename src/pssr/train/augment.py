"""Batched data augmentation as plain tensor ops (no torchvision, no per-image Python loop).

Every augmentation is ``fn(x, gen, padding) -> x'`` with ``x`` float (N, C, H, W) in [0, 1] on any
device; its random draws come from the CPU ``torch.Generator`` ``gen`` (so a run is reproducible and
resumable whatever the device), and the output has the input's shape, dtype and device.

- ``crop``: random translation by up to ``padding`` pixels, i.e. zero-pad by ``padding`` on each side
  and cut a random H x W window (the standard CIFAR augmentation of He et al. 2016).
- ``flip``: horizontal flip with probability 1/2.
- ``crop-flip``: both. ``none``: identity.
- ``gaussian-<sigma>`` (sigma in :data:`GAUSSIAN_SIGMAS`): additive ``N(0, sigma^2 I)`` noise, not
  clipped, on every image: the training of Cohen, Rosenfeld and Kolter (ICML 2019, arXiv 1902.02918)
  that makes a base classifier fit for randomized smoothing at that sigma (``pssr.certify``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pssr.registry import Registry

AUGMENTATIONS: Registry[Tensor] = Registry("augmentation")


def random_crop(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    """Random ``padding``-pixel translations with zero fill, one offset pair per image."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    n, c, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)  # (N, 1, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)  # (N, 1, 1, W)
    bidx = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    cidx = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return xp[bidx, cidx, rows, cols]  # (N, C, H, W)


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


@AUGMENTATIONS.register("none")
def _none(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    return x


@AUGMENTATIONS.register("crop")
def _crop(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    return random_crop(x, gen, padding)


@AUGMENTATIONS.register("flip")
def _flip(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    return random_flip(x, gen)


@AUGMENTATIONS.register("crop-flip")
def _crop_flip(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    return random_flip(random_crop(x, gen, padding), gen)


def augment(name: str, x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
    """Apply the registered augmentation ``name`` to a batch."""
    return AUGMENTATIONS.get(name)(x, gen, padding)


# Noise levels of the Gaussian augmentation: Cohen et al.'s grid (0.12, 0.25, 0.5, 1.0) and 0.75.
GAUSSIAN_SIGMAS = (0.12, 0.25, 0.5, 0.75, 1.0)


def gaussian_noise(x: Tensor, gen: torch.Generator, sigma: float) -> Tensor:
    """``x + sigma * N(0, I)``, unclipped (smoothing certifies the classifier on unclipped noise)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    noise = torch.randn(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)  # (N, C, H, W)
    return x + sigma * noise


def _register_gaussian(sigma: float) -> None:
    @AUGMENTATIONS.register(f"gaussian-{sigma}")
    def _gaussian(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
        return gaussian_noise(x, gen, sigma)

    # Cohen et al. (2019) train their CIFAR-10 base classifiers with the usual crop and flip as well
    @AUGMENTATIONS.register(f"crop-flip-gaussian-{sigma}")
    def _crop_flip_gaussian(x: Tensor, gen: torch.Generator, padding: int = 4) -> Tensor:
        return gaussian_noise(random_flip(random_crop(x, gen, padding), gen), gen, sigma)


for _s in GAUSSIAN_SIGMAS:
    _register_gaussian(_s)


def gaussian_sigma(name: str) -> float | None:
    """The noise level of a ``gaussian-<sigma>`` augmentation name, else None."""
    if isinstance(name, str) and "gaussian-" in name and name in AUGMENTATIONS:
        return float(name.rsplit("-", 1)[1])
    return None
