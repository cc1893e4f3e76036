"""Input-transformation baseline defenses: ``classifier(transform(x))`` for comparison with PSSR.

Four classic pre-processing defenses, each wrapping a classifier as an ``nn.Module``:

==============  ===========================================================  ========================
name            transform                                                    reference
==============  ===========================================================  ========================
``jpeg``        JPEG compression at ``quality`` (ART ``JpegCompression``)     Dziugaite et al. 2016;
                                                                             Guo et al., ICLR 2018
``bit-depth``   colour bit-depth reduction to ``bits`` bits per channel       Xu et al., NDSS 2018
                (ART ``FeatureSqueezing``)                                   (feature squeezing)
``median``      median smoothing in a ``window`` x ``window`` window          Xu et al., NDSS 2018
                (ART ``SpatialSmoothing``)
``tvm``         total-variation minimization of a random pixel subset         Guo et al., ICLR 2018
                (ART ``TotalVarMin``); **randomized**
``identity``    none: a control that must score exactly as no defense        --
==============  ===========================================================  ========================

All transforms come from the Adversarial Robustness Toolbox (ART, ``art.defences.preprocessor``),
which runs them in numpy. We call ART on a CPU copy of the batch and move the result back to the
input's device and dtype. None was unusable, but two needed care:

* ``TotalVarMin`` expects channels-last images and draws its Bernoulli pixel mask from numpy's
  *global* random state; we transpose around it and run it under a private numpy seed drawn from the
  defense's own generator (the caller's global numpy state is restored afterwards), so the
  defense is random from call to call -- as in Guo et al. -- yet reproducible through
  :meth:`InputTransformDefense.reseed`.
* ``JpegCompression`` converts to ``uint8`` by truncation (``astype``), not rounding; we keep ART's
  behaviour rather than patching it.

Threat model and gradients. The transforms are opaque to autograd, so ``forward`` connects the
purified image to ``x`` with a zero gradient (``purified + 0 * x``): a plain gradient attack
through the defense sees an exactly zero input gradient. That is gradient masking, not
robustness -- :mod:`pssr.evaluation.checks` flags it and the adaptive attacks break it through
:meth:`InputTransformDefense.bpda`, the same forward pass with a straight-through (identity)
backward for the transform (BPDA, Athalye et al., ICML 2018), and EOT for ``tvm``.

Shapes: ``purify`` maps (N, C, H, W) float in [0, 1] to the same shape, dtype and device, in [0, 1];
``forward`` returns the classifier's logits (N, K).

Example::

    defense = create_baseline("jpeg", clf, quality=75)
    logits = defense(x)                 # clf(jpeg(x))
    x_pure = defense.purify(x)          # (N, C, H, W) in [0, 1]
    bpda_model = defense.bpda()         # for BPDA attacks: same outputs, identity backward
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pssr.registry import Registry

BASELINES: Registry[nn.Module] = Registry("baseline defense")


def _straight_through(x: Tensor, purified: Tensor) -> Tensor:
    """Value of ``purified`` with the gradient of the identity w.r.t. ``x`` (BPDA's approximation).

    The attacks package's BPDA helper is used when it offers one; else the usual detach trick.
    """
    try:
        from pssr.attacks.adaptive import straight_through  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        return x + (purified - x).detach()
    return straight_through(x, purified)


class InputTransformDefense(nn.Module):
    """``classifier(transform(x))`` with a numpy transform; subclasses implement :meth:`_transform`.

    Attributes:
        classifier: the wrapped classifier (the gray-box attacker's target in the paper protocol).
        randomized: True when two calls on the same input may differ (EOT is then needed).
    """

    name: str = "transform"
    randomized: bool = False

    def __init__(self, classifier: nn.Module, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise ValueError(f"classifier must be an nn.Module returning logits, got {type(classifier).__name__}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.classifier = classifier
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Reset the transform's random stream (the evaluation harness calls this per batch)."""
        self._rng = np.random.default_rng(seed)

    def _transform(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """(N, C, H, W) float32 in [0, 1] -> same shape."""
        raise NotImplementedError

    @torch.no_grad()
    def purify(self, x: Tensor) -> Tensor:
        """The transformed image: (N, C, H, W) in [0, 1], same dtype and device as ``x``."""
        if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"x must be a float (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        arr = x.detach().to("cpu", torch.float32).numpy()
        out = np.asarray(self._transform(arr), dtype=np.float32)
        if out.shape != arr.shape:  # a guard against ART layout changes
            raise RuntimeError(f"{self.name}: transform changed the shape {arr.shape} -> {out.shape}")
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device, x.dtype).clamp_(0.0, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        # The transform is opaque to autograd: keep x in the graph with an exactly zero gradient so
        # gradient attacks run (and see the masking) instead of failing on a disconnected graph.
        purified = self.purify(x)
        return self.classifier(purified + 0.0 * x if x.requires_grad else purified)

    def bpda(self) -> nn.Module:
        """The same forward pass with a straight-through backward (for BPDA attacks)."""
        return _BPDAView(self)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")


class _BPDAView(nn.Module):
    """Forward = ``defense(x)``; backward treats the transform as the identity."""

    def __init__(self, defense: InputTransformDefense) -> None:
        super().__init__()
        self.defense = defense
        self.classifier = defense.classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(_straight_through(x, self.defense.purify(x)))


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    return value


class JPEGDefense(InputTransformDefense):
    """JPEG compression at ``quality`` (1 = strongest compression, 95 = mildest), via ART."""

    name = "jpeg"

    def __init__(self, classifier: nn.Module, quality: int = 75, seed: int = 0) -> None:
        super().__init__(classifier, seed)
        self.quality = _check_int("quality", quality, 1, 95)
        from art.defences.preprocessor import JpegCompression

        self._art = JpegCompression(clip_values=(0.0, 1.0), quality=self.quality, channels_first=True)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return self._art(x)[0]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "quality": self.quality}


class BitDepthDefense(InputTransformDefense):
    """Reduce every channel to ``bits`` bits (2**bits grey levels), via ART's ``FeatureSqueezing``."""

    name = "bit-depth"

    def __init__(self, classifier: nn.Module, bits: int = 4, seed: int = 0) -> None:
        super().__init__(classifier, seed)
        self.bits = _check_int("bits", bits, 1, 16)
        from art.defences.preprocessor import FeatureSqueezing

        self._art = FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=self.bits)

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return self._art(x)[0]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "bits": self.bits}


