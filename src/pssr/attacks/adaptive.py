"""Adaptive-attack machinery for any defense that is an ``nn.Module``: BPDA, EOT, full gradients.

A defense can defeat a naive gradient attack without being robust, by making its input gradient
useless (Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML
2018, https://arxiv.org/abs/1802.00420; Tramer et al., "On Adaptive Attacks to Adversarial Example
Defenses", NeurIPS 2020, https://arxiv.org/abs/2002.08347). Three gradient *views* of a defended
model cover the usual cases; an adaptive attack takes its gradients from a view but always judges
success on the real defended model (``model(x_adv)``), so a view can never make an attack look
stronger than it is.

* **Full gradient** -- the model itself (:func:`full_gradient_view`): exact gradients where the
  whole pipeline is differentiable (``pgd-full``).
* **BPDA** (Backward Pass Differentiable Approximation) -- the forward pass runs the real,
  possibly non-differentiable transform; the backward pass uses the gradient of a differentiable
  surrogate, by default the identity (the "straight-through" estimator, right when the transform
  is close to the identity, as purifiers are). :class:`BPDAWrapper` wraps one transform;
  :func:`straight_through` is the functional form. A defense exposes ``defense.bpda()``, an
  ``nn.Module`` with the same forward and straight-through backward; :func:`bpda_view` returns it
  when it exists, else the model itself (``pgd-bpda``).
* **EOT** (Expectation over Transformation; Athalye et al., ICML 2018,
  https://arxiv.org/abs/1707.07397) -- :class:`EOT` averages ``k`` forward passes of a randomized
  defense, so its gradient is the average of ``k`` sampled gradients (``pgd-bpda-eot``).

The registered adaptive attacks: ``pgd-full``, ``pgd-bpda``, ``pgd-bpda-eot`` (all
:class:`~pssr.attacks.pgd.PGD` with ``grad_model`` = the view) and ``autoattack-bpda``; the
gradient-free ``square`` and the ``autoattack`` versions work on any model as they are.

Example::

    atk = create_attack("pgd-bpda-eot", defense, eps=8 / 255, steps=100, eot_samples=10)
    x_adv = atk(x, y)                   # success judged on defense(x_adv)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.attacks._common import check_int
from pssr.attacks.autoattack import AutoAttackWrapper
from pssr.attacks.base import ATTACKS
from pssr.attacks.pgd import PGD

log = logging.getLogger("pssr.attacks")

Transform = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------- BPDA
class _StraightThrough(torch.autograd.Function):
    """forward: ``out`` itself, bit for bit (a copy; not ``x + (out - x).detach()``, which rounds);
    backward: the gradient passed to ``x`` unchanged (none to ``out``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, out: Tensor) -> Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        return grad_out, None


