"""Named attack sets with default hyper-parameters per dataset family, budgets, and the parser of
the ``attacks=`` argument of :func:`pssr.evaluation.evaluate` (:func:`parse_attacks`).

``ATTACK_SETS[set_name][family][norm]`` is a tuple of :class:`~pssr.attacks.spec.AttackSpec`, the
set's attacks run under that norm; an entry carries no eps (it runs at the evaluation's budget, by
default ``BUDGETS[family][norm]``) and no norm (the key it sits under). :func:`attack_set` looks one
up from a dataset name. Two sets, matching the evaluation protocol:

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

Every value here is a default; a dict given to :func:`parse_attacks` or ``overrides`` given to
:meth:`AttackSpec.build` replace them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from pssr.attacks.base import NORMS
from pssr.attacks.spec import THREAT_MODELS, AttackSpec

log = logging.getLogger(__name__)

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


# One table of specs: family -> norm -> the specs run under that norm (at that family's budget).
SpecTable = Mapping[str, Mapping[str, tuple[AttackSpec, ...]]]


def _paper(family: str) -> Mapping[str, tuple[AttackSpec, ...]]:
    steps = 20 if family == "cifar" else 40  # Madry et al.: 20 steps on CIFAR-10, 40 on MNIST
    return {
        "linf": (
            AttackSpec("fgsm", "paper"),
            AttackSpec("pgd", "paper", {"steps": steps, "restarts": 1}),
            AttackSpec("mifgsm", "paper", {"steps": 10, "decay": 1.0}),
            AttackSpec("cw-linf", "paper", {"steps": steps}),
            AttackSpec("autoattack", "paper", {"version": "standard"}),
        ),
        "l2": (
            AttackSpec("cw", "paper", {"steps": 100, "binary_search_steps": 6}, "cw-l2"),
            AttackSpec("deepfool", "paper", {"steps": 50, "overshoot": 0.02}, "deepfool-l2"),
            AttackSpec("ddn", "paper", {"steps": 100}, "ddn-l2"),
        ),
    }


def _adaptive(family: str) -> Mapping[str, tuple[AttackSpec, ...]]:
    return {
        "linf": (
            AttackSpec("pgd-full", "adaptive", {"steps": 100, "restarts": 1}),
            AttackSpec("pgd-bpda", "adaptive", {"steps": 100, "restarts": 2}),
            AttackSpec("pgd-bpda-eot", "adaptive", {"steps": 50, "eot_samples": 10}, for_randomized=True),
            AttackSpec("autoattack-bpda", "adaptive", {"version": "standard"}),
            AttackSpec("autoattack-rand", "adaptive", for_randomized=True),
            AttackSpec("square", "adaptive", {"n_queries": 1000, "p_init": 0.8}),
            AttackSpec(
                "transfer",
                "adaptive",
                {"attack": "pgd", "attack_kwargs": {"steps": 100}},
                "transfer-pgd",
                needs_surrogate=True,
            ),
        ),
    }


# set name (its threat model) -> its table
ATTACK_SETS: Mapping[str, SpecTable] = MappingProxyType(
    {
        "paper": MappingProxyType({f: MappingProxyType(_paper(f)) for f in BUDGETS}),
        "adaptive": MappingProxyType({f: MappingProxyType(_adaptive(f)) for f in BUDGETS}),
    }
)


# The fast suite's APGD iterations: half of AutoAttack's 100, a choice for speed (its agreement with
# the full suite is measured in docs/attack-suites.md); with 5 restarts of APGD-CE and up to 9 targets of APGD-T that
# is at most 700 gradient passes per surviving example (standard AutoAttack: about 1,900 gradient
# and 5,900 forward passes).
FAST_APGD_ITERATIONS = 50


def _fast(family: str) -> Mapping[str, tuple[AttackSpec, ...]]:
    apgd = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": FAST_APGD_ITERATIONS}
    entries = (
        # the same APGD under both threat models: on a model with nothing to bypass the harness
        # reuses the paper column's records for the adaptive one (it is the same attack there)
        AttackSpec("autoattack", "paper", apgd, "apgd"),
        AttackSpec("autoattack-bpda", "adaptive", dict(apgd), "apgd-bpda"),
        AttackSpec("pgd-full", "adaptive", {"steps": 100, "restarts": 1}),
        AttackSpec("pgd-bpda-eot", "adaptive", {"steps": 50, "eot_samples": 10}, for_randomized=True),
        AttackSpec("square", "adaptive", {"n_queries": 1000, "p_init": 0.8}),
    )
    return {norm: entries for norm in BUDGETS[family]}


# Named suites: selections across threat models (each entry says its own threat_model).
SUITES: Mapping[str, SpecTable] = MappingProxyType(
    {"fast": MappingProxyType({f: MappingProxyType(_fast(f)) for f in BUDGETS})}
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


def attack_set(name: str, dataset: str, norm: str | None = None) -> tuple[AttackSpec, ...]:
    """The specs of set or suite ``name`` ("paper", "adaptive", "fast") for ``dataset``'s family,
    those run under ``norm`` (at its budget ``BUDGETS[family][norm]``); all norms', in the order of
    :data:`~pssr.attacks.base.NORMS`, when ``norm`` is None."""
    table = ATTACK_SETS.get(name) or SUITES.get(name)
    if table is None:
        raise ValueError(f"unknown attack set {name!r}; choose from {sorted({*ATTACK_SETS, *SUITES})}")
    by_norm = table[dataset_family(dataset)]
    if norm is not None:
        return by_norm.get(norm, ())
    return tuple(s for n in NORMS for s in by_norm.get(n, ()))


def suite_attacks(name: str, norm: str = "linf", dataset: str | None = None) -> list[dict[str, Any]]:
    """Suite ``name``'s entries of ``norm`` as the attack dicts :func:`pssr.evaluation.evaluate` takes.

    Each dict holds ``name`` (the registered attack), ``threat_model``, ``label`` and the
    hyper-parameters; eps and norm are left to ``evaluate``. Without a ``dataset`` the entries of
    the first family are used: a suite's hyper-parameters must then not depend on the family (true
    of ``"fast"``).
    """
    if name not in SUITES:
        raise ValueError(f"unknown attack suite {name!r}; choose from {sorted(SUITES)}")
    family = dataset_family(dataset) if dataset is not None else next(iter(BUDGETS))
    items = [
        {
            "name": e.name,
            "threat_model": e.threat_model,
            "label": e.label,
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in e.kwargs.items()},
        }
        for e in SUITES[name][family].get(norm, ())
    ]
    if not items:
        raise ValueError(f"attack suite {name!r} has no {norm} attacks")
    return items


def expand_suites(
    attacks: str | Sequence[str | Mapping[str, Any]], norm: str = "linf", dataset: str | None = None
) -> str | list[str | Mapping[str, Any]]:
    """``attacks`` with every suite name (``"fast"``) replaced by :func:`suite_attacks`' dicts.

    Everything else (set names, attack names, dicts) passes through unchanged. A string without a
    suite name comes back as it was. :func:`parse_attacks` expands suites itself.
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


