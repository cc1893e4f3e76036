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
is the caller's job, on rank 0 (:func:`pssr.experiments.loading.evaluate_checkpoints` does that).
Timings are then summed over ranks (device-seconds), not wall-clock seconds. On CUDA each rank runs
on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pssr import distributed as D
from pssr.attacks.base import NORMS
from pssr.attacks.sets import parse_attacks
from pssr.attacks.spec import THREAT_MODELS, AttackSpec
from pssr.data import Dataset, Split
from pssr.defaults import budget, dataset_name
from pssr.evaluation.checks import CheckConfig, run_post_checks
from pssr.evaluation.common import (
    class_coverage,
    data_fingerprint,
    describe,
    model_config,
    model_fingerprint,
)
from pssr.evaluation.report import Report, summarize
from pssr.evaluation.runner import Run
from pssr.evaluation.state import StateStore
from pssr.models import check_input_shape
from pssr.utils import model_device, run_metadata

log = logging.getLogger(__name__)


def default_eps(dataset: str | None, norm: str) -> float:
    """The budget of ``dataset`` in ``norm`` (:func:`pssr.defaults.budget`, the one source of truth)."""
    return budget(dataset, norm)


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
    models, split, dataset, norm, compute, check_cfg = _checked_args(
        models, data, dataset, norm, n, batch_size, seed, compute, state_dir, checks, gray_box_source
    )
    eps_list = _as_eps_list(eps, dataset, norm)
    specs = parse_attacks(attacks, dataset, norm)
    dev, info = _placed(models, gray_box_source, device)
    x_all, y_all, index, coverage = _examples(split, n, subset_seed, info.is_main)
    n_total, n_eval = len(split), len(index)

    sources = {name: _gray_box_source(name, m, gray_box_source) for name, m in models.items()}
    descriptions = {name: describe(m, sources[name][1]) for name, m in models.items()}
    settings = {
        "models": {k: d["fingerprint"] for k, d in descriptions.items()},
        "sources": {k: model_fingerprint(s) for k, (s, _) in sources.items()},
        "data": data_fingerprint(x_all, y_all),
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
                    "model_config": model_config(m),
                }
                for name, m in models.items()
            }
            run = Run(
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

    return _report(run, models, descriptions, check_cfg, config)


def _checked_models(
    models: Mapping[str, nn.Module] | nn.Module, gray_box_source: Mapping[str, nn.Module] | None
) -> Mapping[str, nn.Module]:
    """``{name: model}`` (a bare module is named ``"model"``), names and types checked."""
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
    return models


def _checked_compute(
    compute: bool | Collection[str], models: Mapping[str, nn.Module], state_dir: str | os.PathLike[str] | None
) -> bool | frozenset[str]:
    """``compute`` checked: True, False (needs a saved state) or a set of model names."""
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
    return compute


def _checked_args(
    models: Mapping[str, nn.Module] | nn.Module,
    data: Split | Dataset,
    dataset: str | None,
    norm: str,
    n: int | None,
    batch_size: int,
    seed: int,
    compute: bool | Collection[str],
    state_dir: str | os.PathLike[str] | None,
    checks: bool | CheckConfig,
    gray_box_source: Mapping[str, nn.Module] | None,
) -> tuple[Mapping[str, nn.Module], Split, str | None, str, bool | frozenset[str], CheckConfig | None]:
    """:func:`evaluate`'s arguments checked (one-line ValueErrors naming the argument) and normalized:
    (models, split, dataset, norm, compute, check_cfg)."""
    models = _checked_models(models, gray_box_source)
    if isinstance(data, Dataset):
        dataset = dataset or data.name
        split = data.test
    elif isinstance(data, Split):
        split = data
        # a split carries its dataset's name (pssr.data.load), a trained model may too
        dataset = dataset or split.dataset or dataset_name(*models.values())
    else:
        raise ValueError(f"data must be a pssr.data.Split or Dataset, got {type(data).__name__}")
    if len(split) == 0:
        raise ValueError(
            "the split to evaluate is empty (0 images): pass a split with images, e.g. data.test"
        )
    norm = norm.lower() if isinstance(norm, str) else norm
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r}; choose from {NORMS}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    compute = _checked_compute(compute, models, state_dir)
    check_cfg = CheckConfig() if checks is True else checks if isinstance(checks, CheckConfig) else None
    if checks is not False and check_cfg is None:
        raise ValueError(f"checks must be True, False or a CheckConfig, got {checks!r}")
    for k, m in models.items():  # one line naming both shapes, not a deep torch error mid-attack
        check_input_shape(m, split.x.shape[1:], what=f"the {dataset or 'evaluation'} images given to {k!r}")
    return models, split, dataset, norm, compute, check_cfg


def _placed(
    models: Mapping[str, nn.Module], gray_box_source: Mapping[str, nn.Module] | None, device: Any
) -> tuple[torch.device | None, Any]:
    """Join the process group under torchrun (a no-op in one process) and move the models to
    ``device`` (``cuda:LOCAL_RANK`` under torchrun); (device or None, the distributed info)."""
    dev = None
    if device is not None:
        from pssr.utils import default_device

        dev = default_device(device)
    first_dev = model_device(next(iter(models.values())))
    info = D.init_distributed(dev if dev is not None else first_dev)
    if info.enabled and dev is None and first_dev.type == "cuda":
        dev = torch.device("cuda")
    if dev is not None:
        dev = D.device_for(info, dev)  # cuda:LOCAL_RANK under torchrun, else unchanged
        for m in models.values():
            m.to(dev)
        for m in (gray_box_source or {}).values():
            m.to(dev)

    return dev, info


def _examples(
    split: Split, n: int | None, subset_seed: int | None, is_main: bool
) -> tuple[Tensor, Tensor, list[int], dict[str, Any]]:
    """The evaluated examples: the first ``n`` of ``split`` (or a seeded random ``n``); (x, y, their
    indices in the split, class coverage). Warns when classes are missing from them."""
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
    coverage = class_coverage(split.y, y_all)
    if coverage["missing"] and is_main:
        advice = (
            "a split stored class by class gives a biased first n; pass subset_seed (--subset-seed) for a random subset"
            if subset_seed is None
            else "a random subset this small can miss classes; raise n for per-class figures"
        )
        log.warning(
            "the %d evaluated examples hold %d of the split's %d classes (missing: %s): %s",
            n_eval,
            coverage["in_subset"],
            coverage["in_split"],
            coverage["missing"],
            advice,
        )

    return x_all, y_all, index, coverage


def _report(
    run: Run,
    models: Mapping[str, nn.Module],
    descriptions: dict[str, dict[str, Any]],
    check_cfg: CheckConfig | None,
    config: dict[str, Any],
) -> Report:
    """The :class:`Report` of a finished (or, with pending units, partial) run."""
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
        post_c, post_f = run_post_checks(name, records, run.unit_meta, results, check_cfg)
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


__all__ = ["THREAT_MODELS", "AttackSpec", "default_eps", "evaluate", "parse_attacks"]
