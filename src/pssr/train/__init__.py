"""Training: classifiers (:mod:`.classifier`), adversarial-training baselines (:mod:`.adversarial`),
the shared loop with checkpoints and resume (:mod:`.loop`, :mod:`.resume`, :mod:`.schedules`),
batched augmentation (:mod:`.augment`), PSSR (:mod:`.pssr_train`, :mod:`.adversarial_cache`,
:mod:`.losses`, :mod:`.pssr_data`), its calibration (:mod:`.calibrate`) and its regenerator as a
denoiser (:mod:`.denoise`).

Every trainer takes Python objects (a model, a :class:`pssr.data.Dataset`, a config dataclass);
runs from config files are :mod:`pssr.experiments`'. Submodules import lazily, so
``import pssr.train`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "train_classifier": "pssr.train.classifier",
    "train_classifier_run": "pssr.train.classifier",
    "load_classifier": "pssr.train.classifier",
    "ClassifierConfig": "pssr.train.classifier",
    "evaluate_accuracy": "pssr.train.loop",
    "TrainConfig": "pssr.train.loop",
    "adversarial_train": "pssr.train.adversarial",
    "AdvTrainConfig": "pssr.train.adversarial",
    "pgd_accuracy": "pssr.train.adversarial",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pssr.train' has no attribute {name!r}")


__all__ = sorted(_LAZY)
