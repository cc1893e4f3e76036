"""What an attack run is: :class:`AttackSpec` (a registered attack, its threat model, hyper-parameters
and label) and :func:`parse_attacks`, which turns the ``attacks=`` argument of
:func:`pssr.evaluation.evaluate` (set names, attack names, dicts) into specs, with each dataset
family's defaults from :mod:`pssr.attacks.sets`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pssr.attacks.sets import ATTACK_SETS, DATASET_FAMILIES, dataset_family

log = logging.getLogger(__name__)

THREAT_MODELS = ("paper", "adaptive")


@dataclass(frozen=True)
class AttackSpec:
    """One attack to run: registry ``name``, ``threat_model``, keyword arguments, table ``label``.

    ``for_randomized``: run only on models whose forward pass is random (EOT attacks);
    ``needs_surrogate``: the attack gets ``surrogate=`` (the gray-box source) unless given one.
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


def _family(dataset: str | None) -> str | None:
    """The attacks package's budget family of ``dataset`` (None when unknown)."""
    if dataset is None:
        return None
    try:
        return dataset_family(dataset)
    except ValueError:
        return None


def _set_entries(set_name: str, dataset: str | None) -> list[Any]:
    """``ATTACK_SETS[set_name][family]``: the set's entries at ``dataset``'s default hyper-parameters."""
    sets = ATTACK_SETS
    if set_name not in sets:
        raise ValueError(f"unknown attack set {set_name!r}; available: {', '.join(sorted(sets)) or 'none'}")
    fam = _family(dataset)
    if fam is None:
        raise ValueError(
            f"the attack set {set_name!r} needs a dataset with known defaults (got dataset={dataset!r}); pass "
            f"dataset=... (one of {', '.join(sorted(DATASET_FAMILIES))}) "
            "or list attacks by name"
        )
    return list(sets[set_name][fam])


def _defaults_for(
    name: str, threat: str | None, dataset: str | None, norm: str
) -> tuple[Any | None, str | None, bool]:
    """The set entry describing attack ``name``, its set's name, and whether its hyper-parameters apply.

    Looks the name up as a label, then as a registry name, in the set of ``threat`` first, preferring
    entries of ``norm``. With an
    unknown dataset the entry still gives the threat model and flags, but not the hyper-parameters.
    """
    sets = ATTACK_SETS
    fam = _family(dataset)
    order = [t for t in ((threat,) if threat else ()) + THREAT_MODELS if t in sets]
    for field_name in ("label", "attack"):
        for same_norm in (True, False):
            for set_name in dict.fromkeys(order):
                families = [fam] if fam is not None else list(sets[set_name])
                for f in families:
                    for e in sets[set_name].get(f, ()):
                        if getattr(e, field_name, None) == name and (_entry_norm(e) == norm or not same_norm):
                            return e, set_name, fam is not None
    return None, None, False


def _from_set_entry(
    entry: Any, threat: str, label: str = "", extra: Mapping[str, Any] | None = None, with_kwargs: bool = True
) -> AttackSpec:
    kw = (
        {k: v for k, v in dict(entry.kwargs).items() if k not in ("eps", "norm", "seed")}
        if with_kwargs
        else {}
    )
    kw.update(extra or {})
    return AttackSpec(
        name=entry.attack,
        threat_model=threat,
        kwargs=kw,
        label=label or entry.label,
        for_randomized=bool(getattr(entry, "for_randomized", False)),
        needs_surrogate=bool(getattr(entry, "needs_surrogate", False)),
    )


def _entry_norm(entry: Any) -> str:
    return str(dict(entry.kwargs).get("norm", "linf"))


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
    name = name.strip().lower()
    threat = threat.strip().lower()
    entry, set_name, exact = _defaults_for(name, threat or None, dataset, norm)
    threat = threat or set_name or "paper"
    if entry is not None:
        return _from_set_entry(
            entry, threat, label=label or (entry.label if exact else name), extra=kw, with_kwargs=exact
        )
    return AttackSpec(
        name=name,
        threat_model=threat,
        kwargs=kw,
        label=label,
        needs_surrogate=name == "transfer" and "surrogate" not in kw,
    )


def parse_attacks(
    attacks: str | Sequence[str | Mapping[str, Any]], dataset: str | None = None, norm: str = "linf"
) -> list[AttackSpec]:
    """Attack specs from a set name, a comma list, or a list of names / dicts.

    * ``"paper"`` / ``"adaptive"`` expand to ``pssr.attacks.ATTACK_SETS[set][family of dataset]``
      under that threat model; entries of another norm than ``norm`` are left out (a worst case
      never mixes threat norms);
    * a name (a set label such as ``"cw-l2"`` or a registry name such as ``"pgd"``) runs under the
      threat model of the set it belongs to (``"paper"`` when in none) with that set's
      hyper-parameters for ``dataset``; ``"pgd@adaptive"`` chooses the threat model;
    * a dict ``{"name": "pgd", "steps": 100, "threat_model": "adaptive", "label": "pgd-100"}``
      passes its other keys to the attack (over the set's defaults).

    Labels are made unique per threat model (``pgd``, ``pgd#2``, ...). ``eps``, ``norm`` and
    ``seed`` are always those given to :func:`evaluate`.
    """
    if isinstance(attacks, str):
        items: list[Any] = [a for a in attacks.split(",") if a.strip()]
    elif isinstance(attacks, Sequence):
        items = list(attacks)
    else:
        raise ValueError(f"attacks must be a string or a list of names/dicts, got {type(attacks).__name__}")
    specs: list[AttackSpec] = []
    for item in items:
        if isinstance(item, str) and item.strip().lower() in THREAT_MODELS:
            set_name = item.strip().lower()
            for e in _set_entries(set_name, dataset):
                if _entry_norm(e) != norm:
                    log.info(
                        "attack set %r: %s (%s) left out of a %s evaluation",
                        set_name,
                        e.label,
                        _entry_norm(e),
                        norm,
                    )
                    continue
                specs.append(_from_set_entry(e, set_name))
        else:
            specs.append(_spec_from(item, dataset, norm))
    seen: dict[tuple[str, str], int] = {}
    out = []
    for s in specs:
        k = (s.threat_model, s.label)
        seen[k] = seen.get(k, 0) + 1
        if seen[k] > 1:
            s = AttackSpec(
                s.name, s.threat_model, s.kwargs, f"{s.label}#{seen[k]}", s.for_randomized, s.needs_surrogate
            )
        out.append(s)
    if not out:
        raise ValueError(f"no attacks to run from attacks={attacks!r} (norm={norm!r})")
    return out
