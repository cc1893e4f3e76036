"""parse_attacks and the attack-set tables give what they gave before AttackSpec was merged (issue 20).

``tests/data/attack_specs.json`` holds a digest of every output below, recorded with the code of
f28170a (two AttackSpec classes, set entries carrying eps and norm, ``evaluate`` parsing
``parse_attacks(expand_suites(attacks))``); the one AttackSpec must reproduce each of them: the
same attacks, hyper-parameters, labels, flags and errors, and the same set tables at each family's
budgets. To record it again on the old code::

    git archive f28170a src | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/src python tests/test_attack_specs_golden.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pssr.attacks import sets
from pssr.attacks.base import ATTACKS, NORMS
from pssr.attacks.sets import BUDGETS, expand_suites, suite_attacks

GOLDEN = Path(__file__).parent / "data" / "attack_specs.json"
DATASETS = ("mnist-10k", "FASHION-MNIST", "cifar10", "digits", None, "svhn")  # each family, none, unknown
DICTS = (
    [{"name": "pgd", "steps": 7, "threat_model": "adaptive", "label": "pgd-7"}],
    [{"name": "cw-l2", "steps": 5}],
    [{"name": "transfer"}, {"name": "transfer", "surrogate": None}],
    [{"name": "autoattack", "version": "custom", "attacks": ("apgd-ce",)}],
    [{"steps": 3}],
    [{"name": "pgd", "eps": 0.1}],
    ["paper", {"name": "fgsm", "label": "fgsm"}],
)
# the registry's attacks (as a list: other tests register attacks of their own in the same session)
REGISTERED = (
    "autoattack autoattack-bpda autoattack-rand bim cw cw-linf ddn deepfool fgsm mifgsm pgd pgd-bpda "
    "pgd-bpda-eot pgd-full square transfer"
).split()
LABELS = (
    "apgd apgd-bpda autoattack autoattack-bpda autoattack-rand cw-l2 cw-linf ddn-l2 deepfool-l2 fgsm mifgsm "
    "pgd pgd-bpda pgd-bpda-eot pgd-full square transfer-pgd"
).split()


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _specs(attacks: Any, dataset: str | None, norm: str) -> Any:
    try:
        return [s.to_dict() for s in sets.parse_attacks(attacks, dataset, norm)]
    except ValueError as e:
        return {"error": str(e)}


def parse_outputs() -> dict[str, Any]:
    """Every output compared: set, suite, label and registry names (with and without @threat), dicts.

    Keyed by what was parsed; :func:`grouped` gathers them for the golden file."""
    names = sorted(set(REGISTERED) | set(LABELS))
    items = [
        "paper",
        "adaptive",
        "fast",
        "paper,adaptive",
        "fast,fgsm",
        "pgd,pgd,pgd@adaptive",
        " PGD @Adaptive ",
    ]
    items += names + [f"{n}@{t}" for n in names for t in ("paper", "adaptive")]
    out: dict[str, Any] = {}
    for ds in DATASETS:
        for norm in ("linf", "l2"):
            for it in items:
                out[f"parse|{ds}|{norm}|{it}"] = _specs(it, ds, norm)
                try:
                    expanded = expand_suites(it, norm, ds)
                except ValueError as e:
                    expanded = {"error": str(e)}
                out[f"expand|{ds}|{norm}|{it}"] = expanded
                if not isinstance(expanded, dict):
                    out[f"parse-expanded|{ds}|{norm}|{it}"] = _specs(expanded, ds, norm)
            for i, d in enumerate(DICTS):
                out[f"dicts|{ds}|{norm}|{i}"] = _specs(d, ds, norm)
            try:
                out[f"suite|{ds}|{norm}"] = suite_attacks("fast", norm, ds)
            except ValueError as e:
                out[f"suite|{ds}|{norm}"] = {"error": str(e)}
    return out


SETS = ("paper", "adaptive", "fast", "paper,adaptive")


def grouped(outputs: dict[str, Any]) -> dict[str, Any]:
    """The sets and suite one by one; the other outputs by (kind, dataset, norm), to keep the file small."""
    out: dict[str, Any] = {}
    for k, v in outputs.items():
        kind, ds, norm, *item = k.split("|")
        if item and item[0] in SETS:
            out[k] = v
        else:
            out.setdefault(f"{kind}|{ds}|{norm}", {})[k] = v
    return out


# attacks registered after the golden file was recorded on the old code (they have no old outputs)
ADDED_SINCE = ("pgd-surgery-aware",)


def test_the_registered_attacks_are_all_compared() -> None:
    assert set(REGISTERED) <= set(ATTACKS.list())
    new = {n for n in ATTACKS.list() if not n.startswith("t-")} - set(REGISTERED)  # t-*: test attacks
    assert new <= set(ADDED_SINCE)


def test_parse_attacks_outputs_are_unchanged() -> None:
    golden = json.loads(GOLDEN.read_text())
    now = grouped(parse_outputs())
    changed = {k: v for k, v in now.items() if golden.get(k) != digest(v)}
    assert not changed, f"{len(changed)} groups of outputs changed, e.g. {dict(list(changed.items())[:3])}"
    assert not {k for k in golden if not k.startswith("table|")} - set(now)


def test_attack_set_tables_are_unchanged_at_each_budget() -> None:
    """Each entry with its family's budget and its norm put back where the old entries held them."""
    golden = json.loads(GOLDEN.read_text())
    for name, table in {**sets.ATTACK_SETS, **sets.SUITES}.items():
        for family, by_norm in table.items():
            for norm in NORMS:
                old_form = [
                    {
                        "label": s.label,
                        "attack": s.name,
                        "kwargs": {"eps": BUDGETS[family][norm], "norm": norm, **s.kwargs},
                        "for_randomized": s.for_randomized,
                        "needs_surrogate": s.needs_surrogate,
                        **({"threat_model": s.threat_model} if name in sets.SUITES else {}),
                    }
                    for s in by_norm.get(norm, ())
                ]
                assert digest(old_form) == golden[f"table|{name}|{family}|{norm}"], (name, family, norm)
                assert all(s.threat_model == name for s in by_norm.get(norm, ()) if name in sets.ATTACK_SETS)


def test_parse_attacks_expands_suites_itself() -> None:
    for norm in NORMS:
        for attacks in ("fast", "fast,fgsm", ["pgd", "fast"], "paper,adaptive"):
            assert sets.parse_attacks(attacks, "digits", norm) == sets.parse_attacks(
                expand_suites(attacks, norm, "digits"), "digits", norm
            )


if __name__ == "__main__":  # records GOLDEN with the code of f28170a (see the module docstring)
    from pssr.attacks import spec as old_spec

    # evaluate() parsed attacks=... as parse_attacks(expand_suites(...)) then; old entries held their norm
    sets.parse_attacks = lambda a, ds=None, norm="linf": old_spec.parse_attacks(  # type: ignore[misc]
        expand_suites(a, norm, ds), ds, norm
    )
    golden = {k: digest(v) for k, v in grouped(parse_outputs()).items()}
    for name, table in {**sets.ATTACK_SETS, **sets.SUITES}.items():
        for family, entries in table.items():
            for norm in NORMS:
                golden[f"table|{name}|{family}|{norm}"] = digest(
                    [e.to_dict() for e in entries if e.norm == norm]
                )
    GOLDEN.write_text(json.dumps(golden, indent=0, sort_keys=True))
