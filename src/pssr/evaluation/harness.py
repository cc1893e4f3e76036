"""The evaluation harness: clean and robust accuracy under two threat models, worst case per example.

``evaluate(models, data, attacks=...)`` runs every attack on every model over the same examples and
returns a :class:`~pssr.evaluation.report.Report` built from per-example records.

Threat models, always side by side (see ``docs/report-schema.md`` and DESIGN.md):

* ``paper`` -- the gray-box protocol of purification papers: ``x_adv`` is crafted against the
  *undefended classifier* and then fed to the defense. The source is ``gray_box_source[name]`` when
  given, else ``model.classifier`` for a purification defense (a model with both ``purify`` and
  ``classifier``), else the model itself (for an undefended classifier the protocol is white-box).
* ``adaptive`` -- white-box on the whole defense: the attack gets the full model (attacks named
  ``*-bpda*`` / ``*-eot`` use its BPDA / EOT views), plus gradient-free (Square) and transfer controls.

Per model the harness (1) runs the sanity checks of :mod:`pssr.evaluation.checks`, (2) predicts on
the clean examples, (3) runs each attack at each eps on the examples it classifies correctly (an
example misclassified clean is non-robust everywhere), and (4) computes from the records the
accuracy per attack, the worst case per example over all attacks of a threat model (an example
counts robust only if it survives every one) and over both threat models, time per attack, and the
post-run checks. With ``state_dir`` the work is saved after every batch and resumed on rerun.

Randomness: each batch of each unit is reseeded from ``seed`` and the unit's name (global torch,
numpy and python RNGs, and every submodule with a ``reseed(seed)`` method, e.g. a randomized
defense), so results do not depend on the order or on interruptions. The caller's global RNG
states are restored at the end.

Several processes (``torchrun --nproc_per_node=N -m pssr evaluate ...``, or any caller that runs
``evaluate`` on every rank of a process group): the batches (*chunks*) of each unit are dealt out in
rounds of N, rank ``k`` taking chunk ``c + k`` of the round starting at ``c``. A chunk is the same
batch with the same derived seed whichever rank runs it, so the records are exactly those of one
process (same order, same content). After every round the records are gathered on every rank; rank 0
alone reads and writes the resumable state (it hands each unit's saved progress to the others), so a
run interrupted at any world size resumes at any other. The sanity checks and the example images run
on rank 0 only and their results are broadcast. Every rank returns the same :class:`Report`; writing it
is the caller's job, on rank 0 (:func:`pssr.evaluation.loading.evaluate_checkpoints` does that).
Timings are then summed over ranks (device-seconds), not wall-clock seconds. On CUDA each rank runs
on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pssr import distributed as D
from pssr.attacks import ATTACK_SETS, DATASET_FAMILIES, create_attack, dataset_family
from pssr.attacks.sets import expand_suites
from pssr.data import Dataset, Split
from pssr.defaults import budget, dataset_name
from pssr.evaluation import checks as checks_mod
from pssr.evaluation.checks import CheckConfig
from pssr.evaluation.report import Report, summarize, worst_case_table
from pssr.evaluation.state import StateStore, UnitState, unit_fingerprint
from pssr.utils import run_metadata

log = logging.getLogger(__name__)

THREAT_MODELS = ("paper", "adaptive")
NORMS = ("linf", "l2")


# ----------------------------------------------------------------------------------------------
# Attack specifications
# ----------------------------------------------------------------------------------------------


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


def _create_attack(name: str, model: nn.Module, **kw: Any) -> Any:
    return create_attack(name, model, **kw)


def default_eps(dataset: str | None, norm: str) -> float:
    """The budget of ``dataset`` in ``norm`` (:func:`pssr.defaults.budget`, the one source of truth)."""
    return budget(dataset, norm)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _derived_seed(seed: int, *parts: Any) -> int:
    h = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).hexdigest()
    return int(h[:8], 16)


def _reseed(model: nn.Module, seed: int) -> None:
    """Seed the global RNGs and every submodule that offers ``reseed`` (randomized defenses)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    seen = set()
    for m in model.modules():
        fn = getattr(m, "reseed", None)
        if callable(fn) and id(m) not in seen:
            seen.add(id(m))
            fn(seed)


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        if isinstance(v, Tensor):
            h.update(str(tuple(v.shape)).encode())
            h.update(
                v.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                if v.numel()
                else b""
            )
    return h.hexdigest()[:24]


def _data_fingerprint(x: Tensor, y: Tensor) -> str:
    h = hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _class_coverage(split_y: Tensor, y: Tensor) -> dict[str, Any]:
    """How many of the split's classes the evaluated examples hold (and which are missing)."""
    have, full = set(y.tolist()), set(split_y.tolist())
    return {"in_subset": len(have), "in_split": len(full), "missing": sorted(full - have)}


def _lp(d: Tensor, norm: str) -> Tensor:
    flat = d.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


