"""Issue 22, item 3 on CIFAR-10-JPEG: PSSR as the paper describes it (configs/pssr-cifar10-jpeg-faithful.toml,
trained at CPU scale: see docs/faithful.md) beside its fine-tuned classifier alone and the undefended
classifier, under the paper protocol and the adaptive set of results/fashion-mnist/faithful/evaluate.py
(imported from there: one list for both datasets); worst case per example, on N test images drawn at random
(seed 0) from the whole split, L-inf 8/255. Shards the examples under torchrun:

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 results/cifar10-jpeg/faithful/evaluate.py \\
        FAITHFUL_CKPT [OUT [N]]

The undefended classifier comes from the zoo (cifar10-jpeg/classifier), the faithful checkpoint from
`pssr train-pssr --config configs/pssr-cifar10-jpeg-faithful.toml` (the command in docs/faithful.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pssr
import pssr.zoo
from pssr.defense.pssr import PSSR
from pssr.experiments.loading import script_module


def fmnist_script():
    """results/fashion-mnist/faithful/evaluate.py as a module: its adaptive set and evaluation, not a copy."""
    return script_module(Path(__file__).resolve().parents[2] / "fashion-mnist" / "faithful" / "evaluate.py")


def main(faithful: str, out: str = "results/cifar10-jpeg/faithful", n: str = "100") -> None:
    data = pssr.data.load("cifar10-jpeg")
    models = {
        "undefended": pssr.zoo.load("cifar10-jpeg/classifier"),
        "pssr-faithful": PSSR.load(faithful),
    }
    fmnist_script().evaluate_faithful(models, data.test, out, n)


if __name__ == "__main__":
    main(*sys.argv[1:])
