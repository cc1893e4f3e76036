"""The attack interface shared by every attack in pssr.

Two lines, as in torchattacks::

    atk = pssr.attacks.create_attack("pgd", model, eps=8/255, steps=40)
    x_adv = atk(x, y)          # x in [0, 1], (N, C, H, W); y int64 (N,)

Every attack keeps ``x_adv`` in [0, 1] and inside its ``norm`` ball of radius ``eps`` around ``x``
(for minimum-norm attacks such as CW, DeepFool and DDN, ``eps`` is the budget the result is
projected / clipped to, so robust accuracy at ``eps`` is well defined). Attacks restore the model's
train/eval mode and leave no gradient on its parameters. Randomness comes from ``seed`` only.

What ``Attack.__call__`` does around a subclass's ``perturb``:

* validates ``x``/``y`` (:func:`check_inputs`, then the label range against the model's outputs);
* puts every module of :meth:`Attack.managed_modules` (the model, plus any gradient view or
  surrogate) in eval mode with frozen parameters, restoring each submodule's own mode and each
  parameter's ``requires_grad`` afterwards; modules exposing ``reset_attack_state()`` (EOT) are reset;
* seeds torch's global generator from ``seed`` inside ``torch.random.fork_rng``, so a randomized
  defense that draws from it is reproducible and the caller's random stream is untouched;
* projects the result onto the ``eps`` ball and [0, 1], and (``keep_clean_errors``) returns ``x``
  itself for examples the model already misclassifies when the attack's point would be classified
  correctly -- so, for a deterministic model, robust accuracy never exceeds clean accuracy.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pssr.registry import Registry
from pssr.utils import eval_mode

ATTACKS: Registry[Attack] = Registry("attack")
NORMS = ("linf", "l2")


class Attack:
    """Base class: subclasses implement :meth:`perturb` (model in eval mode, grads enabled)."""

    name: str = "attack"
    norms: tuple[str, ...] = NORMS
    gradient_free: bool = False  # True for attacks that only query outputs (Square)
    # Return x itself for examples the model already misclassifies when the attack's point is
    # classified correctly (two extra forward passes per call; keeps robust acc <= clean acc).
    keep_clean_errors: bool = True

    def __init__(self, model: nn.Module, eps: float, norm: str = "linf", seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module returning logits, got {type(model).__name__}")
        norm = norm.lower()
        if norm not in self.norms:
            raise ValueError(f"{self.name}: norm={norm!r} not supported; choose from {self.norms}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"{self.name}: eps must be a finite number >= 0, got {eps!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{self.name}: seed must be a non-negative int, got {seed!r}")
        self.model, self.eps, self.norm, self.seed = model, float(eps), norm, seed

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        check_inputs(x, y)
        modules = self.managed_modules()
        # each submodule's own mode and each parameter's requires_grad come back afterwards (shared
        # parameters, a BPDA view's and its defense's, are seen once)
        with eval_mode(*modules, requires_grad=False):
            for mod in modules:
                for m in mod.modules():  # e.g. EOT wrappers restart their seeded stream on every call
                    reset = getattr(m, "reset_attack_state", None)
                    if callable(reset):
                        reset()
            # A randomized defense may draw from torch's global generator: seed it from ``seed`` in a
            # fork, so the attack is reproducible and the caller's random stream is left as it was.
            with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
                torch.manual_seed(self.seed)
                return self._attack(x.detach(), y)

    def _attack(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape[0] == 0:
            return x.clone()
        with torch.no_grad():
            clean_logits = self.model(x)  # (N, K)
        n_cls = clean_logits.shape[1]
        if int(y.min()) < 0 or int(y.max()) >= n_cls:
            raise ValueError(
                f"y must hold class indices in [0, {n_cls - 1}], got range [{int(y.min())}, {int(y.max())}]"
            )
        with torch.enable_grad():
            x_adv = self.perturb(x.clone(), y)
        x_adv = project(x_adv.detach(), x, self.eps, self.norm)
        if self.keep_clean_errors:
            # Worst case per example: an input the model already gets wrong stays as it is unless the
            # attack's point is also wrong (so robust accuracy <= clean accuracy).
            with torch.no_grad():
                back = (clean_logits.argmax(1) != y) & (self.model(x_adv).argmax(1) == y)
            x_adv = torch.where(back.view(-1, *([1] * (x.ndim - 1))), x, x_adv)
        return x_adv

    def managed_modules(self) -> list[nn.Module]:
        """Modules put in eval mode with frozen parameters during an attack (then restored).

        Subclasses that take gradients through another module (a BPDA/EOT view, a surrogate) add it.
        """
        return [self.model]

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "eps": self.eps, "norm": self.norm, "seed": self.seed}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def check_inputs(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a float tensor with pixels in [0, 1], got dtype {x.dtype}")
    if not isinstance(y, Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be (N,) with N={x.shape[0]}, got {getattr(y, 'shape', type(y))}")
    if y.dtype != torch.int64:
        raise ValueError(f"y must be int64 labels, got {y.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(f"x must lie in [0, 1], got range [{x.min().item():.3g}, {x.max().item():.3g}]")


def lp_norm(d: Tensor, norm: str) -> Tensor:
    """Per-example norm of ``d`` (N, ...) -> (N,)."""
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project ``x_adv`` onto the ``norm`` ball of radius ``eps`` around ``x``, then into [0, 1]."""
    d = x_adv - x
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        n = lp_norm(d, "l2").clamp_min(1e-12).view(-1, *([1] * (d.ndim - 1)))
        d = d * torch.clamp(eps / n, max=1.0)
    return (x + d).clamp(0.0, 1.0)