class _EvalMode:
    """Context: every submodule in eval mode, then each restored to its own mode."""

    def __init__(self, *models: nn.Module) -> None:
        self.models = models

    def __enter__(self) -> None:
        self.modes = [(m, m.training) for mod in self.models for m in mod.modules()]
        for mod in self.models:
            mod.eval()

    def __exit__(self, *exc: object) -> None:
        for m, t in self.modes:
            m.training = t


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(1)


def _describe(model: nn.Module, source_kind: str) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "purifier": callable(getattr(model, "purify", None)),
        "bpda": callable(getattr(model, "bpda", None)),
        "gray_box_source": source_kind,
        "fingerprint": _model_fingerprint(model),
    }
    cfg = getattr(model, "config", None)
    if callable(cfg):
        try:
            c = cfg()
        except TypeError:
            c = None
        if isinstance(c, Mapping):
            d["config"] = {
                k: v for k, v in c.items() if isinstance(v, (str, int, float, bool, type(None), list))
            }
    return d


def _model_config(model: nn.Module) -> Any:
    """The settings of a model that its weights do not show (a PSSR's removal ratio, a baseline's
    JPEG quality): a dataclass ``config`` attribute or a ``config()`` mapping, JSON-able; else None.
    Part of every unit's fingerprint, so that the same weights with another ratio are a new model."""
    cfg = getattr(model, "config", None)
    if callable(cfg):
        try:
            cfg = cfg()
        except TypeError:
            return None
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    return _jsonable(cfg) if isinstance(cfg, Mapping) else None


def _gray_box_source(
    name: str, model: nn.Module, given: Mapping[str, nn.Module] | None
) -> tuple[nn.Module, str]:
    if given and name in given:
        return given[name], "user"
    clf = getattr(model, "classifier", None)
    if callable(getattr(model, "purify", None)) and isinstance(clf, nn.Module):
        return clf, "classifier"
    return model, "self"


def _as_eps_list(eps: float | Sequence[float] | None, dataset: str | None, norm: str) -> list[float]:
    if eps is None:
        return [default_eps(dataset, norm)]
    vals = [eps] if isinstance(eps, (int, float)) else list(eps)
    if not vals:
        raise ValueError("eps must be a number or a non-empty list of numbers")
    out = []
    for e in vals:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= 0:
            raise ValueError(f"eps values must be finite numbers > 0, got {e!r}")
        out.append(float(e))
    return out


# ----------------------------------------------------------------------------------------------
# The harness
# ----------------------------------------------------------------------------------------------


