"""Randomized smoothing: PREDICT and CERTIFY of Cohen, Rosenfeld and Kolter (ICML 2019).

"Certified Adversarial Robustness via Randomized Smoothing" (arXiv 1902.02918). Any base model
``f`` (an ``nn.Module`` mapping images to logits; its top class is the base prediction) defines the
smoothed classifier

    g(x) = argmax_c  P_{delta ~ N(0, sigma^2 I)} [ f(x + delta) = c ].

If the top class has probability at least ``p_A > 1/2``, ``g`` is constant on the L2 ball of radius
``sigma * Phi^-1(p_A)`` around ``x`` (Cohen et al., Theorem 1, the case p_B = 1 - p_A). Monte Carlo
gives the certificate with probability at least ``1 - alpha`` over the noise:

* CERTIFY: the top class of ``n0`` noisy samples is the guess ``c_A``; a second, independent draw of
  ``n`` samples counts ``k`` hits of ``c_A``; the one-sided ``(1 - alpha)`` Clopper-Pearson lower
  bound ``p_lower`` of ``k / n`` gives the radius ``sigma * Phi^-1(p_lower)``, or ABSTAIN when
  ``p_lower <= 1/2``.
* PREDICT: the two largest counts ``k_A, k_B`` of ``n`` samples; ABSTAIN unless a two-sided binomial
  test of ``k_A`` out of ``k_A + k_B`` at ``p = 1/2`` rejects at level ``alpha``.

The noise is added to the raw input and **not clipped**: the base model sees ``x + delta`` with
pixels outside [0, 1] (so a base model that clips is still valid: clipping is part of ``f``).
Noise is drawn in batches from an explicit ``torch.Generator`` on the model's device, so a
certificate is a function of (model, x, seed).

Shapes: ``x`` is one image (C, H, W); noisy batches are (B, C, H, W); counts are (K,) int64.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pssr.utils import eval_mode, model_device

ABSTAIN = -1


def _check_positive_int(name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def check_sigma(sigma: object) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (0 < float(sigma) < math.inf):
        raise ValueError(f"sigma must be a positive finite number (noise std in pixel units), got {sigma!r}")
    return float(sigma)


def check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0 < float(alpha) < 0.5):
        raise ValueError(f"alpha must be in (0, 0.5) (the failure probability), got {alpha!r}")
    return float(alpha)


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound on a binomial proportion from ``k`` of ``n``.

    ``Beta(alpha; k, n - k + 1)`` quantile (Clopper and Pearson 1934); 0 for ``k == 0``. The same
    bound as Cohen et al.'s ``proportion_confint(k, n, alpha=2 * alpha, method="beta")[0]``.
    """
    from scipy.stats import beta

    if not (0 <= k <= n) or n < 1:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if k == 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def binomial_p_value(k: int, n: int) -> float:
    """Two-sided exact binomial test of ``k`` successes in ``n`` trials against ``p = 1/2``."""
    from scipy.stats import binomtest

    return 1.0 if n == 0 else float(binomtest(k, n, p=0.5).pvalue)


@dataclass(frozen=True)
class Certificate:
    """One example's CERTIFY output. ``prediction`` is ``ABSTAIN`` (-1) when ``abstained``."""

    prediction: int
    radius: float  # L2, pixel units; 0.0 when abstained
    p_lower: float  # Clopper-Pearson lower bound on the top class's probability
    count: int  # hits of the guessed class among the n estimation samples
    guess: int  # top class of the n0 selection samples
    n0: int
    n: int
    seconds: float

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN


