"""Issue 22, item 3 on Fashion-MNIST: PSSR as the paper describes it (configs/pssr-fashion-mnist-faithful.toml)
beside the same variant without the two-pass R-Drop, its fine-tuned classifier alone, paper-trained PSSR
and the undefended classifier, under the paper protocol and an adaptive set that adds five-restart
full-gradient PGD and the attack written against PSSR's parts; worst case per example, on N test images
drawn at random (seed 0) from the whole split, L-inf 0.1. Shards the examples under torchrun:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 results/fashion-mnist/faithful/evaluate.py \\
        FAITHFUL_CKPT NO_TWOPASS_CKPT [OUT [N]]

The undefended classifier and paper-trained PSSR come from the zoo (fashion-mnist/classifier,
fashion-mnist/pssr); the two checkpoints from `pssr train-pssr --config
configs/pssr-fashion-mnist-faithful.toml` (the second with `--set pssr.rdrop_drop=0`).

The adaptive attacks are the project's adaptive set for L-inf with two changes, for CPU time: AutoAttack
through the BPDA view runs APGD-CE and APGD-T (the `fast` suite's selection, 50 iterations) instead of the
standard version, whose Square part is run on its own here (1,000 queries) and whose FAB-T and APGD
parts cost 13 s per example on the faithful model on one CPU thread.
"""

from __future__ import annotations

import sys

import pssr
import pssr.zoo
from pssr import distributed as D
from pssr.defense.pssr import PSSR

APGD = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 50}
ADAPTIVE = [
    {"name": "pgd-full", "steps": 100, "restarts": 1, "threat_model": "adaptive", "label": "pgd-full"},
    {"name": "pgd-full", "steps": 100, "restarts": 5, "threat_model": "adaptive", "label": "pgd-full-5r"},
    {"name": "pgd-bpda", "steps": 100, "restarts": 2, "threat_model": "adaptive", "label": "pgd-bpda"},
    {"name": "autoattack-bpda", **APGD, "threat_model": "adaptive", "label": "apgd-bpda"},
    {"name": "square", "n_queries": 1000, "p_init": 0.8, "threat_model": "adaptive", "label": "square"},
    "transfer-pgd",  # PGD-100 made on the undefended classifier
    # the attack written against PSSR's parts: its top-k surgery relaxed for the gradient
    {"name": "pgd-surgery-aware", "steps": 100, "threat_model": "adaptive", "label": "pgd-surgery-aware"},
]


def main(faithful: str, no_twopass: str, out: str = "results/fashion-mnist/faithful", n: str = "300") -> None:
    data = pssr.data.load("fashion-mnist")
    models = {
        "undefended": pssr.zoo.load("fashion-mnist/classifier"),
        "pssr": pssr.zoo.load("fashion-mnist/pssr"),
        "pssr-faithful": PSSR.load(faithful),
        "pssr-faithful-no-twopass": PSSR.load(no_twopass),
    }
    evaluate_faithful(models, data.test, out, n)


def evaluate_faithful(models: dict, split, out: str, n: str) -> None:
    """Add the faithful model's fine-tuned classifier alone (it shows what the purifier adds), evaluate
    all under the paper set and ADAPTIVE on n seeded random images (sharded under torchrun), save to out."""
    models["faithful-classifier"] = models["pssr-faithful"].classifier
    evaluate_and_save(models, split, ["paper", *ADAPTIVE], out, n)


def evaluate_and_save(models: dict, split, attacks: list, out: str, n: str) -> None:
    """``pssr.evaluate`` on n seeded random images (resumable state in out/state, examples sharded under
    torchrun); rank 0 saves the report to out."""

    def run() -> pssr.evaluation.Report:
        return pssr.evaluate(
            models,
            split,
            attacks=attacks,
            n=int(n),
            subset_seed=0,
            state_dir=f"{out}/state",
            progress=False,
        )

    report, is_main = D.run_and_leave(run)
    if is_main:
        report.save(out)


if __name__ == "__main__":
    main(*sys.argv[1:])
