#!/usr/bin/env bash
# Finish the cifar10-jpeg preset's evaluation on a lent GPU, inside a time budget.
#
# The preset's models were trained on a GPU (scripts/gpu_cifar10_jpeg.py, results/cifar10-jpeg/gpu/) and
# sit in runs/cifar10-jpeg/ in the preset's layout; evaluating them (n=500, L-inf paper + adaptive suite,
# L2) is about ten hours on this project's 2-core CPU. The device tool carries at most 8 ignored paths
# (64 MiB), so the checkpoints and the resumable evaluation state travel as one tar:
#
#   here:            bash scripts/gpu_cifar10_preset_eval.sh pack          # -> runs/cifar10-jpeg-carry.tar
#   on the GPU:      bash scripts/gpu_cifar10_preset_eval.sh run "$OUT" 480  (carry runs/cifar10-jpeg-carry.tar)
#   back here:       bash scripts/gpu_cifar10_preset_eval.sh unpack FILES_AT/cifar10-jpeg-preset.tar.gz
#
# (PSSR_DEVICE=cpu runs the same steps here, as a check of the script.)
# `run` stops the evaluation at the budget (seconds; the state is saved after every batch, so a later
# `run` or a CPU `pssr reproduce` with the same arguments continues it) and packs the state, the
# calibration and whatever results/cifar10-jpeg/ the preset wrote into OUT/cifar10-jpeg-preset.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."
RUNS=runs/cifar10-jpeg
CARRY=runs/cifar10-jpeg-carry.tar
ARGS=(--preset cifar10-jpeg --set pssr.epochs=6 --set pssr.bf16=true --set adv_train.epochs=6
      --set adv_train.bf16=true --calibrate 0,0.02,0.05,0.1 --no-progress)

case "${1:-}" in
  pack)
    # checkpoints and summaries of the preset's runs, without the (regenerable) adversarial-example caches
    tar cf "$CARRY" --exclude='*adv-cache*' "$RUNS"/classifier.{pt,json} "$RUNS"/{pgd-at,trades}.{pt,json} \
        "$RUNS"/pssr "$RUNS"/pssr-{surgery-only,regeneration-only,no-rdrop,random-mask} \
        $(ls -d "$RUNS"/eval-linf "$RUNS"/eval-l2 "$RUNS"/pssr-calibrated.json 2>/dev/null) || exit 1
    ls -la "$CARRY" ;;
  run)
    out=${2:?usage: run OUT [BUDGET_SECONDS]}; budget=${3:-480}
    mkdir -p "$out"
    tar xf "$CARRY" || exit 1
    export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
    py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
    # SIGINT: the CLI stops between batches' saves like a Ctrl-C; KILL 20 s later if it does not
    timeout --signal=INT --kill-after=20 "$budget" "$py" -m pssr reproduce "${ARGS[@]}" --device "${PSSR_DEVICE:-cuda}" \
        > "$out/preset.log" 2>&1
    echo "exit status $? (124: stopped at the budget; rerun to continue)" >> "$out/preset.log"
    tar czf "$out/cifar10-jpeg-preset.tar.gz" $(ls -d "$RUNS"/eval-linf "$RUNS"/eval-l2 "$RUNS"/pssr-calibrated.json \
        results/cifar10-jpeg/report.json results/cifar10-jpeg/report.md results/cifar10-jpeg/linf \
        results/cifar10-jpeg/l2 2>/dev/null)
    ls -la "$out" ;;
  unpack)
    tar xzf "${2:?usage: unpack cifar10-jpeg-preset.tar.gz}" && echo "unpacked; finish or re-render with: pssr reproduce ${ARGS[*]}" ;;
  *)
    echo "usage: $0 pack | run OUT [BUDGET_SECONDS] | unpack TAR.GZ" >&2; exit 2 ;;
esac
