"""What one attack run is: :class:`AttackSpec`, a registered attack with its threat model,
hyper-parameters and table label.

A spec carries no budget: eps comes from the evaluation (by default the dataset's budget,
:func:`pssr.defaults.budget`) and the norm from its threat model (``linf`` or ``l2``, one per
evaluation), so the same spec serves every dataset of a family and both budgets of a sweep. The
named sets and suites of specs, and :func:`~pssr.attacks.sets.parse_attacks` (which turns the
``attacks=`` argument of :func:`pssr.evaluation.evaluate` into specs) are in :mod:`pssr.attacks.sets`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from pssr.attacks.base import ATTACKS, Attack

THREAT_MODELS = ("paper", "adaptive")


@dataclass(frozen=True)
class AttackSpec:
    """One attack to run: registry ``name``, ``threat_model``, keyword arguments, table ``label``.

    ``threat_model``: ``"paper"`` (crafted on the classifier, then given to the defense) or
    ``"adaptive"`` (crafted on the whole defense). ``kwargs`` hold the hyper-parameters, never eps,
    norm, seed or the model (the evaluation sets those). ``for_randomized``: run only on models whose
    forward pass is random (EOT attacks); ``needs_surrogate``: the attack gets ``surrogate=`` (the
    gray-box source) unless given one.
    """

    name: str
    threat_model: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    for_randomized: bool = False
    needs_surrogate: bool = False

    def __post_init__(self) -> None:
        if self.threat_model not in THREAT_MODELS:
            raise ValueError(
                f"attack {self.name!r}: threat_model={self.threat_model!r}; choose from {THREAT_MODELS}"
            )
        if not self.label:
            object.__setattr__(self, "label", self.name)
        bad = {"eps", "norm", "seed", "model"} & set(self.kwargs)
        if bad:
            raise ValueError(f"attack {self.label!r}: {sorted(bad)} are set by evaluate(), not per attack")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (reports, fingerprints of resumable units)."""
        return {
            "name": self.name,
            "threat_model": self.threat_model,
            "label": self.label,
            "kwargs": {
                k: (v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v))
                for k, v in self.kwargs.items()
            },
            "for_randomized": self.for_randomized,
            "needs_surrogate": self.needs_surrogate,
        }

    def build(self, model: nn.Module, *, eps: float, norm: str, **overrides: Any) -> Attack:
        """The attack on ``model`` at budget ``eps`` in ``norm``; ``overrides`` replace the spec's
        hyper-parameters (e.g. ``seed=``, ``surrogate=``)."""
        kw = {**self.kwargs, **overrides}
        if self.needs_surrogate and kw.get("surrogate") is None:
            raise ValueError(
                f"attack {self.label!r} needs surrogate= (the model the examples are crafted on)"
            )
        return ATTACKS.create(self.name, model=model, eps=eps, norm=norm, **kw)


__all__ = ["THREAT_MODELS", "AttackSpec"]