def evaluate(
    models: Mapping[str, nn.Module] | nn.Module,
    data: Split | Dataset,
    attacks: str | Sequence[str | Mapping[str, Any]] = "paper",
    eps: float | Sequence[float] | None = None,
    norm: str = "linf",
    n: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    checks: bool | CheckConfig = True,
    gray_box_source: Mapping[str, nn.Module] | None = None,
    *,
    dataset: str | None = None,
    subset_seed: int | None = None,
    n_examples: int = 8,
    compute: bool | Collection[str] = True,
) -> Report:
    """Evaluate ``models`` on ``data`` under ``attacks``; return a :class:`Report`.

    Args:
        models: ``{name: model}`` (a bare module is named ``"model"``); each maps (N, C, H, W)
            images in [0, 1] to logits (N, K). Defenses may offer ``purify``, ``classifier``, ``bpda()``.
        data: a :class:`Split` (e.g. ``ds.test``) or a :class:`Dataset` (its test split is used and
            its name picks default eps / attack hyper-parameters).
        attacks: ``"paper"``, ``"adaptive"``, ``"paper,adaptive"``, ``"fast"`` (a suite spanning both
            threat models, minutes instead of hours: docs/attack-suites.md), names (``"pgd"``,
            ``"square@adaptive"``) or dicts (see :func:`parse_attacks`).
        eps: budget (in pixel units of [0, 1], in ``norm``), or a list of budgets; None = the
            dataset's default (needs ``dataset``).
        norm: ``"linf"`` or ``"l2"``.
        n: evaluate the first ``n`` examples (or a seeded random ``n`` with ``subset_seed``); None = all.
        batch_size: examples per batch (and per resumable chunk).
        seed: the attacks' seed and the root of every per-batch seed.
        device: run on this device (models are moved there); None = each model's own device. Under
            torchrun a CUDA device means ``cuda:LOCAL_RANK`` on each rank (see the module docstring).
        state_dir: folder for resumable state; rerunning with the same arguments continues.
        progress: show a progress bar.
        checks: run the sanity checks (True, False, or a :class:`CheckConfig`).
        gray_box_source: ``{name: classifier}`` the paper-protocol attacks target instead of the default.
        dataset: dataset name for default budgets / hyper-parameters; by default the name ``data``
            carries (a Dataset's ``name``, a Split's ``dataset``) or, failing that, a model's.
        subset_seed: with ``n``, draw a seeded random subset instead of the first ``n``.
        n_examples: images kept per purification defense for the report's example grid (0 = none).
        compute: False computes nothing: the report holds what ``state_dir`` has saved so far (a
            report of an unfinished evaluation). Units not complete are listed per model as
            ``pending`` (``config["complete"]`` is False), and a model's worst-case rows of a threat
            model with a pending attack are left out: over fewer attacks they would be upper bounds.
            The example-image grid (made by attacking a few images) is left out too. A collection of
            model names computes those models only and reports the others from ``state_dir`` as
            above (e.g. a CPU session finishing chosen rows of an evaluation a GPU began).
    """
    # ---- validate -------------------------------------------------------------------------------
    if isinstance(models, nn.Module):
        models = {"model": models}
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {name: nn.Module}")
    for k, m in models.items():
        if not isinstance(k, str) or not k.strip() or "|" in k:
            raise ValueError(f"model names must be non-empty strings without '|', got {k!r}")
        if not isinstance(m, nn.Module):
            raise ValueError(f"models[{k!r}] must be an nn.Module returning logits, got {type(m).__name__}")
    if gray_box_source:
        unknown = set(gray_box_source) - set(models)
        if unknown:
            raise ValueError(f"gray_box_source names {sorted(unknown)} are not in models ({sorted(models)})")
    if isinstance(data, Dataset):
        dataset = dataset or data.name
        split = data.test
    elif isinstance(data, Split):
        split = data
        # a split carries its dataset's name (pssr.data.load), a trained model may too
        dataset = dataset or split.dataset or dataset_name(*models.values())
    else:
        raise ValueError(f"data must be a pssr.data.Split or Dataset, got {type(data).__name__}")
    norm = norm.lower() if isinstance(norm, str) else norm
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; choose from {NORMS}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(compute, bool):
        if isinstance(compute, str) or not compute or not all(isinstance(c, str) for c in compute):
            raise ValueError(
                f"compute must be True, False or a non-empty collection of model names, got {compute!r}"
            )
        unknown = sorted(set(compute) - set(models))
        if unknown:
            raise ValueError(f"compute names {unknown}, not among the models ({', '.join(models)})")
        compute = frozenset(compute)
    if compute is False and (state_dir is None or not Path(state_dir, "state.json").is_file()):
        raise ValueError(
            "compute=False reports what an evaluation saved in its state folder; "
            + ("give state_dir" if state_dir is None else f"{state_dir} holds none (no state.json)")
        )
    check_cfg = CheckConfig() if checks is True else checks if isinstance(checks, CheckConfig) else None
    if checks is not False and check_cfg is None:
        raise ValueError(f"checks must be True, False or a CheckConfig, got {checks!r}")
    eps_list = _as_eps_list(eps, dataset, norm)
    specs = parse_attacks(expand_suites(attacks, norm, dataset), dataset, norm)  # "fast": a suite
    dev = None
    if device is not None:
        from pssr.utils import default_device

        dev = default_device(device)
    # Under torchrun: join the process group (gloo on CPU, NCCL on CUDA); a no-op in one process.
    first_dev = _model_device(next(iter(models.values())))
    info = D.init_distributed(dev if dev is not None else first_dev)
    if info.enabled and dev is None and first_dev.type == "cuda":
        dev = torch.device("cuda")
    if dev is not None:
        dev = D.device_for(info, dev)  # cuda:LOCAL_RANK under torchrun, else unchanged
        for m in models.values():
            m.to(dev)
        for m in (gray_box_source or {}).values():
            m.to(dev)

    # ---- the examples ---------------------------------------------------------------------------
    n_total = len(split)
    n_eval = n_total if n is None else min(n, n_total)
    if subset_seed is None:
        idx = torch.arange(n_eval)
    else:
        idx = (
            torch.randperm(n_total, generator=torch.Generator().manual_seed(subset_seed))[:n_eval]
            .sort()
            .values
        )
    x_all, y_all = split.x[idx], split.y[idx]
    index = idx.tolist()
    coverage = _class_coverage(split.y, y_all)
    if coverage["missing"] and info.is_main:
        log.warning(
            "the %d evaluated examples hold %d of the split's %d classes (missing: %s): a split stored class "
            "by class gives a biased first n; pass subset_seed (--subset-seed) for a random subset",
            n_eval,
            coverage["in_subset"],
            coverage["in_split"],
            coverage["missing"],
        )

    sources = {name: _gray_box_source(name, m, gray_box_source) for name, m in models.items()}
    descriptions = {name: _describe(m, sources[name][1]) for name, m in models.items()}
    settings = {
        "models": {k: d["fingerprint"] for k, d in descriptions.items()},
        "sources": {k: _model_fingerprint(s) for k, (s, _) in sources.items()},
        "data": _data_fingerprint(x_all, y_all),
        "index": hashlib.sha256(str(index).encode()).hexdigest()[:16],
        "attacks": [s.to_dict() for s in specs],
        "eps": eps_list,
        "norm": norm,
        "seed": seed,
        "batch_size": batch_size,
        "checks": check_cfg.to_dict() if check_cfg else None,
    }
    # Rank 0 alone opens (and later writes) the state folder; the other ranks keep an in-memory store
    # and receive each unit's saved progress from rank 0. A refused state raises on every rank.
    opened: dict[str, StateStore] = {}

    def open_store() -> None:
        opened["store"] = StateStore(state_dir, settings)

    D.on_main(open_store, info)
    store = opened["store"] if info.is_main else StateStore(None, settings)
    config = {
        "dataset": dataset,
        "n": n_eval,
        "n_available": n_total,
        "subset_seed": subset_seed,
        "classes": coverage,
        "eps": eps_list,
        "norm": norm,
        "seed": seed,
        "batch_size": batch_size,
        "attacks": [s.to_dict() for s in specs],
        "threat_models": sorted({s.threat_model for s in specs}, key=THREAT_MODELS.index),
        "checks": check_cfg.to_dict() if check_cfg else None,
        "state_dir": str(state_dir) if state_dir is not None else None,
    }
    if info.enabled:
        config["distributed"] = {
            "world_size": info.world_size,
            "backend": info.backend,
            "seconds": "summed over ranks (device-seconds), not wall-clock",
        }

    # Keep the caller's global RNG streams untouched by the per-batch reseeding.
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda_devs = (
        [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    try:
        with torch.random.fork_rng(devices=cuda_devs):
            # what every unit of a model depends on besides its attack and eps (see state.unit_fingerprint)
            common = {k: settings[k] for k in ("data", "index", "norm", "seed", "batch_size", "checks")}
            unit_inputs = {
                name: {
                    **common,
                    "model": settings["models"][name],
                    "source": settings["sources"][name],
                    "model_config": _model_config(m),
                }
                for name, m in models.items()
            }
            run = _Run(
                models,
                sources,
                x_all,
                y_all,
                index,
                specs,
                eps_list,
                norm,
                batch_size,
                seed,
                dev,
                store,
                progress and info.is_main,
                check_cfg,
                n_examples,
                info,
                unit_inputs,
                compute,
            )
            run.execute()
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    # ---- assemble the report --------------------------------------------------------------------
    records = run.records()
    results = summarize(records, run.unit_meta)
    if run.pending:  # a worst case over fewer attacks than the threat model's is an upper bound: left out
        partial = {(m, p.split("/", 1)[0]) for m, units in run.pending.items() for p in units if "/" in p}
        partial |= {(m, "all") for m, _ in partial}
        results = [
            r
            for r in results
            if not (r["attack"] == "worst-case" and (r["model"], r["threat_model"]) in partial)
        ]
    config["complete"] = not run.pending
    model_info: dict[str, Any] = {}
    for name in models:
        info = dict(descriptions[name])
        c, f = run.pre_checks.get(name, ({}, []))
        post_c, post_f = _post_checks(name, records, run.unit_meta, results, check_cfg)
        info["checks"] = {**c, **post_c} if check_cfg else None
        info["flags"] = list(f) + list(post_f)
        info["skipped_attacks"] = run.skipped.get(name, {})
        if run.pending.get(name):
            info["pending"] = run.pending[name]
        model_info[name] = info
    return Report(
        config=config,
        models=model_info,
        results=results,
        records=records,
        metadata=run_metadata(),
        examples=run.examples,
    )


def _post_checks(
    name: str,
    records: list[dict[str, Any]],
    unit_meta: dict[tuple[str, str, str], dict[str, Any]],
    results: list[dict[str, Any]],
    cfg: CheckConfig | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if cfg is None:
        return {}, []
    mine = [r for r in records if r["model"] == name and r["attack"] != "clean"]
    gf = {(t, a): bool(meta.get("black_box")) for (m, t, a), meta in unit_meta.items() if m == name}
    out: dict[str, Any] = {}
    flags: list[dict[str, Any]] = []
    out["black_box"], f = checks_mod.check_black_box(mine, gf, cfg.black_box_margin)
    flags += f
    worst = worst_case_table(results, name)
    out["adaptive_gap"], f = checks_mod.check_adaptive_gap(worst, cfg.adaptive_gap)
    flags += f
    out["budget"], f = checks_mod.check_budget(mine, cfg.budget_tol)
    flags += f
    out["collapse"], f = checks_mod.check_collapse(
        [r for r in records if r["model"] == name and r["attack"] == "clean"]
    )
    flags += f
    return out, flags


# Adaptive attacks that are the same attack as a paper-protocol one on a model with no BPDA view
# that is its own gray-box source (see _Run._reuse_twin).
_SAME_ON_A_PLAIN_MODEL: Mapping[str, str] = {"autoattack-bpda": "autoattack"}


class _Run:
    """The work of one ``evaluate`` call, cut into resumable units and chunks."""

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        sources: dict[str, tuple[nn.Module, str]],
        x: Tensor,
        y: Tensor,
        index: list[int],
        specs: list[AttackSpec],
        eps_list: list[float],
        norm: str,
        batch_size: int,
        seed: int,
        device: torch.device | None,
        store: StateStore,
        progress: bool,
        check_cfg: CheckConfig | None,
        n_examples: int,
        info: D.DistInfo | None = None,
        unit_inputs: dict[str, dict[str, Any]] | None = None,
        compute: bool | frozenset[str] = True,
    ) -> None:
        self.models, self.sources = models, sources
        self.x, self.y, self.index = x, y, index
        self.specs, self.eps_list, self.norm = specs, eps_list, norm
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.store, self.progress, self.check_cfg, self.n_examples = store, progress, check_cfg, n_examples
        self.info = info or D.DistInfo()
        self.unit_inputs = unit_inputs or {}
        self.n = x.shape[0]
        self.n_chunks = max(1, math.ceil(self.n / batch_size))
        self.units: list[UnitState] = []
        self.unit_meta: dict[tuple[str, str, str], dict[str, Any]] = {}  # (model, threat, attack) -> meta
        self.pre_checks: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        self.examples: dict[str, dict[str, np.ndarray]] = {}
        self.skipped: dict[str, dict[str, str]] = {}  # model -> {"threat/label": reason}
        # the models whose units are computed; the others' units not saved complete are pending
        self.computed = frozenset(models) if compute is True else frozenset() if compute is False else compute
        self.pending: dict[str, dict[str, str]] = {}  # model -> {"threat/label": what is missing}

    def records(self) -> list[dict[str, Any]]:
        return [r for u in self.units for r in u.records]

    def _fp(self, name: str, spec: AttackSpec | None = None, eps: float | None = None) -> str:
        """Fingerprint of a unit of model ``name`` (of attack ``spec`` at ``eps`` when given)."""
        extra: dict[str, Any] = {}
        if spec is not None:
            attack = spec.to_dict()
            for (
                k,
                v,
            ) in spec.kwargs.items():  # a model among the kwargs (a surrogate): its weights, not its repr
                if isinstance(v, nn.Module):
                    attack["kwargs"][k] = _model_fingerprint(v)
            extra = {"attack": attack, "eps": eps}
        return unit_fingerprint({**self.unit_inputs.get(name, {"model": name}), **extra})

    def _load(self, key: str, fp: str) -> UnitState:
        """Unit ``key``'s saved progress (if saved with inputs ``fp``): read by rank 0 (the only rank
        with a state folder), the same copy on every rank."""
        if not self.info.enabled:
            return self.store.load(key, fp)
        return D.on_main(lambda: self.store.load(key, fp), self.info)

    def _slice(self, c: int) -> slice:
        return slice(c * self.batch_size, min(self.n, (c + 1) * self.batch_size))

    def _run_chunks(
        self, unit: UnitState, work: Callable[[int], tuple[list[dict[str, Any]], float]], bar: Any
    ) -> None:
        """Run ``work(c) -> (records, seconds)`` for the chunks ``unit`` has not done, saving after each.

        One process: chunk by chunk. N ranks: rounds of N chunks, rank k taking the round's k-th;
        the round's records are gathered in chunk order on every rank, then the unit is saved (to
        disk by rank 0 only; the other ranks' stores are in memory).
        """
        world = self.info.world_size
        c = start = unit.chunks_done
        while c < self.n_chunks:
            stop = min(self.n_chunks, c + world)
            if self.info.enabled:
                mine = c + self.info.rank
                parts = D.all_gather_results(lambda m=mine, s=stop: work(m) if m < s else None, self.info)
                done = [p for p in parts if p is not None]  # rank order = chunk order
            else:
                done = [work(c)]
            for recs, seconds in done:
                unit.seconds += seconds
                unit.records.extend(recs)
            unit.chunks_done = stop
            self.store.save(unit)
            bar.update(stop - c)
            c = stop
        if c > start and self.info.is_main:  # a line per unit computed: long runs go with --no-progress
            acc = sum(bool(r["correct"]) for r in unit.records) / max(1, len(unit.records))
            log.info(
                "%s: accuracy %.1f%% (n=%d), %.0f s%s",
                unit.key,
                100 * acc,
                len(unit.records),
                unit.seconds,
                "" if start == 0 else f" (resumed at batch {start + 1})",
            )

    def _bar(self, total: int) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=not self.progress, desc="evaluate", unit="batch", leave=False)

    def execute(self) -> None:
        per_model = self.n_chunks * (1 + len(self.specs) * len(self.eps_list))
        with self._bar(per_model * len(self.models)) as bar:
            for name, model in self.models.items():
                dev = self.device or _model_device(model)
                with _EvalMode(model, self.sources[name][0]):
                    if self.check_cfg is not None:
                        self._checks(name, model, dev)
                    clean_pred = self._clean(name, model, dev, bar)
                    for eps in self.eps_list:
                        for spec in self.specs:
                            if clean_pred is None:  # report-only, clean predictions not saved yet
                                self._pend(
                                    name, f"{spec.threat_model}/{spec.label}", "needs the clean predictions"
                                )
                            else:
                                self._attack(name, model, spec, eps, clean_pred, dev, bar)
                    if (
                        name in self.computed
                        and self.n_examples > 0
                        and callable(getattr(model, "purify", None))
                        and self.specs
                    ):
                        self._examples(name, model, clean_pred, dev)

    # -- units ------------------------------------------------------------------------------------

    def _pend(self, name: str, what: str, why: str) -> None:
        self.pending.setdefault(name, {})[what] = why

    def _unsaved(self, name: str, what: str, unit: UnitState) -> bool:
        """``name`` not computed (report-only) and ``unit`` not saved complete: list it as pending, True."""
        if name in self.computed or unit.complete:
            return False
        done = f"{unit.chunks_done} of {self.n_chunks} batches saved" if unit.chunks_done else "not started"
        self._pend(name, what, done)
        return True

    def _checks(self, name: str, model: nn.Module, dev: torch.device) -> None:
        cfg = self.check_cfg
        assert cfg is not None

        def run() -> dict[str, Any]:
            unit = self.store.load(f"checks|{name}", self._fp(name))
            if not unit.complete and name not in self.computed:
                return {"results": {}, "flags": [], "pending": True}
            if not unit.complete:
                k = min(cfg.n, self.n)
                x, y = self.x[:k].to(dev), self.y[:k].to(dev)
                t0 = time.perf_counter()
                _reseed(model, _derived_seed(self.seed, unit.key))
                res, flags = checks_mod.run_pre_checks(
                    model, x, y, self.norm, self.seed, cfg, eps=max(self.eps_list)
                )
                unit.meta = {"results": res, "flags": flags}
                unit.seconds, unit.n_chunks, unit.chunks_done = time.perf_counter() - t0, 1, 1
                self.store.save(unit)
                for f in flags:
                    log.warning("check [%s] %s: %s", name, f["name"], f["message"])
            return unit.meta

        # Rank 0 alone runs the checks (they look at the first cfg.n examples); every rank gets the
        # results, which decide e.g. whether the EOT attacks run.
        meta = D.on_main(run, self.info)
        if meta.get("pending"):
            self._pend(name, "checks", "not started")
        self.pre_checks[name] = (meta["results"], meta["flags"])

    def _clean(self, name: str, model: nn.Module, dev: torch.device, bar: Any) -> Tensor | None:
        unit = self._load(f"clean|{name}", self._fp(name))
        unit.n_chunks = self.n_chunks
        bar.update(unit.chunks_done)
        if self._unsaved(name, "clean", unit):
            return None

        def work(c: int) -> tuple[list[dict[str, Any]], float]:
            sl = self._slice(c)
            t0 = time.perf_counter()
            _reseed(model, _derived_seed(self.seed, unit.key, c))
            pred = _predict(model, self.x[sl].to(dev)).cpu()
            seconds = time.perf_counter() - t0
            ys = self.y[sl]
            recs = []
            for j in range(pred.shape[0]):
                i = sl.start + j
                p, lab = int(pred[j]), int(ys[j])
                recs.append(
                    {
                        "model": name,
                        "threat_model": "none",
                        "attack": "clean",
                        "eps": 0.0,
                        "index": self.index[i],
                        "label": lab,
                        "clean_pred": p,
                        "adv_pred": p,
                        "correct": p == lab,
                        "attacked": False,
                        "pert_norm": 0.0,
                    }
                )
            return recs, seconds

        self._run_chunks(unit, work, bar)
        self.units.append(unit)
        self.unit_meta[(name, "none", "clean")] = {"seconds": unit.seconds, "gradient_free": False}
        return torch.tensor([r["clean_pred"] for r in unit.records], dtype=torch.int64)

    def _attack(
        self,
        name: str,
        model: nn.Module,
        spec: AttackSpec,
        eps: float,
        clean_pred: Tensor,
        dev: torch.device,
        bar: Any,
    ) -> None:
        key = f"attack|{name}|{spec.threat_model}|{spec.label}|{eps!r}"
        if spec.for_randomized and "checks" in self.pending.get(name, {}):
            self._pend(
                name, f"{spec.threat_model}/{spec.label}", "runs or not as the checks find (not saved yet)"
            )
            return
        reason = self._skip_reason(name, model, spec)
        if reason:
            self.skipped.setdefault(name, {})[f"{spec.threat_model}/{spec.label}"] = reason
            bar.update(self.n_chunks)
            return
        unit = self._load(key, self._fp(name, spec, eps))
        unit.n_chunks = self.n_chunks
        bar.update(unit.chunks_done)
        if not unit.complete and self._reuse_twin(name, model, spec, eps, unit):
            bar.update(self.n_chunks - unit.chunks_done)
            self._finish_unit(name, spec, eps, unit)
            return
        if self._unsaved(
            name, f"{spec.threat_model}/{spec.label}" + (f"@{eps:g}" if len(self.eps_list) > 1 else ""), unit
        ):
            return
        source, source_kind = self.sources[name]
        target = model if spec.threat_model == "adaptive" else source
        atk = None
        if not unit.complete or not unit.meta:
            atk = self._build(name, model, spec, eps)
            cfg = atk.config() if callable(getattr(atk, "config", None)) else {"name": spec.name}
            # Black-box controls: gradient-free attacks and transfer from a surrogate. When they beat
            # the white-box attacks, the white-box gradients are misleading (checks).
            black_box = (
                bool(getattr(atk, "gradient_free", False)) or getattr(atk, "surrogate", None) is not None
            )
            unit.meta = {
                "config": _jsonable(cfg),
                "gradient_free": bool(getattr(atk, "gradient_free", False)),
                "black_box": black_box,
                "target": "model" if target is model else f"gray-box source ({source_kind})",
            }
        correct_clean = clean_pred == self.y

        def work(c: int) -> tuple[list[dict[str, Any]], float]:
            sl = self._slice(c)
            xs, ys = self.x[sl], self.y[sl]
            mask = correct_clean[sl]
            adv_pred = clean_pred[sl].clone()
            pert = torch.zeros(xs.shape[0])
            t0 = time.perf_counter()
            if mask.any():
                _reseed(model, _derived_seed(self.seed, key, c))
                if target is not model:
                    _reseed(target, _derived_seed(self.seed, key, c))
                xm, ym = xs[mask].to(dev), ys[mask].to(dev)
                try:
                    x_adv = atk(xm, ym)  # type: ignore[misc]
                except Exception as e:
                    raise RuntimeError(
                        f"attack {spec.label!r} ({spec.threat_model}) failed on model {name!r}, "
                        f"eps={eps:g}, batch {c}: {type(e).__name__}: {e}"
                    ) from e
                if x_adv.shape != xm.shape:
                    raise RuntimeError(
                        f"attack {spec.label!r} returned shape {tuple(x_adv.shape)}, expected "
                        f"{tuple(xm.shape)}"
                    )
                adv_pred[mask] = _predict(model, x_adv).cpu()
                pert[mask] = _lp((x_adv - xm).float(), self.norm).cpu()
            seconds = time.perf_counter() - t0
            recs = []
            for j in range(xs.shape[0]):
                i = sl.start + j
                lab, a = int(ys[j]), bool(mask[j])
                recs.append(
                    {
                        "model": name,
                        "threat_model": spec.threat_model,
                        "attack": spec.label,
                        "eps": eps,
                        "index": self.index[i],
                        "label": lab,
                        "clean_pred": int(clean_pred[i]),
                        "adv_pred": int(adv_pred[j]),
                        "correct": a and int(adv_pred[j]) == lab,
                        "attacked": a,
                        "pert_norm": float(pert[j]),
                    }
                )
            return recs, seconds

        self._run_chunks(unit, work, bar)
        self._finish_unit(name, spec, eps, unit)

    def _finish_unit(self, name: str, spec: AttackSpec, eps: float, unit: UnitState) -> None:
        """Add a finished attack unit to the run's records and its timing/config to ``unit_meta``."""
        self.units.append(unit)
        meta = self.unit_meta.setdefault((name, spec.threat_model, spec.label), {})
        meta.update(
            {
                "gradient_free": unit.meta["gradient_free"],
                "black_box": unit.meta.get("black_box", False),
                "config": unit.meta["config"],
                "target": unit.meta["target"],
                "name": spec.name,
            }
        )
        if unit.meta.get("reused_from"):
            meta["reused_from"] = unit.meta["reused_from"]
        meta.setdefault("seconds", {})[repr(eps)] = unit.seconds

    def _reuse_twin(self, name: str, model: nn.Module, spec: AttackSpec, eps: float, unit: UnitState) -> bool:
        """Fill ``unit`` with the records of its paper-protocol twin when both are the same attack.

        On a model without a ``bpda()`` view that is its own gray-box source (an undefended or
        adversarially trained classifier), ``autoattack-bpda`` is AutoAttack on the model, exactly
        what the paper column's ``autoattack`` with the same settings already ran: rerunning it
        costs the most expensive attack of the suite again (tens of minutes on a robust model on a
        CPU) for a second sample of the same thing. The records are copied, relabelled, and the
        unit says so (``reused_from``). Only when the twin is complete; otherwise it runs.
        """
        twin_name = _SAME_ON_A_PLAIN_MODEL.get(spec.name)
        if (
            twin_name is None
            or spec.threat_model != "adaptive"
            or callable(getattr(model, "bpda", None))
            or self.sources[name][0] is not model
        ):
            return False
        twin = next(
            (
                t
                for t in self.specs
                if t.threat_model == "paper" and t.name == twin_name and t.kwargs == spec.kwargs
            ),
            None,
        )
        if twin is None:
            return False
        done = self._load(
            f"attack|{name}|{twin.threat_model}|{twin.label}|{eps!r}", self._fp(name, twin, eps)
        )
        if not done.complete or not done.meta:
            return False
        unit.records = [dict(r, threat_model=spec.threat_model, attack=spec.label) for r in done.records]
        unit.chunks_done, unit.n_chunks, unit.seconds = self.n_chunks, self.n_chunks, 0.0
        unit.meta = {**done.meta, "reused_from": f"{twin.threat_model}/{twin.label}"}
        self.store.save(unit)  # to disk on rank 0 only (the other ranks' stores are in memory)
        return True

    def _randomized(self, name: str, model: nn.Module) -> bool:
        if bool(getattr(model, "randomized", False)):
            return True
        res = self.pre_checks.get(name, ({}, []))[0]
        return bool(res.get("randomness", {}).get("random", False))

    def _skip_reason(self, name: str, model: nn.Module, spec: AttackSpec) -> str | None:
        if spec.for_randomized and not self._randomized(name, model):
            return "for randomized defenses only; this model's forward pass is deterministic"
        if spec.needs_surrogate and "surrogate" not in spec.kwargs and self.sources[name][0] is model:
            return "transfer needs a surrogate other than the model itself (give gray_box_source)"
        return None

    def _build(self, name: str, model: nn.Module, spec: AttackSpec, eps: float) -> Any:
        source = self.sources[name][0]
        target = model if spec.threat_model == "adaptive" else source
        kw = dict(spec.kwargs)
        if spec.needs_surrogate and "surrogate" not in kw:
            kw["surrogate"] = source
        return _create_attack(spec.name, target, eps=eps, norm=self.norm, seed=self.seed, **kw)

    def _examples(self, name: str, model: nn.Module, clean_pred: Tensor, dev: torch.device) -> None:
        """Clean / adversarial / purified images of the first few correctly classified examples."""
        # The strongest attack at the first eps: lowest accuracy on this model, adaptive ones first.
        eps = self.eps_list[0]
        runnable = [s for s in self.specs if not self._skip_reason(name, model, s)]
        if not runnable:
            return
        acc: dict[tuple[str, str], float] = {}
        for u in self.units:
            rs = [r for r in u.records if r["model"] == name and r["attack"] != "clean" and r["eps"] == eps]
            if rs:
                acc[(rs[0]["threat_model"], rs[0]["attack"])] = sum(r["correct"] for r in rs) / len(rs)
        spec = min(
            runnable, key=lambda s: (s.threat_model != "adaptive", acc.get((s.threat_model, s.label), 2.0))
        )
        key = f"examples|{name}|{spec.threat_model}|{spec.label}|{eps!r}#{self._fp(name, spec, eps)}"
        # Rank 0 alone makes (or reloads) the example images; every rank gets the arrays.
        arrays = D.on_main(
            lambda: self._example_arrays(key, name, model, spec, eps, clean_pred, dev), self.info
        )
        if arrays is not None:
            self.examples[name] = arrays

    def _example_arrays(
        self,
        key: str,
        name: str,
        model: nn.Module,
        spec: AttackSpec,
        eps: float,
        clean_pred: Tensor,
        dev: torch.device,
    ) -> dict[str, np.ndarray] | None:
        arrays = self.store.load_arrays(key)
        if arrays is None:
            ok = (clean_pred == self.y).nonzero().flatten()[: self.n_examples]
            if ok.numel() == 0:
                return None
            x, y = self.x[ok].to(dev), self.y[ok].to(dev)
            _reseed(model, _derived_seed(self.seed, key))
            atk = self._build(name, model, spec, eps)
            x_adv = atk(x, y)
            with torch.no_grad():
                p_clean, p_adv = model.purify(x), model.purify(x_adv)
                pred_adv = _predict(model, x_adv)
            arrays = {
                k: v.detach().float().cpu().numpy()
                for k, v in {"x": x, "x_adv": x_adv, "purified": p_clean, "purified_adv": p_adv}.items()
            }
            arrays.update(
                {
                    "label": y.cpu().numpy(),
                    "pred_adv": pred_adv.cpu().numpy(),
                    "index": np.asarray([self.index[i] for i in ok.tolist()]),
                    "attack": np.asarray(spec.label),
                    "threat_model": np.asarray(spec.threat_model),
                    "eps": np.asarray(eps),
                }
            )
            self.store.save_arrays(key, arrays)
        return arrays


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Tensor) and obj.numel() == 1:
        return obj.item()
    return repr(obj)


__all__ = ["THREAT_MODELS", "AttackSpec", "default_eps", "evaluate", "parse_attacks"]
