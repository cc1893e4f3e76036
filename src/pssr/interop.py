"""Other attack libraries on pssr defenses: an ART estimator with adaptive gradients, torchattacks.

A defense here is an ``nn.Module`` mapping (N, C, H, W) images in [0, 1] to logits (a
:class:`~pssr.defense.pssr.PSSR`, a baseline of :mod:`pssr.defense.baselines`, or any module). Other
libraries can attack it as it is, but a defense with a non-differentiable or random step hands them
useless gradients (Athalye, Carlini & Wagner, ICML 2018, https://arxiv.org/abs/1802.00420). The
adaptive *views* of :mod:`pssr.attacks.adaptive` fix that; this module hands them over:

* :func:`gradient_view` -- the module whose gradients an attack should follow: ``"exact"`` (the
  defense itself), ``"bpda"`` (``defense.bpda()``: same forward, straight-through backward),
  ``"eot"`` (:class:`~pssr.attacks.adaptive.EOT` over the BPDA view: ``k`` random passes averaged),
  or ``"auto"`` (EOT for a randomized defense, BPDA when the exact input gradient vanishes and the
  defense offers ``bpda()``, else exact).
* :func:`art_estimator` -- an ART ``PyTorchClassifier`` (adversarial-robustness-toolbox, Nicolae
  et al. 2018, https://arxiv.org/abs/1807.01069) whose ``predict`` runs the real defense and whose
  gradients (``loss_gradient``, ``class_gradient``) come from the view, so that ART's attacks run
  on the whole defense and judge success (their restarts, early stops) on the defended model.
* torchattacks (Kim 2020, https://arxiv.org/abs/2010.01950) takes any ``nn.Module`` on [0, 1]
  images: give it the defense (exact gradients) or ``gradient_view(defense)``, and judge the result
  on ``defense(x_adv)`` (docs/interop.md).

Example::

    est = pssr.interop.art_estimator(defense)            # views chosen as above
    from art.attacks.evasion import ProjectedGradientDescent
    x_adv = ProjectedGradientDescent(est, eps=0.1, eps_step=0.01, max_iter=40).generate(x.numpy())
    acc = (defense(torch.from_numpy(x_adv)).argmax(1) == y).float().mean()
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.attacks.adaptive import EOT, bpda_view
from pssr.utils import eval_mode, model_device

log = logging.getLogger(__name__)

GRADIENTS = ("auto", "exact", "bpda", "eot")


class GradientSwitch(nn.Module):
    """The defense for predictions, its gradient view for gradients.

    ``forward(x)`` runs ``view(x)`` when autograd records a graph through ``x`` (``x.requires_grad``
    under grad mode: what ART's ``loss_gradient`` / ``class_gradient`` do), else ``defense(x)``
    (ART's ``predict`` runs under ``torch.no_grad``). The BPDA view's forward equals the defense's;
    the EOT view returns the mean of ``k`` passes' logits, used only for its gradient.

    Shapes: (N, C, H, W) in [0, 1] -> (N, K).
    """

    def __init__(self, defense: nn.Module, view: nn.Module, gradient: str) -> None:
        super().__init__()
        self.defense, self.view, self.gradient = defense, view, gradient

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad and self.view is not self.defense:
            return self.view(x)
        return self.defense(x)

    def extra_repr(self) -> str:
        return f"gradient={self.gradient!r}"


def _num_classes(defense: nn.Module, input_shape: tuple[int, ...]) -> int:
    dev = model_device(defense)
    with (
        eval_mode(defense),
        torch.no_grad(),
        torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []),
    ):
        return int(defense(torch.full((1, *input_shape), 0.5, device=dev)).shape[1])


def _probe(defense: nn.Module, input_shape: tuple[int, ...], seed: int) -> bool:
    """Whether the exact input gradient is zero or non-finite on 8 seeded random images (the
    harness's zero-gradient check, in miniature)."""
    dev = model_device(defense)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((8, *input_shape), generator=gen).to(dev).requires_grad_(True)
    with eval_mode(defense), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        out = defense(x)
        if not out.requires_grad:
            return True
        (g,) = torch.autograd.grad(F.cross_entropy(out, out.argmax(1)), x, allow_unused=True)
    return g is None or not bool(torch.isfinite(g).all()) or bool((g == 0).all())


def _input_shape(defense: nn.Module, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    shape = input_shape if input_shape is not None else getattr(defense, "image_shape", None)
    if shape is None:
        raise ValueError(
            f"input_shape is needed for a {type(defense).__name__} (it has no image_shape): pass e.g. "
            "input_shape=(1, 28, 28) as (C, H, W)"
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {shape}")
    return shape


def gradient_view(
    defense: nn.Module,
    gradient: str = "auto",
    *,
    input_shape: tuple[int, ...] | None = None,
    eot_samples: int = 10,
    seed: int = 0,
) -> nn.Module:
    """The module whose input gradients an adaptive attack on ``defense`` should follow.

    Args:
        defense: images in [0, 1] (N, C, H, W) -> logits; may offer ``bpda()`` and ``randomized``.
        gradient: "exact", "bpda", "eot" or "auto" (see the module docstring). "auto" runs one
            probe (forward + backward on 8 random images) unless the defense is randomized.
        input_shape: (C, H, W) for the probe; default ``defense.image_shape``.
        eot_samples: EOT's passes per gradient (k).
        seed: EOT's seed and the probe's.

    The view is returned as is (``defense`` itself for "exact"); its chosen kind is in the
    ``pssr_gradient`` attribute of :func:`art_estimator`'s result.
    """
    return _choose(defense, gradient, input_shape, eot_samples, seed)[0]


def _choose(
    defense: nn.Module, gradient: str, input_shape: tuple[int, ...] | None, eot_samples: int, seed: int
) -> tuple[nn.Module, str]:
    if not isinstance(defense, nn.Module):
        raise ValueError(f"defense must be an nn.Module returning logits, got {type(defense).__name__}")
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient={gradient!r}; choose from {GRADIENTS}")
    has_bpda = callable(getattr(defense, "bpda", None))
    if gradient == "auto":
        if bool(getattr(defense, "randomized", False)):
            gradient = "eot"
        else:
            masked = _probe(defense, _input_shape(defense, input_shape), seed)
            gradient = "bpda" if masked and has_bpda else "exact"
            if masked and not has_bpda:
                log.warning(
                    "the defense's input gradient is zero or non-finite and it offers no bpda() view: "
                    "gradient attacks will stall; give it a bpda() or use a gradient-free attack"
                )
    if gradient == "exact":
        return defense, "exact"
    if gradient == "bpda" and not has_bpda:
        raise ValueError(
            f"gradient='bpda' needs a defense with a bpda() view; {type(defense).__name__} has none"
        )
    view = bpda_view(defense)
    if gradient == "eot":
        return EOT(view, k=eot_samples, seed=seed), "eot"
    return view, "bpda"


def art_estimator(
    defense: nn.Module,
    input_shape: tuple[int, ...] | None = None,
    nb_classes: int | None = None,
    *,
    gradient: str = "auto",
    eot_samples: int = 10,
    seed: int = 0,
    loss: nn.Module | None = None,
) -> Any:
    """An ART ``PyTorchClassifier`` of ``defense``: predictions from the defense, gradients from its view.

    Args:
        defense: an ``nn.Module`` on (N, C, H, W) images in [0, 1] returning logits (N, K).
        input_shape: (C, H, W); default ``defense.image_shape`` (a PSSR has one).
        nb_classes: K; default: one forward pass finds it.
        gradient: "auto", "exact", "bpda" or "eot" (see :func:`gradient_view`).
        eot_samples: passes averaged per gradient for "eot".
        seed: EOT's and the probe's seed.
        loss: the loss ART differentiates (default cross-entropy on logits).

    Returns:
        ``art.estimators.classification.PyTorchClassifier`` with ``clip_values=(0, 1)``, channels
        first, on the defense's device; ``est.pssr_gradient`` says which view supplies gradients.
        Pass numpy float32 arrays in [0, 1] (N, C, H, W) to ART's attacks.
    """
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError(
            "art_estimator needs adversarial-robustness-toolbox: pip install adversarial-robustness-toolbox"
        ) from e
    shape = _input_shape(defense, input_shape)
    view, kind = _choose(defense, gradient, shape, eot_samples, seed)
    if nb_classes is None:
        nb_classes = _num_classes(defense, shape)
    if isinstance(nb_classes, bool) or not isinstance(nb_classes, int) or nb_classes < 2:
        raise ValueError(f"nb_classes must be an int >= 2, got {nb_classes!r}")
    dev = model_device(defense)
    est = PyTorchClassifier(
        model=GradientSwitch(defense, view, kind),
        loss=loss if loss is not None else nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
        channels_first=True,
        device_type="gpu" if dev.type == "cuda" else "cpu",
    )
    est.pssr_gradient = kind
    return est


__all__ = ["GRADIENTS", "GradientSwitch", "art_estimator", "gradient_view"]