def _family(dataset: str | None) -> str | None:
    """The budget family of ``dataset`` (None when unknown)."""
    if dataset is None:
        return None
    try:
        return dataset_family(dataset)
    except ValueError:
        return None


def _set_entries(set_name: str, dataset: str | None, norm: str) -> tuple[AttackSpec, ...]:
    """The entries of set ``set_name`` run under ``norm`` at ``dataset``'s hyper-parameters."""
    fam = _family(dataset)
    if fam is None:
        raise ValueError(
            f"the attack set {set_name!r} needs a dataset with known defaults (got dataset={dataset!r}); pass "
            f"dataset=... (one of {', '.join(sorted(DATASET_FAMILIES))}) "
            "or list attacks by name"
        )
    for other in NORMS:
        for e in ATTACK_SETS[set_name][fam].get(other, ()) if other != norm else ():
            log.info("attack set %r: %s (%s) left out of a %s evaluation", set_name, e.label, other, norm)
    return ATTACK_SETS[set_name][fam].get(norm, ())


def _defaults_for(
    name: str, threat: str | None, dataset: str | None, norm: str
) -> tuple[AttackSpec | None, str | None, bool]:
    """The set entry describing attack ``name``, its set's name, and whether its hyper-parameters apply.

    Looks the name up as a label, then as a registry name, in the set of ``threat`` first, preferring
    entries of ``norm``. With an unknown dataset the entry still gives the threat model and flags,
    but not the hyper-parameters.
    """
    fam = _family(dataset)
    order = dict.fromkeys(t for t in ((threat,) if threat else ()) + THREAT_MODELS if t in ATTACK_SETS)
    norms = (norm, *(n for n in NORMS if n != norm))
    for field_name in ("label", "name"):
        for same_norm in (True, False):
            for set_name in order:
                for f in [fam] if fam is not None else list(ATTACK_SETS[set_name]):
                    by_norm = ATTACK_SETS[set_name][f]
                    for e in (e for n in (norms[:1] if same_norm else norms[1:]) for e in by_norm.get(n, ())):
                        if getattr(e, field_name) == name:
                            return e, set_name, fam is not None
    return None, None, False


