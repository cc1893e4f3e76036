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

Besides the two sets, *suites* (:data:`SUITES`) are named selections that may span both threat
models, each entry carrying its own ``threat_model``:

* ``"fast"`` -- an adaptive worst case in minutes rather than hours (docs/attack-suites.md gives
  its measured cost): APGD-CE with 5 restarts and APGD-T over up to 9 target classes (Croce & Hein
  2020, through ``pyautoattack``; 50 iterations each) on the defense's BPDA view where it has one,
  else on its exact gradient; PGD-100 with the exact gradient of the whole defense; PGD with
  BPDA+EOT on randomized defenses; Square with 1,000 queries (AutoAttack's own Square spends
  5,000); and, so that both threat models stay side by side, the same APGD under the paper
  protocol (made on the classifier, then purified). It leaves out what the full sets add for
  thoroughness (FAB-T, a second BPDA-PGD, the minimum-norm attacks, transfer): reports keep
  using ``"paper,adaptive"``.

Budgets (pixel units of [0, 1] images) follow each family's customary values: MNIST Linf 0.3 and
L2 2.0 (Madry et al. 2018; Croce & Hein 2020); Fashion-MNIST Linf 0.1 and L2 1.5; CIFAR Linf 8/255
and L2 0.5 (RobustBench); for the 8x8 ``digits`` toy set, Linf 0.1 and L2 1.0 (our choice:
1.6 of its 16 grey levels; no published convention exists). Minimum-norm attacks (CW, DeepFool,
DDN) run at the L2 budget and are clipped to it.

Every value here is a default; a harness passes overrides to :meth:`AttackSpec.build`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
    ``threat_model``: for entries of a suite, "paper" or "adaptive"; None in :data:`ATTACK_SETS`,
    whose set name is the threat model.
    """

    label: str
    attack: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    for_randomized: bool = False
    needs_surrogate: bool = False
    threat_model: str | None = None

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
            **({"threat_model": self.threat_model} if self.threat_model else {}),
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


# The fast suite's APGD iterations: half of AutoAttack's 100, a choice for speed (its agreement with
# the full suite is measured in docs/attack-suites.md); with 5 restarts of APGD-CE and up to 9 targets of APGD-T that
# is at most 700 gradient passes per surviving example (standard AutoAttack: about 1,900 gradient
# and 5,900 forward passes).
FAST_APGD_ITERATIONS = 50


def _fast(family: str) -> tuple[AttackSpec, ...]:
    out: list[AttackSpec] = []
    for norm, eps in BUDGETS[family].items():
        nb = {"eps": eps, "norm": norm}
        apgd = {**nb, "version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": FAST_APGD_ITERATIONS}
        out += [
            # the same APGD under both threat models: on a model with nothing to bypass the harness
            # reuses the paper column's records for the adaptive one (it is the same attack there)
            AttackSpec("apgd", "autoattack", apgd, threat_model="paper"),
            AttackSpec("apgd-bpda", "autoattack-bpda", dict(apgd), threat_model="adaptive"),
            AttackSpec("pgd-full", "pgd-full", {**nb, "steps": 100, "restarts": 1}, threat_model="adaptive"),
            AttackSpec(
                "pgd-bpda-eot",
                "pgd-bpda-eot",
                {**nb, "steps": 50, "eot_samples": 10},
                for_randomized=True,
                threat_model="adaptive",
            ),
            AttackSpec("square", "square", {**nb, "n_queries": 1000, "p_init": 0.8}, threat_model="adaptive"),
        ]
    return tuple(out)


# Named suites: selections across threat models (each entry says its own threat_model).
SUITES: Mapping[str, Mapping[str, tuple[AttackSpec, ...]]] = MappingProxyType(
    {"fast": MappingProxyType({f: _fast(f) for f in BUDGETS})}
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
    """The specs of set or suite ``name`` ("paper", "adaptive", "fast") at ``dataset``'s budgets."""
    table = ATTACK_SETS.get(name) or SUITES.get(name)
    if table is None:
        raise ValueError(f"unknown attack set {name!r}; choose from {sorted({*ATTACK_SETS, *SUITES})}")
    return table[dataset_family(dataset)]


def suite_attacks(name: str, norm: str = "linf", dataset: str | None = None) -> list[dict[str, Any]]:
    """Suite ``name``'s entries of ``norm`` as the attack dicts :func:`pssr.evaluation.evaluate` takes.

    Each dict holds ``name`` (the registered attack), ``threat_model``, ``label`` and the
    hyper-parameters; eps and norm are left to ``evaluate``. Without a ``dataset`` the entries of
    the first family are used: a suite's hyper-parameters other than eps must then not depend on
    the family (true of ``"fast"``).
    """
    if name not in SUITES:
        raise ValueError(f"unknown attack suite {name!r}; choose from {sorted(SUITES)}")
    family = dataset_family(dataset) if dataset is not None else next(iter(BUDGETS))
    items = []
    for e in SUITES[name][family]:
        if e.norm != norm:
            continue
        kw = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in e.kwargs.items()
            if k not in ("eps", "norm")
        }
        items.append({"name": e.attack, "threat_model": e.threat_model, "label": e.label, **kw})
    if not items:
        raise ValueError(f"attack suite {name!r} has no {norm} attacks")
    return items


def expand_suites(
    attacks: str | Sequence[str | Mapping[str, Any]], norm: str = "linf", dataset: str | None = None
) -> str | list[str | Mapping[str, Any]]:
    """``attacks`` with every suite name (``"fast"``) replaced by :func:`suite_attacks`' dicts.

    Everything else (set names, attack names, dicts) passes through unchanged, so the result is a
    valid ``attacks=`` argument of :func:`pssr.evaluation.evaluate`. A string without a suite name
    comes back as it was.
    """
    items: list[Any] = (
        [a.strip() for a in attacks.split(",") if a.strip()] if isinstance(attacks, str) else list(attacks)
    )
    if not any(isinstance(a, str) and a.strip().lower() in SUITES for a in items):
        return attacks
    out: list[str | Mapping[str, Any]] = []
    for a in items:
        if isinstance(a, str) and a.strip().lower() in SUITES:
            out += suite_attacks(a.strip().lower(), norm, dataset)
        else:
            out.append(a)
    return out
