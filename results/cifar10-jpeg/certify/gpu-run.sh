#!/usr/bin/env bash
# The record of the one GPU call (one H200, 2026-12-04) that trained and certified the CIFAR-10-JPEG
# models of results/cifar10-jpeg/certify/ (issue 19) and trained the classifier and PSSR that
# results/cifar10-jpeg/finding/ measures (issue 22). Every step is a plain `pssr` command; this file
# only orders them inside one short lease, so it is a record, not product code. Run from the
# repository root with shared/data/cifar10-jpeg.tar.gz in it:
#   bash results/cifar10-jpeg/certify/gpu-run.sh OUT BUDGET_SECONDS
# Everything it made comes back as OUT/gpu-run.tar.gz.part-* (checkpoints, certify states, logs).
set -u
out=${1:?usage: gpu-run.sh OUT BUDGET_SECONDS}; budget=${2:-520}
t0=$(date +%s)
left() { echo $((budget - ($(date +%s) - t0))); }
say() { echo "$(date +%H:%M:%S) [+$(($(date +%s) - t0))s] $*"; }
export PYTHONUNBUFFERED=1 PSSR_HEARTBEAT_S=20 OMP_NUM_THREADS=3 PSSR_CACHE=$PWD/.cache
py=${PY:-python3}
dev=${DEVICE:-cuda}
# SMOKE=1: one epoch each, tiny certificates (a CPU check of this file, with a small archive in shared/data)
sd=(); sp=(); [ "${SMOKE:-0}" = 1 ] && sd=(--set denoise.val_size=100) && sp=(--set pssr.val_size=100)
mkdir -p logs runs/cifar10-jpeg runs/certify
pssr() { timeout --signal=INT --kill-after=15 "$1" "$py" -m pssr "${@:2}"; }
fin() {  # NAME: the epoch a denoiser state reached (0 if none)
  "$py" -c "import torch,sys; p='runs/denoise/$1/denoiser-state.pt'
import os; print(torch.load(p, weights_only=True)['epoch'] if os.path.exists(p) else 0)"
}
pack() {
  say "packing"
  # in parts of 15 MB (the device tool brings back files of at most 16 MiB): cat gpu-run.tar.gz.part-* | tar xz
  tar czf - --exclude='*adv-cache*' --exclude='*-state.pt' --exclude='*train-state*' \
    runs/cifar10-jpeg runs/denoise runs/certify logs 2>/dev/null | split -b 15m - "$out/gpu-run.tar.gz.part-"
  ls -la "$out"
}
trap pack EXIT

say "decode the dataset once"
"$py" -c "import pssr.data as d; print(d.load('cifar10-jpeg'))" || exit 1
E=${EPOCHS:-20}; [ "${SMOKE:-0}" = 1 ] && E=1
# phase A: the clean classifier and the Gaussian-trained one, side by side
pssr $(($(left) - 200)) train-classifier --config configs/cifar10-jpeg.toml --epochs "$E" --device "$dev" \
  --out runs/cifar10-jpeg --no-progress > logs/classifier.log 2>&1 &
a=$!
pssr $(($(left) - 150)) train-classifier --config configs/gaussian-cifar10-jpeg-s0.25.toml --epochs "$E" \
  --device "$dev" --out runs/cifar10-jpeg/gaussian-s0.25 --no-progress > logs/gaussian-s0.25.log 2>&1 &
g=$!
wait $a; say "classifier: rc=$? $(grep -o 'test_acc[^,]*' logs/classifier.log | tail -1)"
[ -f runs/cifar10-jpeg/classifier.pt ] || exit 1
clf=runs/cifar10-jpeg/classifier.pt
cert=(--n0 100 --n 10000 --alpha 0.001 --num 500 --subset-seed 0 --seed 0 --batch-size 2500 --device "$dev" --channels-last --no-progress)
[ "${SMOKE:-0}" = 1 ] && cert=(--n0 20 --n 200 --alpha 0.001 --num 4 --subset-seed 0 --seed 0 --batch-size 200 --device "$dev" --no-progress)
# phase B: the denoiser (stage 1, then stage 2), PSSR for the finding, the bare classifier's certificate
pssr $(($(left) - 60)) certify --model "classifier=$clf" --sigma 0.25 --out runs/certify/bare "${cert[@]}" \
  > logs/certify-bare.log 2>&1 &
c1=$!
pssr $(($(left) - 90)) train-pssr --config configs/pssr-cifar10-jpeg.toml --epochs "$((E < 6 ? E : 6))" --device "$dev" \
  --set run.eval_n=500 --set run.adaptive_n=0 --results runs/cifar10-jpeg/pssr/summary.json --no-progress \
  "${sp[@]}" > logs/pssr.log 2>&1 &
p=$!
s1=$(( $(left) - 260 )); [ "${SMOKE:-0}" = 1 ] && s1=120
pssr "$s1" train-denoiser --config configs/denoise-cifar10-jpeg-s0.25-pixel.toml --device "$dev" \
  --epochs "$([ "${SMOKE:-0}" = 1 ] && echo 1 || echo 40)" "${sd[@]}" > logs/denoise-pixel.log 2>&1
k=$(fin cifar10-jpeg-s0.25-pixel); say "denoiser stage 1: $k epochs"
[ "$k" -gt 0 ] && pssr 60 train-denoiser --config configs/denoise-cifar10-jpeg-s0.25-pixel.toml --device "$dev" \
  --epochs "$k" "${sd[@]}" >> logs/denoise-pixel.log 2>&1
s2=$(( $(left) - 175 )); [ "${SMOKE:-0}" = 1 ] && s2=120
pssr "$s2" train-denoiser --config configs/denoise-cifar10-jpeg-s0.25.toml --device "$dev" \
  --epochs "$([ "${SMOKE:-0}" = 1 ] && echo 1 || echo 40)" "${sd[@]}" > logs/denoise.log 2>&1
k=$(fin cifar10-jpeg-s0.25); say "denoiser stage 2: $k epochs"
[ "$k" -gt 0 ] && pssr 60 train-denoiser --config configs/denoise-cifar10-jpeg-s0.25.toml --device "$dev" \
  --epochs "$k" "${sd[@]}" >> logs/denoise.log 2>&1
wait $g; say "gaussian: $(grep -o 'test_acc[^,]*' logs/gaussian-s0.25.log | tail -1)"
# phase C: the certificates of the Gaussian-trained classifier and of the denoised one
[ -f runs/cifar10-jpeg/gaussian-s0.25/classifier.pt ] && pssr $(($(left) - 15)) certify \
  --model gaussian=runs/cifar10-jpeg/gaussian-s0.25/classifier.pt --sigma 0.25 --out runs/certify/gaussian \
  "${cert[@]}" > logs/certify-gaussian.log 2>&1 &
c2=$!
[ -f runs/denoise/cifar10-jpeg-s0.25/denoiser.pt ] && pssr $(($(left) - 15)) certify \
  --model pssr-denoised=runs/denoise/cifar10-jpeg-s0.25/denoiser.pt --sigma 0.25 --out runs/certify/denoised \
  "${cert[@]}" > logs/certify-denoised.log 2>&1 &
c3=$!
wait $c1 $c2 $c3 $p
say "done: $(left) s of the budget left"
