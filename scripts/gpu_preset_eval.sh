#!/usr/bin/env bash
# Finish a preset's evaluation on a lent GPU, inside a time budget.
#
# The presets' models are trained (on this CPU, or for cifar10-jpeg on a GPU: scripts/gpu_cifar10_jpeg.py,
# results/cifar10-jpeg/gpu/) and sit in runs/PRESET/; evaluating them (n=500, L-inf paper + adaptive
# suite, L2) is hours on this project's 2-core CPU (about ten for cifar10-jpeg). The device tool carries
# at most 8 ignored paths (64 MiB), so each preset's checkpoints and resumable evaluation state travel
# as one tar, and the data the preset reads must sit in ./shared/data (the ../shared beside a checkout
# does not travel):
#
#   here, once:    bash scripts/gpu_preset_eval.sh deps                 # -> .whl/ (see below)
#   here:          bash scripts/gpu_preset_eval.sh pack PRESET          # -> runs/PRESET-carry.tar.gz
#   on the GPU:    bash scripts/gpu_preset_eval.sh run "$OUT" 480 PRESET [PRESET...]   (carry .whl and the tar.gz files)
#   back here:     bash scripts/gpu_preset_eval.sh unpack FILES_AT/PRESET-preset.tar.gz
#
# The GPU machine's image has torch, numpy, scipy, scikit-learn, tqdm, pillow, matplotlib but not the
# `attacks` extra (adversarial-robustness-toolbox for the JPEG / bit-depth / median / TV baselines,
# pyautoattack for AutoAttack), and it cannot reach PyPI: `deps` puts the ART wheel and pyautoattack's
# code (without its 42 MB of example models) in .whl/, which `run` installs into /tmp/site first.
# Size: the device tool sends the tracked tree (~21 MB), ./shared (the CIFAR archive is 20 MB) and the
# carried paths, 64 MiB in all, so one cifar10-jpeg carry (20 MB) fits with .whl (1 MB) but not a
# second preset's beside it.
# Several presets given to `run` are evaluated side by side (one process each, same GPU).
# (PSSR_DEVICE=cpu runs the same steps here, as a check of the script.) PSSR_ONLY=pssr-no-rdrop,... passes
# `--only` (those models' rows first, the rest later; the state is shared with CPU runs that use --only too).
# PSSR_TRAIN=SECONDS first trains the preset's missing models side by side (cifar10-jpeg: PGD-AT, TRADES,
# PSSR and its four ablations, with the settings of the preset's evaluation arguments below, from the
# carried runs/cifar10-jpeg/classifier.pt), each job stopped after SECONDS, and brings them back as
# OUT/PRESET-models.tar.gz.part-* (`cat` the parts into one tar.gz, then `unpack`); the evaluation gets
# what is left of the budget. (A new checkout has no runs/: the models are not in git.) Measured on an
# H200 (2026-11-26, PSSR_TRAIN=290): the classifier carried, the seven runs trained side by side in 272 s.
# Keep tvm out of PSSR_ONLY: TV minimization under AutoAttack-BPDA ran about 290 s (two tries) on that GPU without
# finishing (the state saves after each unit, and that unit is one block), so it ate the evaluation time.
# A second `run` on the still-warm machine (carrying only .whl, or the same tar) continues from the state
# the first left there. `run` stops each evaluation at the budget (seconds; the state is saved after every batch, so a later
# `run` or a CPU `pssr reproduce` with the same arguments continues it) and packs the state, the
# calibration and whatever results/PRESET/ the preset wrote into OUT/PRESET-preset.tar.gz.
set -uo pipefail
cd "$(dirname "$0")/.."

args() {  # the preset's `pssr reproduce` arguments (the ones its CPU runs use, so the state is shared)
  case "$1" in
    cifar10-jpeg) echo --preset cifar10-jpeg --set pssr.epochs=6 --set pssr.bf16=true --set adv_train.epochs=6 \
                       --set adv_train.bf16=true --calibrate 0,0.02,0.05,0.1 --no-progress ;;
    mnist-10k)    echo --preset mnist-10k --n 500 --calibrate 0,0.02,0.05,0.1 --no-progress ;;
    *) echo "no evaluation arguments recorded for preset '$1'" >&2; return 1 ;;
  esac
}

preset_sets() {  # PRESET SECTION: the `--set SECTION.KEY=VALUE` pairs of args PRESET (one place for the settings)
  local a prev= out=()
  for a in $(args "$1"); do
    [ "$prev" = --set ] && [[ $a == "$2".* ]] && out+=(--set "$a")
    prev=$a
  done
  echo "${out[@]}"
}

