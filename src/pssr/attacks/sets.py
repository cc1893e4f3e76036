"""Named attack sets with default hyper-parameters and budgets per dataset family.

``ATTACK_SETS[set_name][family]`` is a tuple of :class:`AttackSpec`; :func:`attack_set` looks one up
from a dataset name. Two sets, matching the evaluation protocol:

* ``"paper"`` -- the attacks of the PSSR paper's (gray-box) protocol: FGSM, PGD, MI-FGSM, CW,
  DeepFool, DDN, AutoAttack (plus Linf-CW). The harness crafts them on the classifier and applies
  them to the defense (or runs them on an undefended model directly).
* ``"adaptive"`` -- white-box attacks on the whole defense: PGD with full gradients, PGD+BPDA,
  PGD+BPDA+EOT (only worth running on randomized defenses: ``for_randomized``), AutoAttack through
  the BPDA view (and its "rand" version for randomized defenses), Square (gradient-free control)
  and transfer from a surrogate (``needs_surrogate``: the harness passes ``surrogate=``, e.g. the
  undefended classifier).

Budgets (pixel units of [0, 1] images) follow each family's customary values: MNIST Linf 0.3 and
L2 2.0 (Madry et al. 2018; Croce & Hein 2020); Fashion-MNIST Linf 0.1 and L2 1.5; CIFAR Linf 8/255
and L2 0.5 (RobustBench); for the 8x8 ``digits`` toy set, Linf 0.1 and L2 1.0 (our choice:
1.6 of its 16 grey levels; no published convention exists). Minimum-norm attacks (CW, DeepFool,
DDN) run at the L2 budget and are clipped to it.

Every value here is a default; a harness passes overrides to :meth:`AttackSpec.build`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from pssr.attacks.base import ATTACKS, Attack

# family -> {norm: eps}
BUDGETS: Mapping[str, Mapping[str, float]] = MappingProxyType(
    {
        "mnist": MappingProxyType({"linf": 0.3, "l2": 2.0}),
        "fashion-mnist": MappingProxyType({"linf": 0.1, "l2": 1.5}),
        "cifar": MappingProxyType({"linf": 8 / 255, "l2": 0.5}),
        "digits": MappingProxyType({"linf": 0.1, "l2": 1.0}),
    }
)

# dataset name (as in pssr.data) -> family
DATASET_FAMILIES: Mapping[str, str] = MappingProxyType(
    {
        "mnist": "mnist",
        "mnist-10k": "mnist",
        "fashion-mnist": "fashion-mnist",
        "digits": "digits",
        "cifar10": "cifar",
        "cifar100": "cifar",
        "cifar10-jpeg": "cifar",
    }
)


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a set: a display ``label``, the registered ``attack`` name and its arguments.

    ``kwargs`` hold everything but the model (eps and norm included). ``for_randomized``: only
    useful against randomized defenses; ``needs_surrogate``: :meth:`build` must get ``surrogate=``.
    """

    label: str
    attack: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    for_randomized: bool = False
    needs_surrogate: bool = False

    @property
    def eps(self) -> float:
        return float(self.kwargs["eps"])

    @property
    def norm(self) -> str:
        return str(self.kwargs.get("norm", "linf"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for reports)."""
        return {
            "label": self.label,
            "attack": self.attack,
            "kwargs": dict(self.kwargs),
            "for_randomized": self.for_randomized,
            "needs_surrogate": self.needs_surrogate,
        }

    def build(self, model: nn.Module, **overrides: Any) -> Attack:
        """The attack on ``model``; ``overrides`` replace defaults (e.g. ``seed=``, ``surrogate=``)."""
        kw = {**self.kwargs, **overrides}
        if self.needs_surrogate and kw.get("surrogate") is None:
            raise ValueError(
                f"attack {self.label!r} needs surrogate= (the model the examples are crafted on)"
            )
        return ATTACKS.create(self.attack, model=model, **kw)


def _paper(family: str) -> tuple[AttackSpec, ...]:
    linf, l2 = BUDGETS[family]["linf"], BUDGETS[family]["l2"]
    steps = 20 if family == "cifar" else 40  # Madry et al.: 20 steps on CIFAR-10, 40 on MNIST
    return (
        AttackSpec("fgsm", "fgsm", {"eps": linf, "norm": "linf"}),
        AttackSpec("pgd", "pgd", {"eps": linf, "norm": "linf", "steps": steps, "restarts": 1}),
        AttackSpec("mifgsm", "mifgsm", {"eps": linf, "norm": "linf", "steps": 10, "decay": 1.0}),
        AttackSpec("cw-linf", "cw-linf", {"eps": linf, "norm": "linf", "steps": steps}),
        AttackSpec("cw-l2", "cw", {"eps": l2, "norm": "l2", "steps": 100, "binary_search_steps": 6}),
        AttackSpec("deepfool-l2", "deepfool", {"eps": l2, "norm": "l2", "steps": 50, "overshoot": 0.02}),
        AttackSpec("ddn-l2", "ddn", {"eps": l2, "norm": "l2", "steps": 100}),
        AttackSpec("autoattack", "autoattack", {"eps": linf, "norm": "linf", "version": "standard"}),
    )


def _adaptive(family: str) -> tuple[AttackSpec, ...]:
    linf = BUDGETS[family]["linf"]
    return (
        AttackSpec("pgd-full", "pgd-full", {"eps": linf, "norm": "linf", "steps": 100, "restarts": 1}),
        AttackSpec("pgd-bpda", "pgd-bpda", {"eps": linf, "norm": "linf", "steps": 100, "restarts": 2}),
        AttackSpec(
            "pgd-bpda-eot",
            "pgd-bpda-eot",
            {"eps": linf, "norm": "linf", "steps": 50, "eot_samples": 10},
            for_randomized=True,
        ),
        AttackSpec(
            "autoattack-bpda", "autoattack-bpda", {"eps": linf, "norm": "linf", "version": "standard"}
        ),
        AttackSpec("autoattack-rand", "autoattack-rand", {"eps": linf, "norm": "linf"}, for_randomized=True),
        AttackSpec("square", "square", {"eps": linf, "norm": "linf", "n_queries": 1000, "p_init": 0.8}),
        AttackSpec(
            "transfer-pgd",
            "transfer",
            {"eps": linf, "norm": "linf", "attack": "pgd", "attack_kwargs": {"steps": 100}},
            needs_surrogate=True,
        ),
    )


ATTACK_SETS: Mapping[str, Mapping[str, tuple[AttackSpec, ...]]] = MappingProxyType(
    {
        "paper": MappingProxyType({f: _paper(f) for f in BUDGETS}),
        "adaptive": MappingProxyType({f: _adaptive(f) for f in BUDGETS}),
    }
)


def dataset_family(dataset: str) -> str:
    """The budget family of a dataset name (``"cifar10" -> "cifar"``); families map to themselves."""
    key = dataset.strip().lower() if isinstance(dataset, str) else dataset
    if key in BUDGETS:
        return key
    if key not in DATASET_FAMILIES:
        raise ValueError(
            f"no attack budgets for dataset {dataset!r}; known datasets: "
            f"{', '.join(sorted(DATASET_FAMILIES))} (families: {', '.join(BUDGETS)})"
        )
    return DATASET_FAMILIES[key]


def attack_set(name: str, dataset: str) -> tuple[AttackSpec, ...]:
    """The specs of set ``name`` ("paper" or "adaptive") at the budgets of ``dataset``'s family."""
    if name not in ATTACK_SETS:
        raise ValueError(f"unknown attack set {name!r}; choose from {sorted(ATTACK_SETS)}")
    return ATTACK_SETS[name][dataset_family(dataset)]
