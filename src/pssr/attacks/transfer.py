"""Transfer attack: craft adversarial examples on a surrogate model, apply them to the target.

Papers: Papernot, McDaniel & Goodfellow 2016 (https://arxiv.org/abs/1605.07277); Liu et al.,
ICLR 2017 (https://arxiv.org/abs/1611.02770).

Threat model: black-box (transfer) against ``model``: any registered inner attack (``attack``,
with ``attack_kwargs``) runs against ``surrogate`` -- e.g. the undefended classifier, which is the
gray-box protocol of purification papers (the attacker knows the classifier, not the purifier) --
and the resulting points are returned for ``model``; ``model`` is never queried except by the
common final step (an example ``model`` already misclassifies stays clean when the transferred
point would be classified correctly).

Arguments:
    model (nn.Module): the target (e.g. the whole defense), images in [0, 1] -> logits.
    eps (float): budget in pixel units of [0, 1] images (passed to the inner attack).
    norm (str): "linf" or "l2" (the inner attack must support it).
    seed (int): passed to the inner attack.
    surrogate (nn.Module): the model the examples are crafted on (required).
    attack (str): name of a registered attack run on the surrogate (default "pgd").
    attack_kwargs (dict, optional): hyper-parameters of the inner attack (e.g. ``{"steps": 40}``).

Shapes:
    x: (N, C, H, W) float in [0, 1]; y: (N,) int64  ->  x_adv: (N, C, H, W) in [0, 1].

Example::

    atk = Transfer(defense, eps=0.3, surrogate=classifier, attack="mifgsm")
    x_adv = atk(x, y)
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from pssr.attacks._common import check_module
from pssr.attacks.base import ATTACKS, Attack


@ATTACKS.register("transfer")
class Transfer(Attack):
    __doc__ = __doc__
    name = "transfer"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        surrogate: nn.Module | None = None,
        attack: str = "pgd",
        attack_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, eps, norm, seed)
        if surrogate is None:
            raise ValueError(f"{self.name}: surrogate= is required (the model the examples are crafted on)")
        self.surrogate = check_module(self.name, "surrogate", surrogate)
        if attack == "transfer":
            raise ValueError(f"{self.name}: attack='transfer' cannot be nested; name the inner attack")
        self.attack_kwargs = dict(attack_kwargs or {})
        self.inner: Attack = ATTACKS.create(
            attack, model=surrogate, eps=eps, norm=norm, seed=seed, **self.attack_kwargs
        )

    def managed_modules(self) -> list[nn.Module]:
        return [self.model, self.surrogate]

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        return self.inner(x, y)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(
            attack=self.inner.name, attack_config=self.inner.config(), surrogate=type(self.surrogate).__name__
        )
        return cfg