class _BPDAFunction(torch.autograd.Function):
    """forward: ``forward_fn(x)`` without a graph; backward: the vector-Jacobian product of
    ``backward_fn`` at ``x``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, forward_fn: Transform, backward_fn: Transform) -> Tensor:
        with torch.no_grad():
            out = forward_fn(x)
        ctx.backward_fn = backward_fn
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(ctx.backward_fn(xx), xx, grad_out, allow_unused=True)
        return (torch.zeros_like(x) if g is None else g), None, None


def bpda(x: Tensor, forward_fn: Transform, backward_fn: Transform | None = None) -> Tensor:
    """``forward_fn(x)`` whose gradient w.r.t. ``x`` is that of ``backward_fn`` (identity if None)."""
    if backward_fn is not None:
        return _BPDAFunction.apply(x, forward_fn, backward_fn)
    with torch.no_grad():
        out = forward_fn(x)
    if out.shape != x.shape:
        raise ValueError(
            f"BPDA with the identity backward needs a shape-preserving transform, got "
            f"{tuple(x.shape)} -> {tuple(out.shape)}; pass a backward_fn surrogate"
        )
    return _StraightThrough.apply(x, out)


def straight_through(fn_or_x: Transform | Tensor, out: Tensor | None = None) -> Any:
    """The straight-through (identity-backward) estimator, in two forms.

    * ``straight_through(fn)`` -> a function ``x -> fn(x)`` whose backward pass is the identity;
    * ``straight_through(x, out)`` -> a tensor with the value of ``out`` (computed from ``x`` by
      any means, e.g. numpy) and the gradient of the identity w.r.t. ``x``. Shapes must match.

    Both forward passes return the transform's output exactly, so a BPDA view's logits are the
    defense's own (``defense.bpda()(x) == defense(x)`` for a deterministic defense).
    """
    if isinstance(fn_or_x, Tensor):
        if out is None or out.shape != fn_or_x.shape:
            raise ValueError(
                "straight_through(x, out) needs out with the shape of x, got "
                f"{None if out is None else tuple(out.shape)} for {tuple(fn_or_x.shape)}"
            )
        return _StraightThrough.apply(fn_or_x, out)
    if not callable(fn_or_x) or out is not None:
        raise ValueError("straight_through takes a callable fn, or two tensors (x, out)")
    fn = fn_or_x

    def wrapped(x: Tensor) -> Tensor:
        return bpda(x, fn, None)

    return wrapped


class BPDAWrapper(nn.Module):
    """A non-differentiable transform with a differentiable backward (BPDA).

    Arguments:
        module (nn.Module or callable): the transform (e.g. a purifier); kept as a submodule when it
            is a module, so attacks manage its mode and parameters.
        forward_fn (callable, optional): what the forward runs, default ``module`` itself
            (e.g. ``defense.purify``).
        backward_fn (callable, optional): differentiable surrogate whose gradient replaces the
            transform's; default None = the identity (straight-through).

    Shapes: whatever the transform maps; the identity backward requires ``out.shape == x.shape``.

    Example::

        purifier = BPDAWrapper(quantizer)               # forward: quantizer(x); backward: identity
        logits = classifier(purifier(x))
    """

    def __init__(
        self,
        module: nn.Module | Transform,
        forward_fn: Transform | None = None,
        backward_fn: Transform | None = None,
    ) -> None:
        super().__init__()
        if not callable(module):
            raise ValueError(f"module must be an nn.Module or a callable, got {type(module).__name__}")
        if forward_fn is not None and not callable(forward_fn):
            raise ValueError(f"forward_fn must be callable, got {type(forward_fn).__name__}")
        if backward_fn is not None and not callable(backward_fn):
            raise ValueError(f"backward_fn must be callable or None, got {type(backward_fn).__name__}")
        self.module = module if isinstance(module, nn.Module) else None
        self.surrogate = backward_fn if isinstance(backward_fn, nn.Module) else None
        fwd = forward_fn if forward_fn is not None else module
        self._forward_fn: Transform = fwd  # type: ignore[assignment]
        self._backward_fn = backward_fn

    def forward(self, x: Tensor) -> Tensor:
        return bpda(x, self._forward_fn, self._backward_fn)


def bpda_view(model: nn.Module) -> nn.Module:
    """``model.bpda()`` (same forward, straight-through backward) if the model offers one, else ``model``."""
    make = getattr(model, "bpda", None)
    if not callable(make):
        return model
    view = make()
    if not isinstance(view, nn.Module):
        raise ValueError(f"{type(model).__name__}.bpda() must return an nn.Module, got {type(view).__name__}")
    return view


def full_gradient_view(model: nn.Module) -> nn.Module:
    """The model itself: exact gradients through every differentiable step (the ``pgd-full`` view)."""
    return model


# ---------------------------------------------------------------------------------------------- EOT
class EOT(nn.Module):
    """Expectation over Transformation: the average of ``k`` forward passes of a randomized model.

    ``forward`` returns the mean of the ``k`` logit vectors (``average="logits"``, the default), so
    the input gradient of any loss on it averages ``k`` sampled gradients -- the EOT estimate.
    Why logits rather than probabilities: averaged logits keep the scale of logits, so the margin
    and DLR losses (and AutoAttack's checks) apply unchanged, and the gradient of the CW margin loss
    of the mean is exactly the mean of the per-sample margin gradients while the arg-max class is
    stable; averaging softmax probabilities instead saturates -- one confident sample flattens the
    gradient of the rest -- a mild form of the gradient masking EOT is meant to undo. The other
    choice is offered as ``average="prob"``, which returns ``log(mean_k softmax(z_k))`` (valid
    logits whose arg-max is the averaged-probability vote).

    This is the *attacker's* averaging, separate from any averaging a defense does for its own
    verdict; an attack using it still judges success on the defense itself.

    Randomness: pass ``i`` of forward call ``t`` runs with torch's global generator seeded from
    ``(seed, t, i)`` inside ``torch.random.fork_rng`` (the caller's stream is untouched), and any
    submodule exposing ``reseed(int)`` (a defense with its own generator) is reseeded likewise, so
    a run is reproducible. :meth:`reset_attack_state` (called by every attack) restarts ``t``.

    Arguments:
        model (nn.Module): the (randomized) model or view, images -> logits.
        k (int): samples per forward (default 10).
        seed (int): base seed.
        average (str): "logits" (default) or "prob".

    Shapes: (N, C, H, W) -> (N, K), the model's own.

    Example::

        grad_model = EOT(bpda_view(defense), k=10)
        atk = PGD(defense, eps=8 / 255, grad_model=grad_model)
    """

    def __init__(self, model: nn.Module, k: int = 10, seed: int = 0, average: str = "logits") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"EOT: model must be an nn.Module, got {type(model).__name__}")
        self.k = check_int("EOT", "k", k)
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"EOT: seed must be a non-negative int, got {seed!r}")
        if average not in ("logits", "prob"):
            raise ValueError(f"EOT: average={average!r} not supported; choose from ('logits', 'prob')")
        self.model, self.seed, self.average = model, seed, average
        self._calls = 0

    def reset_attack_state(self) -> None:
        self._calls = 0

    def _pass_seed(self, i: int) -> int:
        return (self.seed * 1_000_003 + self._calls * 10_007 + i) % (2**63 - 1)

    def forward(self, x: Tensor) -> Tensor:
        reseeders = [m for m in self.model.modules() if callable(getattr(m, "reseed", None))]
        outs = []
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            for i in range(self.k):
                s = self._pass_seed(i)
                torch.manual_seed(s)
                for m in reseeders:
                    m.reseed(s)
                outs.append(self.model(x))
        self._calls += 1
        z = torch.stack(outs)  # (k, N, K)
        if self.average == "logits":
            return z.mean(0)
        return torch.logsumexp(F.log_softmax(z, dim=-1), dim=0) - math.log(self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}, seed={self.seed}, average={self.average!r}"


# ----------------------------------------------------------------------------- registered attacks
@ATTACKS.register("pgd-full")
class PGDFull(PGD):
    """PGD with the exact gradient of the whole defended model (the full-gradient view).

    Identical to ``pgd``; registered under its own name so that reports say which view was used.
    Arguments as :class:`~pssr.attacks.pgd.PGD` (no ``grad_model``).

    Example::

        atk = PGDFull(defense, eps=8 / 255, steps=100)
        x_adv = atk(x, y)
    """

    name = "pgd-full"

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
        loss: str = "ce",
        early_stop: bool = True,
    ) -> None:
        super().__init__(
            model,
            eps,
            norm,
            seed,
            steps=steps,
            alpha=alpha,
            restarts=restarts,
            random_start=random_start,
            loss=loss,
            early_stop=early_stop,
        )


@ATTACKS.register("pgd-bpda")
class PGDBPDA(PGD):
    """PGD whose gradients come from ``bpda_view(model)``; success judged on ``model``.

    For a model without ``bpda()`` this is plain PGD. Arguments as :class:`~pssr.attacks.pgd.PGD`.

    Example::

        atk = PGDBPDA(defense, eps=0.3, steps=100)
        x_adv = atk(x, y)
    """

    name = "pgd-bpda"

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
        loss: str = "ce",
        early_stop: bool = True,
    ) -> None:
        view = bpda_view(model) if isinstance(model, nn.Module) else model
        super().__init__(
            model,
            eps,
            norm,
            seed,
            steps=steps,
            alpha=alpha,
            restarts=restarts,
            random_start=random_start,
            loss=loss,
            early_stop=early_stop,
            grad_model=None if view is model else view,
        )


@ATTACKS.register("pgd-bpda-eot")
class PGDBPDAEOT(PGD):
    """PGD whose gradients come from ``EOT(bpda_view(model), eot_samples)``; success judged on ``model``.

    For randomized defenses. Each step costs ``eot_samples`` forward/backward passes. Arguments as
    :class:`~pssr.attacks.pgd.PGD`, plus ``eot_samples`` (k, default 10) and ``eot_average``
    ("logits" or "prob", see :class:`EOT`).

    Example::

        atk = PGDBPDAEOT(defense, eps=8 / 255, steps=50, eot_samples=10)
        x_adv = atk(x, y)
    """

    name = "pgd-bpda-eot"

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
        loss: str = "ce",
        early_stop: bool = True,
        eot_samples: int = 10,
        eot_average: str = "logits",
    ) -> None:
        view = (
            EOT(
                bpda_view(model),
                k=eot_samples,
                seed=seed if isinstance(seed, int) and seed >= 0 else 0,
                average=eot_average,
            )
            if isinstance(model, nn.Module)
            else model
        )
        super().__init__(
            model,
            eps,
            norm,
            seed,
            steps=steps,
            alpha=alpha,
            restarts=restarts,
            random_start=random_start,
            loss=loss,
            early_stop=early_stop,
            grad_model=view,
        )
        self.eot_samples, self.eot_average = eot_samples, eot_average

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(eot_samples=self.eot_samples, eot_average=self.eot_average)
        return cfg


@ATTACKS.register("autoattack-bpda")
class AutoAttackBPDA(AutoAttackWrapper):
    """AutoAttack run through ``bpda_view(model)`` (same forward, straight-through backward).

    The package judges its intermediate successes on the view, whose forward equals the model's;
    the returned points are final-checked on ``model`` by :class:`~pssr.attacks.base.Attack`.
    Arguments as :class:`~pssr.attacks.autoattack.AutoAttackWrapper` (no ``grad_model``).

    Example::

        atk = AutoAttackBPDA(defense, eps=0.3)
        x_adv = atk(x, y)
    """

    name = "autoattack-bpda"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        version: str | None = None,
        attacks: list[str] | tuple[str, ...] | None = None,
        n_queries: int | None = None,
        n_iter: int | None = None,
        eot_iter: int | None = None,
    ) -> None:
        view = bpda_view(model) if isinstance(model, nn.Module) else model
        super().__init__(
            model,
            eps,
            norm,
            seed,
            version=version,
            attacks=attacks,
            n_queries=n_queries,
            n_iter=n_iter,
            eot_iter=eot_iter,
            grad_model=None if view is model else view,
        )
