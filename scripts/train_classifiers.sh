#!/usr/bin/env bash
# Reproduce the classifier and adversarial-training numbers in results/ (CPU, resumable: rerun to continue).
# Usage: scripts/train_classifiers.sh [fashion-mnist|cifar10-jpeg|pgd-at|all]
# OMP_NUM_THREADS=1 was used on the shared 2-core machine (2 threads win on an idle one).
set -euo pipefail
cd "$(dirname "$0")/.."
PSSR=${PSSR:-.venv/bin/pssr}
what=${1:-all}
if [[ $what == fashion-mnist || $what == all ]]; then
  $PSSR train-classifier --config configs/fashion-mnist.toml --out runs/fashion-mnist \
    --summary results/fashion-mnist/classifier.json
fi
if [[ $what == cifar10-jpeg || $what == all ]]; then
  $PSSR train-classifier --config configs/cifar10-jpeg.toml --out runs/cifar10-jpeg \
    --summary results/cifar10-jpeg/classifier.json
fi
if [[ $what == pgd-at || $what == all ]]; then
  # needs runs/fashion-mnist/classifier.pt (warm start, see [adv_train] in the config)
  $PSSR train-adversarial --config configs/fashion-mnist.toml --out runs/fashion-mnist \
    --summary results/fashion-mnist/pgd-at.json
fi