class SmoothedClassifier:
    """``g`` of Cohen et al. (2019) around a base model (see the module docstring).

    Args:
        base: any ``nn.Module`` returning logits (N, K); run in eval mode (the caller's modes are
            restored after each call) under ``torch.no_grad``.
        sigma: noise standard deviation, pixel units (images in [0, 1]).
        batch_size: noisy samples per forward pass.

    Example::

        g = SmoothedClassifier(classifier, sigma=0.5)
        cert = g.certify(x, n0=100, n=10_000, alpha=0.001, generator=torch.Generator().manual_seed(0))
        cert.prediction, cert.radius
    """

    def __init__(self, base: nn.Module, sigma: float, batch_size: int = 1000) -> None:
        if not isinstance(base, nn.Module):
            raise ValueError(f"base must be an nn.Module returning logits, got {type(base).__name__}")
        self.base = base
        self.sigma = check_sigma(sigma)
        self.batch_size = _check_positive_int("batch_size", batch_size)

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the base model's device, seeded (noise is drawn where the model runs)."""
        return torch.Generator(device=model_device(self.base)).manual_seed(int(seed))

    @torch.no_grad()
    def sample_counts(self, x: Tensor, num: int, generator: torch.Generator) -> Tensor:
        """How often each class is the base model's top class over ``num`` noisy copies of ``x``.

        ``x``: (C, H, W) (or (1, C, H, W)). Returns (K,) int64 on the CPU.
        """
        if x.ndim == 4 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 3:
            raise ValueError(f"x must be one image (C, H, W), got shape {tuple(x.shape)}")
        _check_positive_int("num", num)
        dev = model_device(self.base)
        x = x.to(dev, torch.float32)
        counts: Tensor | None = None
        with eval_mode(self.base):
            left = num
            while left > 0:
                b = min(self.batch_size, left)
                noise = torch.randn((b, *x.shape), generator=generator, device=dev)  # (B, C, H, W)
                logits = self.base(noise.mul_(self.sigma).add_(x))  # (B, K)
                pred = logits.argmax(1)
                c = torch.bincount(pred, minlength=logits.shape[1])
                counts = c if counts is None else counts + c
                left -= b
        assert counts is not None
        return counts.cpu()

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, generator: torch.Generator) -> Certificate:
        """CERTIFY (Cohen et al., Algorithm 'CERTIFY'): guess from ``n0`` samples, bound from ``n`` more."""
        _check_positive_int("n0", n0)
        _check_positive_int("n", n)
        alpha = check_alpha(alpha)
        t0 = time.perf_counter()
        guess = int(self.sample_counts(x, n0, generator).argmax())
        counts = self.sample_counts(x, n, generator)
        k = int(counts[guess]) if guess < len(counts) else 0
        p = lower_confidence_bound(k, n, alpha)
        if p > 0.5:
            from scipy.stats import norm

            pred, radius = guess, float(self.sigma * norm.ppf(p))
        else:
            pred, radius = ABSTAIN, 0.0
        return Certificate(pred, radius, p, k, guess, n0, n, time.perf_counter() - t0)

    def predict(self, x: Tensor, n: int, alpha: float, generator: torch.Generator) -> int:
        """PREDICT (Cohen et al.): the top class of ``n`` samples, or ``ABSTAIN`` (-1) when a binomial
        test cannot tell it from the runner-up at level ``alpha``."""
        alpha = check_alpha(alpha)
        counts = self.sample_counts(x, n, generator)
        top2 = counts.topk(min(2, len(counts)))
        k_a = int(top2.values[0])
        k_b = int(top2.values[1]) if len(top2.values) > 1 else 0
        if binomial_p_value(k_a, k_a + k_b) > alpha:
            return ABSTAIN
        return int(top2.indices[0])


def certified_accuracy(radii: Tensor, correct: Tensor, r: float) -> float:
    """Share of examples certified correct at L2 radius ``r``: correct and with radius >= ``r``.

    ``radii``, ``correct``: (N,); an abstention counts as incorrect. At ``r = 0`` this is the
    smoothed classifier's accuracy (CERTIFY's, not counting abstentions as right)."""
    if len(radii) == 0:
        return float("nan")
    return float(((radii >= r) & correct.bool()).float().mean())
