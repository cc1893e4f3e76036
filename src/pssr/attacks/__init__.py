"""Attacks: a registry of torch-native attacks with one interface, and adaptive-attack machinery.

Two lines, as in torchattacks::

    atk = pssr.attacks.create_attack("pgd", model, eps=8 / 255, steps=40)
    x_adv = atk(x, y)          # x in [0, 1], (N, C, H, W); y int64 (N,)

Registered (``list_attacks()``): fgsm, bim, pgd, mifgsm, cw (L2), cw-linf, deepfool, ddn, square,
autoattack, autoattack-rand, transfer, and the adaptive ones pgd-full, pgd-bpda, pgd-bpda-eot,
autoattack-bpda (see :mod:`pssr.attacks.adaptive`). What one attack run is: :class:`AttackSpec`;
named sets of them with per-dataset budgets: :data:`ATTACK_SETS` / :func:`attack_set`; the
``attacks=`` argument of an evaluation read into specs: :func:`parse_attacks`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pssr.attacks import (  # noqa: F401  (registration)
    autoattack,
    bim,
    cw,
    ddn,
    deepfool,
    fgsm,
    mifgsm,
    pgd,
    square,
    surgery_aware,
    transfer,
)
from pssr.attacks._common import margin_loss
from pssr.attacks.adaptive import (
    EOT,
    BPDAWrapper,
    bpda,
    bpda_view,
    full_gradient_view,
    straight_through,
)
from pssr.attacks.autoattack import AutoAttackRand, AutoAttackWrapper
from pssr.attacks.base import ATTACKS, Attack, check_inputs, lp_norm, project
from pssr.attacks.bim import BIM
from pssr.attacks.cw import CW, CWLinf
from pssr.attacks.ddn import DDN
from pssr.attacks.deepfool import DeepFool
from pssr.attacks.fgsm import FGSM
from pssr.attacks.mifgsm import MIFGSM
from pssr.attacks.pgd import PGD
from pssr.attacks.sets import (
    ATTACK_SETS,
    BUDGETS,
    DATASET_FAMILIES,
    SUITES,
    attack_set,
    dataset_family,
    expand_suites,
    parse_attacks,
)
from pssr.attacks.spec import THREAT_MODELS, AttackSpec
from pssr.attacks.square import Square
from pssr.attacks.transfer import Transfer


def create_attack(name: str, model: nn.Module, **kwargs: Any) -> Attack:
    """Build the registered attack ``name`` on ``model`` (``eps`` is required, see each class)."""
    return ATTACKS.create(name, model=model, **kwargs)


def list_attacks(pattern: str = "*") -> list[str]:
    return ATTACKS.list(pattern)


__all__ = [
    "ATTACKS",
    "ATTACK_SETS",
    "BIM",
    "BPDAWrapper",
    "BUDGETS",
    "SUITES",
    "THREAT_MODELS",
    "expand_suites",
    "parse_attacks",
    "CW",
    "CWLinf",
    "DATASET_FAMILIES",
    "DDN",
    "EOT",
    "FGSM",
    "MIFGSM",
    "PGD",
    "Attack",
    "AttackSpec",
    "AutoAttackRand",
    "AutoAttackWrapper",
    "DeepFool",
    "Square",
    "Transfer",
    "attack_set",
    "bpda",
    "bpda_view",
    "check_inputs",
    "create_attack",
    "dataset_family",
    "full_gradient_view",
    "list_attacks",
    "lp_norm",
    "margin_loss",
    "project",
    "straight_through",
]
