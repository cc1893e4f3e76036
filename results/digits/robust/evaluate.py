"""Issue 18, first measurement on the digits: PGD-AT, PSSR (paper training) and robust PSSR (trained
against the whole current defense) under the paper protocol, the adaptive set and the issue's stronger
attacks, on the whole test split (359 images: the digits have no more), worst case per example.

    python results/digits/robust/evaluate.py ROBUST_PSSR_CHECKPOINT [OUT [N]]   (N: a smoke run on N images)

The other models come from the zoo (digits/classifier, digits/pgd-at, digits/pssr).
"""

from __future__ import annotations

import sys

import torch

import pssr
import pssr.zoo
from pssr.defense.pssr import PSSR


def strong_attacks(surrogate: torch.nn.Module) -> list[dict]:
    """Issue 18's attacks beyond the paper and adaptive sets; transfer comes from ``surrogate`` (PGD-AT)."""
    return [
        # AutoAttack (standard) on the whole defense: exact gradients through G and the classifier,
        # the removal mask held fixed (its top-k has no gradient)
        {"name": "autoattack", "version": "standard", "threat_model": "adaptive", "label": "autoattack-full"},
        {"name": "pgd-full", "steps": 100, "restarts": 5, "threat_model": "adaptive", "label": "pgd-full-5r"},
        # the attack written against PSSR's parts: its top-k surgery relaxed for the gradient
        {"name": "pgd-surgery-aware", "steps": 100, "threat_model": "adaptive", "label": "pgd-surgery-aware"},
        {
            "name": "square",
            "n_queries": 5000,
            "p_init": 0.8,
            "threat_model": "adaptive",
            "label": "square-5000",
        },
        {
            "name": "transfer",
            "attack": "pgd",
            "attack_kwargs": {"steps": 100},
            "surrogate": surrogate,
            "threat_model": "adaptive",
            "label": "transfer-from-pgd-at",
        },
    ]


def main(robust: str, out: str = "results/digits/robust", n: str = "0") -> None:
    data = pssr.data.load("digits")
    pgd_at = pssr.zoo.load("digits/pgd-at")
    models = {
        "undefended": pssr.zoo.load("digits/classifier"),
        "pgd-at": pgd_at,
        "pssr": pssr.zoo.load("digits/pssr"),
        "pssr-robust": PSSR.load(robust),
    }
    strong = strong_attacks(pgd_at)
    report = pssr.evaluate(
        models,
        data.test,
        attacks=["paper", "adaptive", *strong],
        n=int(n) or None,
        state_dir=f"{out}/state",
        progress=False,
    )
    report.save(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