train_missing() {  # cifar10-jpeg: train the preset's missing models side by side on the GPU, with the
  # settings its `pssr reproduce` uses (which then finds each run finished with these settings and reuses it)
  local preset=$1 logs=$2 tb=$3 r=runs/$1 pids=() m
  local run_=(timeout --signal=INT --kill-after=20 "$tb" "$py" -m pssr)  # each job stops at the training budget
  [ "$preset" = cifar10-jpeg ] || return 0
  [ -f "$r/classifier.pt" ] || { echo "train: $r/classifier.pt is missing (pssr train-classifier --config configs/cifar10-jpeg.toml)" >&2; return 1; }
  "$py" -c "import pssr.data as d; d.load('$preset')" || return 1  # decoded once, before the jobs share it
  for m in pgd-at trades; do
    [ -f "$r/$m.json" ] && continue
    "${run_[@]}" train-adversarial --config configs/cifar10-jpeg.toml --set adv_train.init_checkpoint="$r/classifier.pt" \
      $(preset_sets "$preset" adv_train) --set adv_train.method="$m" --out "$r" --no-progress \
      > "$logs/train-$m.log" 2>&1 &
    pids+=($!)
  done
  pssr_job() {  # NAME [--set pssr.KEY=VALUE]: the variant's run folder is runs/PRESET/NAME, as reproduce names it
    local name=$1; shift
    "${run_[@]}" train-pssr --config configs/pssr-cifar10-jpeg.toml --out "$r/$name" --results "$r/$name/summary.json" \
      --set run.classifier="$r/classifier.pt" $(preset_sets "$preset" pssr) --set run.eval_n=500 \
      --set run.adaptive_n=0 --no-progress "$@" > "$logs/train-$name.log" 2>&1
  }
  [ -f "$r/pssr/pssr-train.json" ] || { pssr_job pssr & pids+=($!); }
  # the ablations share PSSR's adversarial-example cache (same classifier, attack and data): they start once it is written
  local t=0 cache=$r/pssr/pssr-adv-cache.pt
  while [ ! -f "$cache" ] && [ ! -f "$r/pssr/pssr-train.json" ] && [ $t -lt "$tb" ]; do sleep 2; t=$((t + 2)); done
  # the ablations' names and settings, as reproduce spells them (pssr.reproduce.ABLATIONS): "NAME KEY=VALUE..."
  local name sets
  while read -r name sets; do
    name=pssr-$name
    [ -f "$r/$name/pssr-train.json" ] && continue
    mkdir -p "$r/$name"; [ -f "$cache" ] && ln -f "$cache" "$r/$name/pssr-adv-cache.pt"
    pssr_job "$name" $(for m in $sets; do echo --set "pssr.$m"; done) & pids+=($!)
  done < <("$py" -c "from pssr.reproduce import ABLATIONS, _toml
for k, v in ABLATIONS.items(): print(k, *(f'{a}={_toml(b)}' for a, b in v.items()))")
  local rc=0; for m in "${pids[@]}"; do wait "$m" || rc=1; done
  return $rc
}

state_paths() {  # what the evaluation writes, that travels back
  ls -d runs/"$1"/eval-linf runs/"$1"/eval-l2 runs/"$1"/pssr-calibrated.json results/"$1"/report.json \
        results/"$1"/report.md results/"$1"/linf results/"$1"/l2 2>/dev/null
}

case "${1:-}" in
  deps)
    mkdir -p .whl && grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
    py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
    "$py" -m pip download -q --no-deps --only-binary=:all: -d .whl adversarial-robustness-toolbox==1.20.1 || exit 1
    site=$("$py" -c "import pyautoattack, os; print(os.path.dirname(os.path.dirname(pyautoattack.__file__)))") || {
      echo "deps: pyautoattack is not installed here (bash scripts/install.sh --test)" >&2; exit 1; }
    tar czf .whl/pyautoattack.tgz --exclude=examples --exclude=__pycache__ -C "$site" pyautoattack || exit 1
    ls -la .whl ;;
  pack)
    preset=${2:?usage: pack PRESET}; r=runs/$preset
    args "$preset" > /dev/null || exit 2
    # checkpoints and summaries of the preset's runs, without the (regenerable) adversarial-example caches
    tar czf "runs/$preset-carry.tar.gz" --exclude='*adv-cache*' --exclude='*train-state*' \
        "$r"/classifier.{pt,json} "$r"/{pgd-at,trades}.{pt,json} "$r"/pssr $(ls -d "$r"/pssr-{surgery-only,regeneration-only,no-rdrop,random-mask} 2>/dev/null) \
        $(ls -d "$r"/eval-linf "$r"/eval-l2 "$r"/pssr-calibrated.json 2>/dev/null) || exit 1
    ls -la "runs/$preset-carry.tar.gz" ;;
  run)
    out=${2:?usage: run OUT BUDGET_SECONDS PRESET...}; budget=${3:?budget}; shift 3
    mkdir -p "$out"
    export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
    py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
    if ! "$py" -c "import art, pyautoattack" 2>/dev/null; then
      ls .whl/*.whl .whl/pyautoattack.tgz > /dev/null || { echo "run: no ART / pyautoattack here: run 'deps' and carry .whl" >&2; exit 2; }
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && tar xzf .whl/pyautoattack.tgz -C /tmp/site || exit 1
      export PYTHONPATH=$PYTHONPATH:/tmp/site
      "$py" -c "import art, pyautoattack" || exit 1
    fi
    t_start=$SECONDS
    for preset in "$@"; do
      [ -f "runs/$preset-carry.tar.gz" ] || continue  # nothing carried: train_missing makes the runs
      # A warm machine keeps runs/ between calls: unpacking the same carry again would put its older
      # evaluation state back over what the last call saved, so it is unpacked once per tar's content.
      sum=$(sha256sum "runs/$preset-carry.tar.gz" | cut -d' ' -f1)
      if [ "$(cat "runs/$preset/.carried" 2>/dev/null)" != "$sum" ]; then
        tar xzf "runs/$preset-carry.tar.gz" && echo "$sum" > "runs/$preset/.carried" || exit 1
      else
        echo "runs/$preset: this carry was unpacked by an earlier call on this machine; continuing its state"
      fi
    done
    if [ -n "${PSSR_TRAIN:-}" ]; then  # PSSR_TRAIN=SECONDS: first train what is missing (cifar10-jpeg), each job stopped
      # after SECONDS (it checkpoints every epoch; a later call resumes it); the models come back as
      # OUT/PRESET-models.tar.gz.part-* (16 MiB pieces: cat them, then `unpack`), the training logs as OUT/train.log
      for preset in "$@"; do
        mkdir -p /tmp/train-logs
        train_missing "$preset" /tmp/train-logs "$PSSR_TRAIN" || echo "train: a $preset job failed (see train.log)" >&2
        for f in /tmp/train-logs/train-*.log; do echo "== $f"; cat "$f"; done > "$out/train.log"
        tar czf - --exclude='*adv-cache*' "runs/$preset"/classifier.{pt,json} "runs/$preset"/{pgd-at,trades}.{pt,json} \
          $(ls -d "runs/$preset"/pssr "runs/$preset"/pssr-* 2>/dev/null | grep -v calibrated) \
          | split -b 15m - "$out/$preset-models.tar.gz.part-"
      done
      budget=$((budget - (SECONDS - t_start))); echo "training done after $((SECONDS - t_start)) s; $budget s left for the evaluation"
      [ "$budget" -gt 30 ] || { ls -la "$out"; exit 0; }
    fi
    for preset in "$@"; do
      read -ra a <<< "$(args "$preset")" || exit 2
      # SIGINT: the CLI stops between batches' saves like a Ctrl-C; KILL 20 s later if it does not
      # with PSSR_ONLY, those models first, then (in what is left of the budget) every other unit
      ( end=$((SECONDS + budget))
        for only in ${PSSR_ONLY:+"$PSSR_ONLY"} ""; do
          left=$((end - SECONDS)); [ "$left" -gt 20 ] || break
          timeout --signal=INT --kill-after=20 "$left" "$py" -m pssr reproduce "${a[@]}" --device "${PSSR_DEVICE:-cuda}" \
            ${only:+--only "$only"} >> "$out/$preset.log" 2>&1
          echo "exit status $? (124: stopped at the budget; rerun to continue)" >> "$out/$preset.log"
        done
        tar czf "$out/$preset-preset.tar.gz" $(state_paths "$preset") ) &
    done
    wait
    ls -la "$out" ;;
  unpack)
    tar xzf "${2:?usage: unpack PRESET-preset.tar.gz}" && echo "unpacked; finish or re-render with the preset's pssr reproduce command" ;;
  *)
    echo "usage: $0 deps | pack PRESET | run OUT BUDGET_SECONDS PRESET... | unpack TAR.GZ" >&2; exit 2 ;;
esac
