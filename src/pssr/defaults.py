"""What pssr knows of each dataset: its attack budget and the PSSR settings that work on it.

One source of truth. Training (``train_pssr``, adversarial training), calibration and evaluation
all read a dataset's budget from :func:`budget`, which reads ``pssr.attacks.sets.BUDGETS``; a config
value of ``eps = 0`` (the default of ``PSSRConfig`` and ``AdvTrainConfig``) means "the dataset's
budget", so the shipped TOML files name no budget of their own.

:func:`pssr_config` gives the PSSR settings of a dataset family (``train_pssr(classifier, data)``
uses them when no config is passed). They are the settings of the shipped ``configs/pssr-*.toml``
files, which ``tests/test_defaults.py`` keeps in agreement with this table:

* ``restore_scope = "full"``: with ``"mask"`` and a frozen, normally trained classifier the kept
  pixels (the trivial attack) still fool the classifier, and calibration then chose ratio 0, a
  defense that removed nothing (results/fashion-mnist/pssr-train-mask-frozen.json).
* ``ratio = 0.1``: the share of pixels removed by every shipped config.
* smaller regenerators for the 28x28 gray families (the CPU budget of the shipped runs).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pssr.attacks.sets import BUDGETS, DATASET_FAMILIES, dataset_family

# family -> PSSRConfig fields (beyond the budget, which comes from BUDGETS)
_PSSR_FAMILY: dict[str, dict[str, Any]] = {
    "digits": {"gen_width": 32, "scorer_width": 16, "batch_size": 64, "lr": 3e-3},
    "mnist": {"gen_width": 16, "scorer_width": 8, "batch_size": 32, "lr": 3e-3},
    "fashion-mnist": {"gen_width": 16, "scorer_width": 8, "batch_size": 32, "lr": 3e-3, "pgd_steps": 7},
    "cifar": {"gen_width": 32, "scorer_width": 16, "batch_size": 128, "lr": 1e-3},
}
_PSSR_COMMON: dict[str, Any] = {"ratio": 0.1, "restore_scope": "full", "fill": "mean", "scorer": "learned"}

# How PSSR is trained (issue 18). "paper": the paper's protocol, training examples made once against
# the frozen classifier. "robust": training examples remade every batch against the *whole current
# defense* (exact gradients through G and the classifier, the removal mask held fixed), the classifier
# fine-tuned with G (start it from a PGD-AT or TRADES checkpoint), adversarial R-drop as the consistency
# between f(R(x)) and f(R(x_adv)). The configs/pssr-*-robust.toml files spell the same settings out.
# "faithful" (issue 22): the paper's remove-then-restore read literally: G writes back the removed
# pixels only, the classifier learns invariance to the kept trivial attack (fine-tuned on restored
# images, examples remade every batch against it), and R-Drop as two random-drop passes of the same
# adversarial input (configs/pssr-fashion-mnist-faithful.toml; docs/faithful.md).
MODES: dict[str, dict[str, Any]] = {
    "paper": {"adv_mode": "cache", "adv_target": "classifier", "classifier_lr": 0.0},
    "robust": {"adv_mode": "online", "adv_target": "pipeline", "classifier_lr": 1e-4},
    "faithful": {
        "adv_mode": "online",
        "adv_target": "classifier",
        "classifier_lr": 5e-4,
        "restore_scope": "mask",
        "rdrop_drop": 0.05,
    },
}
# (mode, family) -> fields that differ from MODES[mode] on that family. The faithful mode's Adam step
# for the fine-tuned classifier: 5e-4 suits the small CNNs, and drove CIFAR's BatchNorm ResNet-20 to
# 14.5% clean accuracy in one epoch (configs/pssr-cifar10-jpeg-faithful.toml records the measurement).
_MODE_FAMILY: dict[tuple[str, str], dict[str, Any]] = {
    ("faithful", "cifar"): {"classifier_lr": 2e-5},
    # robust Fashion-MNIST: at G's paper-mode lr 3e-3 the regenerator collapsed to an all-zero image
    # in the first epoch (clean 11.6%); 1e-3 trained (docs/robust.md)
    ("robust", "fashion-mnist"): {"lr": 1e-3},
}


def known_datasets() -> list[str]:
    return sorted(DATASET_FAMILIES)


def budget(dataset: str | None, norm: str = "linf") -> float:
    """The attack budget of ``dataset`` in ``norm`` (pixel units of [0, 1] images)."""
    if not dataset:
        raise ValueError(
            f"no dataset name to take the {norm} budget from; pass eps=... explicitly, or data that carries "
            f"its name (pssr.data.load(...) and its splits do); known datasets: {', '.join(known_datasets())}"
        )
    fam = dataset_family(dataset)
    if norm not in BUDGETS[fam]:
        raise ValueError(f"no {norm!r} budget for {dataset!r}; norms: {', '.join(BUDGETS[fam])}")
    return float(BUDGETS[fam][norm])


def resolve_eps(eps: float | None, dataset: str | None, norm: str = "linf") -> float:
    """``eps`` itself when set (> 0), else the dataset's budget."""
    if eps is not None and eps > 0:
        return float(eps)
    return budget(dataset, norm)


def dataset_name(*objs: Any) -> str | None:
    """The first dataset name carried by any of ``objs`` (a Dataset's ``name``, a Split's ``dataset``,
    a model's ``dataset`` attribute or its checkpoint metrics), or None."""
    for o in objs:
        if o is None:
            continue
        for attr in ("dataset", "name"):
            v = getattr(o, attr, None)
            if isinstance(v, str) and v.strip().lower() in DATASET_FAMILIES:
                return v.strip().lower()
        data = (
            (getattr(o, "metrics", None) or {}).get("data")
            if isinstance(getattr(o, "metrics", None), dict)
            else None
        )
        if isinstance(data, dict) and isinstance(data.get("name"), str) and data["name"] in DATASET_FAMILIES:
            return data["name"]
    return None


def pssr_config(dataset: str | None = None, mode: str = "paper", **overrides: Any) -> Any:
    """The :class:`~pssr.defense.pssr.PSSRConfig` that works on ``dataset`` (its family's settings,
    its L-inf budget as the training eps), trained in ``mode`` (a key of :data:`MODES`), with
    ``overrides`` applied. ``mode="robust"`` expects a robust classifier to start from::

        cfg = pssr.defaults.pssr_config("fashion-mnist", mode="robust")
        defense = pssr.train_pssr(pgd_at_classifier, data, cfg)
    """
    from pssr.defense.pssr import PSSRConfig

    if mode not in MODES:
        raise ValueError(f"unknown PSSR training mode {mode!r}; modes: {', '.join(MODES)}")
    fields = dict(_PSSR_COMMON)
    if dataset is not None:
        fields.update(_PSSR_FAMILY.get(dataset_family(dataset), {}))
        fields["eps"] = budget(dataset, "linf")
    fields.update(MODES[mode])
    if dataset is not None:
        fields.update(_MODE_FAMILY.get((mode, dataset_family(dataset)), {}))
    fields.update(overrides)
    return PSSRConfig(**fields)


def resolved(cfg: Any, dataset: str | None) -> Any:
    """``cfg`` (a dataclass with an ``eps`` field, 0 = the dataset's budget) with its budget filled in."""
    if getattr(cfg, "eps", 1.0) > 0:
        return cfg
    return dataclasses.replace(cfg, eps=budget(dataset, "linf"))
