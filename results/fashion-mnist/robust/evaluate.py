"""Issue 18 on Fashion-MNIST (L-inf 0.1): the baselines and PSSR's variants under the paper protocol,
the adaptive set and the issue's stronger attacks (results/digits/robust/evaluate.py's list, imported
from there: AutoAttack standard on the whole defense with exact gradients, 5-restart full-gradient PGD,
the surgery-aware attack, Square 5,000, transfer from the model named pgd-at), worst case per example,
on N test images drawn at random (seed 0) from the whole split. Shards the examples under torchrun:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 results/fashion-mnist/robust/evaluate.py \\
        OUT N undefended=fashion-mnist/classifier pgd-at=PGD_AT trades=TRADES \\
        pssr=fashion-mnist/pssr pssr-robust=ROBUST_PSSR

Each NAME=SPEC is a checkpoint path or a zoo name (pssr.experiments.loading.load_model_spec); one model
must be named pgd-at (the transfer source). The state under OUT/state makes a rerun resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pssr
from pssr.experiments.loading import load_model_spec, script_module


def sibling_script(*parts: str):
    """results/<parts>/evaluate.py as a module (its attack list or evaluation, not a copy)."""
    return script_module(Path(__file__).resolve().parents[2].joinpath(*parts, "evaluate.py"))


def main(out: str, n: str, *specs: str) -> None:
    models = dict(load_model_spec(s)[:2] for s in specs)
    if "pgd-at" not in models:
        raise SystemExit("name one model pgd-at (pgd-at=PATH): it is the transfer attack's source")
    attacks = ["paper", "adaptive", *sibling_script("digits", "robust").strong_attacks(models["pgd-at"])]
    data = pssr.data.load("fashion-mnist")
    sibling_script("fashion-mnist", "faithful").evaluate_and_save(models, data.test, attacks, out, n)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
