"""AutoAttack (Croce & Hein, ICML 2020) through the maintained ``pyautoattack`` package.

Paper: https://arxiv.org/abs/2003.01690  (package: https://github.com/fra31/auto-attack, PyPI
``pyautoattack``, imported as ``pyautoattack``).

Threat model: white-box + black-box ensemble, untargeted, Linf and L2, run on the examples still
robust after each attack (worst case per example):

* ``autoattack`` -- version "standard": APGD-CE, APGD-T (targeted DLR, 9 target classes), FAB-T
  and Square (5,000 queries).
* ``autoattack-rand`` -- version "rand", for randomized defenses: APGD-CE and APGD-DLR with
  Expectation over Transformation (``eot_iter`` = 20 gradient samples per step).
* ``autoattack-bpda`` (in :mod:`pssr.attacks.adaptive`) -- the standard version run through
  ``bpda_view(model)``, for defenses with non-differentiable steps.

The package's own checks (randomness, probability outputs, dynamic defenses) log warnings on the
``auto-attack`` logger. The package seeds torch's global generator; we run it inside
``torch.random.fork_rng`` so the caller's random state is untouched, and restore any active trace
function that its dynamic-defense check clears. It always runs on the input's device (never a
hard-coded ``cuda``). Target-class counts are capped at ``num_classes - 1``.

Arguments:
    model (nn.Module): classifier or defense, images in [0, 1] -> logits.
    eps (float): budget in pixel units of [0, 1] images.
    norm (str): "linf" or "l2".
    seed (int): seed passed to every sub-attack.
    version (str): "standard" (default), "plus", "rand", or "custom" (then give ``attacks``).
    attacks (list of str, optional): for "custom": any of "apgd-ce", "apgd-dlr", "apgd-t", "fab",
        "fab-t", "square".
    n_queries (int, optional): Square's query budget (default: the package's 5,000).
    n_iter (int, optional): iterations of APGD, APGD-T and FAB (default: the package's 100); fewer
        only for quick checks, since it weakens the evaluation.
    eot_iter (int, optional): EOT samples per APGD step (the "rand" version's default is 20).
    grad_model (nn.Module, optional): module the package attacks (gradients *and* its own success
        checks); use a view whose forward equals ``model``'s (a BPDA view). Default ``model``.

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].

Example::

    atk = AutoAttackWrapper(model, eps=8 / 255)      # or create_attack("autoattack", model, eps=8/255)
    x_adv = atk(x, y)
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor, nn

from pssr.attacks._common import check_int, check_module
from pssr.attacks.base import ATTACKS, Attack

VERSIONS = ("standard", "plus", "rand", "custom")
SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def _set_iterations(aa: Any, n_iter: int) -> None:
    """Change the APGD/FAB iteration counts after construction (APGD derives its step-size
    checkpoints from ``n_iter`` in ``__init__``, so they are recomputed the same way)."""
    for apgd in (aa.apgd, aa.apgd_targeted):
        apgd.n_iter = apgd.n_iter_orig = n_iter
        apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
        apgd.n_iter_min = max(int(0.06 * n_iter), 1)
        apgd.size_decr = max(int(0.03 * n_iter), 1)
    aa.fab.n_iter = n_iter


@ATTACKS.register("autoattack")
class AutoAttackWrapper(Attack):
    __doc__ = __doc__
    name = "autoattack"
    default_version = "standard"

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
        grad_model: nn.Module | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed)
        version = self.default_version if version is None else version
        if version not in VERSIONS:
            raise ValueError(f"{self.name}: version={version!r} not supported; choose from {VERSIONS}")
        if version == "custom":
            if not attacks or any(a not in SUB_ATTACKS for a in attacks):
                raise ValueError(
                    f"{self.name}: version='custom' needs attacks= a non-empty list from "
                    f"{SUB_ATTACKS}, got {attacks!r}"
                )
        elif attacks is not None:
            raise ValueError(
                f"{self.name}: attacks= is only used with version='custom', got version={version!r}"
            )
        self.version = version
        self.attacks = list(attacks) if attacks else None
        self.n_queries = None if n_queries is None else check_int(self.name, "n_queries", n_queries)
        self.n_iter = None if n_iter is None else check_int(self.name, "n_iter", n_iter)
        self.eot_iter = None if eot_iter is None else check_int(self.name, "eot_iter", eot_iter)
        self.grad_model = (
            self.model if grad_model is None else check_module(self.name, "grad_model", grad_model)
        )

    def managed_modules(self) -> list[nn.Module]:
        return [self.model] if self.grad_model is self.model else [self.model, self.grad_model]

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        try:
            from pyautoattack import AutoAttack
        except ImportError as e:  # pragma: no cover - the package is a declared dependency
            raise ImportError("autoattack needs the 'pyautoattack' package: pip install pyautoattack") from e
        if self.eps == 0:
            return x
        with torch.no_grad():
            n_cls = int(self.grad_model(x[:1]).shape[1])
        devices = [x.device] if x.device.type == "cuda" else []
        trace = sys.gettrace()
        try:
            with torch.random.fork_rng(devices=devices):
                aa = AutoAttack(
                    self.grad_model,
                    attacks=self.attacks,
                    device=x.device,
                    eps=self.eps,
                    norm="Linf" if self.norm == "linf" else "L2",
                    seed=self.seed,
                    version=self.version,
                )
                aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, n_cls - 1)
                aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_cls - 1)
                if self.n_queries is not None:
                    aa.square.n_queries = self.n_queries
                if self.n_iter is not None:
                    _set_iterations(aa, self.n_iter)
                if self.eot_iter is not None:
                    aa.apgd.eot_iter = self.eot_iter
                    aa.apgd_targeted.eot_iter = self.eot_iter
                x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=x.shape[0])
        finally:
            sys.settrace(trace)
        return x_adv.to(x.dtype)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(version=self.version)
        for k in ("attacks", "n_queries", "n_iter", "eot_iter"):
            if getattr(self, k) is not None:
                cfg[k] = getattr(self, k)
        if self.grad_model is not self.model:
            cfg["grad_model"] = type(self.grad_model).__name__
        return cfg


@ATTACKS.register("autoattack-rand")
class AutoAttackRand(AutoAttackWrapper):
    """AutoAttack's "rand" version for randomized defenses: APGD-CE + APGD-DLR with 20-sample EOT.

    Arguments as :class:`AutoAttackWrapper` (``version`` fixed to "rand").

    Example::

        atk = AutoAttackRand(defense, eps=8 / 255)
        x_adv = atk(x, y)
    """

    name = "autoattack-rand"
    default_version = "rand"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        n_iter: int | None = None,
        eot_iter: int | None = None,
        grad_model: nn.Module | None = None,
    ) -> None:
        super().__init__(
            model, eps, norm, seed, version="rand", n_iter=n_iter, eot_iter=eot_iter, grad_model=grad_model
        )
