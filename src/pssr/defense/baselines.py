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
                (batched torch solver; ART ``TotalVarMin`` with
                ``impl="art"``); **randomized**
``identity``    none: a control that must score exactly as no defense        --
==============  ===========================================================  ========================

The jpeg, bit-depth and median transforms come from the Adversarial Robustness Toolbox (ART,
``art.defences.preprocessor``), which runs them in numpy: we call ART on a CPU copy of the batch and
move the result back to the input's device and dtype. ``JpegCompression`` converts to ``uint8`` by
truncation (``astype``), not rounding; we keep ART's behaviour rather than patching it.

``tvm`` runs by default on a batched torch solver (:func:`pssr.defense.tv.tv_minimize`, on the
input's device): ART's ``TotalVarMin`` solves image by image and channel by channel with scipy's
L-BFGS-B, which is too slow on a CPU for evaluation tables; it stays available as ``impl="art"``.
Both draw a fresh Bernoulli pixel mask on every call from the defense's own seeded stream, so the
defense is random from call to call -- as in Guo et al. -- yet reproducible through
:meth:`InputTransformDefense.reseed`; neither touches the global numpy or torch generators (ART
draws from numpy's global state, so it runs under a private seed that is restored afterwards).

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

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pssr.attacks.adaptive import straight_through
from pssr.defense.tv import check_images, check_int, check_norm, tv_minimize, tvm_keep_mask
from pssr.registry import Registry

BASELINES: Registry[nn.Module] = Registry("baseline defense")


class InputTransformDefense(nn.Module):
    """``classifier(transform(x))``; subclasses implement :meth:`_transform` (numpy) or :meth:`_purify` (torch).

    Attributes:
        classifier: the wrapped classifier (the gray-box attacker's target in the paper protocol).
        randomized: True when two calls on the same input may differ (EOT is then needed).
    """

    name: str = "transform"
    randomized: bool = False

    def __init__(self, classifier: nn.Module, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise ValueError(
                f"classifier must be an nn.Module returning logits, got {type(classifier).__name__}"
            )
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
        check_images(x)
        return self._purify(x.detach())

    def _purify(self, x: Tensor) -> Tensor:
        """Numpy round trip through :meth:`_transform`; torch-native transforms override this."""
        arr = x.to("cpu", torch.float32).numpy()
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
        return self.classifier(straight_through(x, self.defense.purify(x)))


class JPEGDefense(InputTransformDefense):
    """JPEG compression at ``quality`` (1 = strongest compression, 95 = mildest), via ART."""

    name = "jpeg"

    def __init__(self, classifier: nn.Module, quality: int = 75, seed: int = 0) -> None:
        super().__init__(classifier, seed)
        self.quality = check_int("quality", quality, 1, 95)
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
        self.bits = check_int("bits", bits, 1, 16)
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
        self.window = check_int("window", window, 2, 15)
        from art.defences.preprocessor import SpatialSmoothing

        self._art = SpatialSmoothing(window_size=self.window, channels_first=True, clip_values=(0.0, 1.0))

    def _transform(self, x: np.ndarray) -> np.ndarray:
        return self._art(x)[0]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "window": self.window}


# ----------------------------------------------------------------------------- total-variation minimization
TVM_IMPLS = ("torch", "art")
# Defaults per implementation (None in TVMDefense means "this table"). torch: the pixel drop rate
# (0.5) and TV weight (0.03) of Guo et al.'s released code (their weight is for their own solver, so
# its scale here is indicative), with 100 primal-dual iterations (energy within 0.4% of a 3000-iteration
# run on 28x28 MNIST digits). art: ART's own TotalVarMin defaults. The two ``lam`` are not on one
# scale: ART's fidelity term is the unsquared L2 norm of the residual, and its 10 L-BFGS-B iterations
# start from the full input and stop far from the minimum.
TVM_DEFAULTS: dict[str, dict[str, float | int]] = {
    "torch": {"keep": 0.5, "lam": 0.03, "norm": 2, "iters": 100},
    "art": {"keep": 0.3, "lam": 0.5, "norm": 2, "iters": 10},
}


class TVMDefense(InputTransformDefense):
    """Total-variation minimization (Guo et al., ICLR 2018, https://arxiv.org/abs/1711.00117); randomized.

    Each call keeps a random ``keep`` fraction of the pixels (Bernoulli mask per pixel, shared by the
    channels, redrawn on every call from the defense's own seeded stream) and reconstructs the image
    whose total variation is smallest for its fidelity to the kept pixels. (Guo et al. and ART draw
    the mask per pixel *and* channel; on gray images the two are the same.)

    ``impl="torch"`` (default): :func:`~pssr.defense.tv.tv_minimize`, batched on the input's device, objective
    ``sum m (z - x)^2 + lam * TV_norm(z)`` with ``iters`` primal-dual iterations; ``norm`` 1 is
    anisotropic, 2 isotropic TV.

    ``impl="art"``: ART's ``TotalVarMin`` (``prob=keep, lamb=lam, norm, max_iter=iters``), image by
    image in scipy on the CPU; objective ``||m (z - x)||_2 + lam * TV_norm(z)`` with ART's TV_p (the
    p-norm of each whole row / column difference), a mask per pixel *and channel*, and ``iters``
    L-BFGS-B iterations started from ``x`` itself.

    Arguments left as None take the implementation's defaults (:data:`TVM_DEFAULTS`); ``lam`` is not
    on the same scale in the two.

    Args:
        classifier: images in [0, 1] -> logits.
        keep: fraction of pixels kept, in (0, 1] (ART's ``prob``).
        lam: TV weight, >= 0 (ART's ``lamb``).
        norm: 1 or 2.
        iters: solver iterations (ART's ``max_iter``).
        seed: seed of the mask stream (see :meth:`reseed`).
        impl: "torch" or "art".
    """

    name = "tvm"
    randomized = True

    def __init__(
        self,
        classifier: nn.Module,
        keep: float | None = None,
        lam: float | None = None,
        norm: int | None = None,
        iters: int | None = None,
        seed: int = 0,
        *,
        impl: str = "torch",
    ) -> None:
        super().__init__(classifier, seed)
        if impl not in TVM_IMPLS:
            raise ValueError(f"impl must be one of {TVM_IMPLS}, got {impl!r}")
        self.impl = impl
        d = TVM_DEFAULTS[impl]
        keep = d["keep"] if keep is None else keep
        lam = d["lam"] if lam is None else lam
        if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
            raise ValueError(f"keep (fraction of pixels kept) must be in (0, 1], got {keep!r}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam (TV weight) must be a finite number >= 0, got {lam!r}")
        self.keep, self.lam = float(keep), float(lam)
        self.norm = check_norm(d["norm"] if norm is None else norm)
        self.iters = check_int("iters", d["iters"] if iters is None else iters, 1, 100_000)
        self._art = None
        if impl == "art":
            from art.defences.preprocessor import TotalVarMin

            self._art = TotalVarMin(
                prob=self.keep, norm=self.norm, lamb=self.lam, max_iter=self.iters, clip_values=(0.0, 1.0)
            )

    def _purify(self, x: Tensor) -> Tensor:
        if self.impl == "art":
            return super()._purify(x)
        n, _, h, w = x.shape
        # One draw from the defense's stream per call; a CPU generator gives the same mask on any device.
        gen = torch.Generator().manual_seed(int(self._rng.integers(2**63 - 1)))
        mask = tvm_keep_mask(n, h, w, self.keep, generator=gen, device=x.device)  # (N, 1, H, W)
        return tv_minimize(x, mask, self.lam, self.norm, self.iters)

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
        return {
            "name": self.name,
            "impl": self.impl,
            "keep": self.keep,
            "lam": self.lam,
            "norm": self.norm,
            "iters": self.iters,
            "seed": self.seed,
        }


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
    "TVM_DEFAULTS",
    "TVM_IMPLS",
    "create_baseline",
    "list_baselines",
]
