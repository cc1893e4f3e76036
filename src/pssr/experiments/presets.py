"""The presets of ``pssr reproduce`` (and ``pssr demo``): which config files, how many test images,
which baselines and ablations, and the evaluation a preset runs unless told otherwise."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pssr.registry import Registry

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"


@dataclasses.dataclass(frozen=True)
class Preset:
    """One reproduction setting; the config files hold the training hyper-parameters."""

    name: str
    config: str  # configs/<file>: [data], [classifier], [adv_train]
    pssr_config: str  # configs/<file>: [data], [pssr], [run]
    eval_n: int = 1000  # test examples evaluated (0 = the whole test split)
    eps: float | None = None  # L-inf budget; None = the dataset family's default (pssr.attacks.sets)
    adv_methods: tuple[str, ...] = ("pgd-at", "trades")
    ablations: tuple[str, ...] = ("surgery-only", "regeneration-only", "no-rdrop", "random-mask")
    quick: tuple[str, ...] = ()  # overrides (section.key=value) applied with quick=True
    quick_eval_n: int = 100


PRESETS: Registry[Preset] = Registry("preset")

# Ablation name -> overrides of the [pssr] table.
ABLATIONS: Mapping[str, Mapping[str, Any]] = {
    "surgery-only": {"use_regeneration": False},
    "regeneration-only": {"use_surgery": False},
    "no-rdrop": {"w_rdrop": 0.0},
    "random-mask": {"scorer": "random"},
}

_QUICK_SMALL = (
    "classifier.epochs=3",
    "adv_train.epochs=1",
    "adv_train.eval_steps=10",
    "pssr.epochs=2",
    "pssr.train_subset=1000",
    "run.eval_n=200",
    "run.adaptive_n=100",
)


def _register(p: Preset) -> None:
    PRESETS.register(p.name)(lambda p=p: p)


_register(
    Preset(
        "digits",
        "digits.toml",
        "pssr-digits.toml",
        eval_n=0,
        quick=("pssr.epochs=25", "adv_train.epochs=5", "run.adaptive_n=100"),
        quick_eval_n=120,
    )
)
_register(Preset("mnist-10k", "mnist-10k.toml", "pssr-mnist-10k.toml", eval_n=0, quick=_QUICK_SMALL))
_register(
    Preset("fashion-mnist", "fashion-mnist.toml", "pssr-fashion-mnist.toml", eval_n=1000, quick=_QUICK_SMALL)
)
_register(
    Preset("cifar10-jpeg", "cifar10-jpeg.toml", "pssr-cifar10-jpeg.toml", eval_n=500, quick=_QUICK_SMALL)
)
_register(Preset("mnist", "mnist.toml", "pssr-mnist.toml", eval_n=1000, quick=_QUICK_SMALL))
_register(Preset("cifar10", "cifar10.toml", "pssr-cifar10.toml", eval_n=1000, quick=_QUICK_SMALL))
_register(Preset("cifar100", "cifar100.toml", "pssr-cifar100.toml", eval_n=1000, quick=_QUICK_SMALL))

INPUT_TRANSFORMS = ("jpeg", "bit-depth", "median", "tvm")
# The evaluation a preset runs unless told otherwise (norm -> the harness's attack list); a report of
# other lists says so ("full_suite": false, and a line at the top of report.md).
FULL_SUITE: Mapping[str, str] = MappingProxyType({"linf": "paper,adaptive", "l2": "paper"})


def list_presets() -> list[str]:
    return PRESETS.list()


def is_full_suite(lists: Mapping[str, str]) -> bool:
    """Whether ``lists`` (norm -> comma-separated attacks) are the preset's full suite, in any order."""

    def norm(m: Mapping[str, str]) -> dict[str, frozenset[str]]:
        return {
            k.strip().lower(): frozenset(a.strip() for a in v.split(",") if a.strip()) for k, v in m.items()
        }

    return norm(lists) == norm(FULL_SUITE)


__all__ = [
    "ABLATIONS",
    "FULL_SUITE",
    "INPUT_TRANSFORMS",
    "PRESETS",
    "Preset",
    "is_full_suite",
    "list_presets",
]
