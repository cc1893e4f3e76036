"""pssr: PSSR (Pixel Surgery and Semantic Regeneration) adversarial purification for PyTorch.

Submodules load lazily so that ``import pssr`` stays fast::

    import pssr
    data = pssr.data.load("fashion-mnist")
    clf = pssr.train_classifier("small-cnn", data, epochs=5)
    defense = pssr.train_pssr(clf, data)
    report = pssr.evaluate({"none": clf, "pssr": defense}, data.test, attacks="paper")

The evaluation package is ``pssr.evaluation`` (not ``pssr.evaluate``) so that the function
``pssr.evaluate`` is never shadowed by a submodule of the same name.
"""

from __future__ import annotations

import importlib
from typing import Any

from pssr._version import __version__

_SUBMODULES = {
    "data",
    "models",
    "attacks",
    "defense",
    "evaluation",
    "experiments",
    "train",
    "config",
    "registry",
    "utils",
    "defaults",
    "zoo",
    "certify",
    "interop",
    "analysis",
}
# public name -> (module, attribute)
_LAZY = {
    "train_classifier": ("pssr.train.classifier", "train_classifier"),
    "train_pssr": ("pssr.train.pssr_train", "train_pssr"),
    "calibrate_ratio": ("pssr.train.calibrate", "calibrate_ratio"),
    "PSSR": ("pssr.defense.pssr", "PSSR"),
    "evaluate": ("pssr.evaluation.harness", "evaluate"),
    "create_model": ("pssr.models", "create_model"),
    "create_attack": ("pssr.attacks", "create_attack"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"pssr.{name}")
    raise AttributeError(f"module 'pssr' has no attribute {name!r}")


__all__ = [
    "PSSR",
    "__version__",
    "calibrate_ratio",
    "create_attack",
    "create_model",
    "evaluate",
    "train_classifier",
    "train_pssr",
]