def _spec_from(item: str | Mapping[str, Any], dataset: str | None, norm: str) -> AttackSpec:
    if isinstance(item, str):
        name, _, threat = item.strip().partition("@")
        kw: dict[str, Any] = {}
        label = ""
    elif isinstance(item, Mapping):
        d = dict(item)
        if "name" not in d:
            raise ValueError(f"attack spec dict needs a 'name' key, got {item!r}")
        name = str(d.pop("name"))
        threat = str(d.pop("threat_model", "") or "")
        label = str(d.pop("label", "") or "")
        kw = d
    else:
        raise ValueError(f"attack spec must be a name or a dict, got {type(item).__name__}: {item!r}")
    name, threat = name.strip().lower(), threat.strip().lower()
    entry, set_name, exact = _defaults_for(name, threat or None, dataset, norm)
    threat = threat or set_name or "paper"
    if entry is None:
        return AttackSpec(
            name, threat, kw, label, needs_surrogate=name == "transfer" and "surrogate" not in kw
        )
    # the set's hyper-parameters for this dataset (when known) under the dict's own
    return dataclasses.replace(
        entry,
        threat_model=threat,
        kwargs={**(entry.kwargs if exact else {}), **kw},
        label=label or (entry.label if exact else name),
    )


def parse_attacks(
    attacks: str | Sequence[str | Mapping[str, Any]], dataset: str | None = None, norm: str = "linf"
) -> list[AttackSpec]:
    """Attack specs from a set or suite name, a comma list, or a list of names / dicts.

    * ``"paper"`` / ``"adaptive"`` expand to ``ATTACK_SETS[set][family of dataset][norm]`` under
      that threat model (entries of the other norm are left out: a worst case never mixes threat
      norms); a suite (``"fast"``) to its entries of ``norm``, each under its own threat model;
    * a name (a set label such as ``"cw-l2"`` or a registry name such as ``"pgd"``) runs under the
      threat model of the set it belongs to (``"paper"`` when in none) with that set's
      hyper-parameters for ``dataset``; ``"pgd@adaptive"`` chooses the threat model;
    * a dict ``{"name": "pgd", "steps": 100, "threat_model": "adaptive", "label": "pgd-100"}``
      passes its other keys to the attack (over the set's defaults).

    Labels are made unique per threat model (``pgd``, ``pgd#2``, ...). ``eps``, ``norm`` and
    ``seed`` are always those given to :func:`pssr.evaluation.evaluate`.
    """
    if not isinstance(attacks, (str, Sequence)):
        raise ValueError(f"attacks must be a string or a list of names/dicts, got {type(attacks).__name__}")
    expanded = expand_suites(attacks, norm, dataset)
    items: list[Any] = (
        [a for a in expanded.split(",") if a.strip()] if isinstance(expanded, str) else list(expanded)
    )
    specs: list[AttackSpec] = []
    for item in items:
        if isinstance(item, str) and item.strip().lower() in THREAT_MODELS:
            specs += _set_entries(item.strip().lower(), dataset, norm)
        else:
            specs.append(_spec_from(item, dataset, norm))
    seen: dict[tuple[str, str], int] = {}
    out = []
    for s in specs:
        k = (s.threat_model, s.label)
        seen[k] = seen.get(k, 0) + 1
        out.append(dataclasses.replace(s, label=f"{s.label}#{seen[k]}") if seen[k] > 1 else s)
    if not out:
        raise ValueError(f"no attacks to run from attacks={attacks!r} (norm={norm!r})")
    return out