class MedianDefense(InputTransformDefense):
    """Median filter over a ``window`` x ``window`` neighbourhood per channel (reflect padding), via ART."""

    name = "median"

    def __init__(self, classifier: nn.Module, window: int = 3, seed: int = 0) -> None:
        super().__init__(classifier, seed)
        self.window = _check_int("window", window, 2, 15)
        from art.defences.preprocessor import SpatialSmoothing

        self._art = SpatialSmoothing(window_size=self.window, channels_first=True, clip_values=(0.0, 1.0))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return self._art(x)[0]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "window": self.window}


class TVMDefense(InputTransformDefense):
    """Total-variation minimization (Guo et al. 2018) via ART's ``TotalVarMin``; randomized.

    Each call keeps a random ``keep`` fraction of pixels (Bernoulli mask) as the fidelity term and
    solves ``min_z ||m * (z - x)||_2 + lam * TV_p(z)`` with ``iters`` L-BFGS-B iterations per
    channel. The mask is redrawn on every call, from the defense's own seeded stream.
    """

    name = "tvm"
    randomized = True

    def __init__(
        self, classifier: nn.Module, keep: float = 0.3, lam: float = 0.5, norm: int = 2, iters: int = 10, seed: int = 0
    ) -> None:
        super().__init__(classifier, seed)
        if not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
            raise ValueError(f"keep (fraction of pixels kept) must be in (0, 1], got {keep!r}")
        if not isinstance(lam, (int, float)) or lam < 0:
            raise ValueError(f"lam (TV weight) must be >= 0, got {lam!r}")
        self.keep, self.lam = float(keep), float(lam)
        self.norm = _check_int("norm", norm, 1, 2)
        self.iters = _check_int("iters", iters, 1, 1000)
        from art.defences.preprocessor import TotalVarMin

        self._art = TotalVarMin(
            prob=self.keep, norm=self.norm, lamb=self.lam, max_iter=self.iters, clip_values=(0.0, 1.0)
        )

    def _transform(self, x: np.ndarray) -> np.ndarray:
        # ART draws its mask from numpy's global stream: run it under our own seed, then restore.
        saved = np.random.get_state()
        np.random.seed(int(self._rng.integers(2**32 - 1)))
        try:
            out = self._art(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))[0]  # NHWC for ART
        finally:
            np.random.set_state(saved)
        return out.transpose(0, 3, 1, 2)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "keep": self.keep, "lam": self.lam, "norm": self.norm, "iters": self.iters,
                "seed": self.seed}


class IdentityDefense(InputTransformDefense):
    """No transform: a control that must evaluate exactly like the bare classifier."""

    name = "identity"

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


for _cls in (JPEGDefense, BitDepthDefense, MedianDefense, TVMDefense, IdentityDefense):
    BASELINES.register(_cls.name)(_cls)


def create_baseline(name: str, classifier: nn.Module, **kwargs: Any) -> InputTransformDefense:
    """Build baseline ``name`` (see :func:`list_baselines`) around ``classifier``."""
    return BASELINES.create(name, classifier=classifier, **kwargs)  # type: ignore[return-value]


def list_baselines(pattern: str = "*") -> list[str]:
    return BASELINES.list(pattern)


__all__ = [
    "BASELINES",
    "BitDepthDefense",
    "IdentityDefense",
    "InputTransformDefense",
    "JPEGDefense",
    "MedianDefense",
    "TVMDefense",
    "create_baseline",
    "list_baselines",
]
