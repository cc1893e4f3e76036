"""Train the CIFAR-10 (JPEG copy) baselines and PSSR variants on one GPU inside a fixed time budget.

A GPU lease here is short (minutes), so this script sizes the runs to the budget instead of guessing:

1. decode the dataset once (the cache is shared by every job);
2. probe: start every job (PGD-AT, TRADES, PSSR; the four PSSR ablations as soon as PSSR has written
   its adversarial-example cache, which they share), so the probe sees the contention of the real
   runs; read each job's training images/s from its heartbeat log lines, then stop them all;
3. from the measured rates, pick the epochs that fit what is left of the budget (the PSSR variants
   all get the same number, so the ablations compare like with like) and restart every job from the
   start (the adversarial trainers from the classifier; the PSSR variants keep the cache);
4. stop whatever is still running at the deadline (each run checkpoints every epoch: a later
   session resumes it) and pack each run folder, without its adversarial-example cache, as
   ``OUT/<job>.tar.gz`` plus ``OUT/driver.log`` (the training state only of unfinished runs).

Usage (on the GPU machine, repository root, ``runs/cifar10-jpeg/classifier.pt`` and
``shared/data/cifar10-jpeg.tar.gz`` present)::

    python3 scripts/gpu_cifar10_jpeg.py --out "$OUT" --budget 540

``--smoke`` runs the same steps on a few hundred images (a CPU check of the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = "runs/cifar10-jpeg/classifier.pt"
N_TRAIN = 50_000
SMOKE_SUBSET = 1024
CACHE = "pssr-adv-cache.pt"
ADV_JOBS = {"pgd-at": [], "trades": ["--set", "adv_train.method=trades"]}
PSSR_JOBS = {
    "pssr": [],
    "pssr-surgery-only": ["--set", "pssr.use_regeneration=false"],
    "pssr-regeneration-only": ["--set", "pssr.use_surgery=false"],
    "pssr-no-rdrop": ["--set", "pssr.w_rdrop=0.0"],
    "pssr-random-mask": ["--set", "pssr.scorer=random"],
}
EVAL_MARGIN_S = {"adv": 45.0, "pssr": 60.0}  # final evaluations (whole test set) after the last epoch
STARTUP_S = 30.0  # a relaunched job: interpreter, data, cache, CUDA context
SAFETY = 1.1  # measured epoch times are stretched by this (validation, checkpoints, noise)
MAX_EPOCHS = {"adv": 30, "pssr": 20}  # the configs' epochs
MIN_EPOCHS = {"adv": 3, "pssr": 2}


def log(msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} [driver] {msg}"
    print(line, flush=True)
    with open(LOG, "a") as f:
        f.write(line + "\n")


def launch(name: str, argv: list[str], work: Path) -> subprocess.Popen:
    (work / name).mkdir(parents=True, exist_ok=True)
    out = open(work / f"{name}.log", "a")
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT / "src"),
        PSSR_HEARTBEAT_S=os.environ.get("PSSR_HEARTBEAT_S", "10"),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS=os.environ.get("JOB_THREADS", "2"),
    )
    cmd = [sys.executable, "-m", "pssr", *argv]
    log(f"start {name}: {' '.join(cmd[2:])}")
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def adv_argv(name: str, work: Path, epochs: int, smoke: bool) -> list[str]:
    a = [
        "train-adversarial",
        "--config",
        "configs/cifar10-jpeg.toml",
        "--set",
        f"adv_train.init_checkpoint={CLASSIFIER}",
        "--out",
        str(work / name),
        "--epochs",
        str(epochs),
        "--bf16",
        "--summary",
        str(work / name / "summary.json"),
        "--no-progress",
        *ADV_JOBS[name],
    ]
    return a + (["--set", "adv_train.eval_n=200"] if smoke else [])


def pssr_argv(name: str, work: Path, epochs: int, eval_n: int, adaptive_n: int, smoke: bool) -> list[str]:
    a = [
        "train-pssr",
        "--config",
        "configs/pssr-cifar10-jpeg.toml",
        "--out",
        str(work / name),
        "--results",
        str(work / name / "summary.json"),
        "--no-progress",
        "--set",
        f"run.classifier={CLASSIFIER}",
        "--set",
        f"pssr.epochs={epochs}",
        "--set",
        "pssr.bf16=true",
        "--set",
        f"run.eval_n={eval_n}",
        "--set",
        f"run.adaptive_n={adaptive_n}",
        *PSSR_JOBS[name],
    ]
    return a + (["--set", f"pssr.train_subset={SMOKE_SUBSET}", "--set", "pssr.val_size=100"] if smoke else [])


def last_rate(logfile: Path) -> float | None:
    """Training images/s between the last two heartbeat lines (None before the second: the first
    interval includes the warm-up). Two runs measured with the epoch's mean rate instead finished
    80-100 s before their deadline."""
    rates = re.findall(
        r"(?:step|batch) \d+/\d+, \d+ img/s \((\d+) since the last line\)",
        logfile.read_text(errors="replace"),
    )
    return float(rates[-1]) if len(rates) >= 2 else None


def dead(procs: dict[str, subprocess.Popen]) -> set[str]:
    return {n for n, p in procs.items() if p.poll() is not None}


def pack(work: Path, out: Path, names: list[str]) -> None:
    for name in names:
        folder = work / name
        if not folder.is_dir():
            continue
        tmp = out / f".{name}.tar.gz"
        finished = (folder / "summary.json").is_file()
        with tarfile.open(tmp, "w:gz") as tar:
            for f in sorted(folder.iterdir()):
                if f.name == CACHE or (finished and f.name == "pssr-train-state.pt"):
                    continue  # rebuilt in a minute / needed only to resume an unfinished run
                tar.add(f, arcname=f"{name}/{f.name}")
            if (work / f"{name}.log").is_file():
                tar.add(work / f"{name}.log", arcname=f"{name}/train.log")
        tmp.rename(out / f"{name}.tar.gz")


def main() -> int:
    global LOG
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for the packed runs and driver.log")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "cifar10-jpeg" / "gpu", help="run folders")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds from start to the packed results")
    ap.add_argument("--probe-timeout", type=float, default=150.0, help="longest probe, seconds")
    ap.add_argument("--only", default="", help="comma-separated job names (default: all)")
    ap.add_argument("--smoke", action="store_true", help="a few hundred images: a check of this script")
    args = ap.parse_args()
    t0 = time.time()
    deadline = t0 + args.budget - 25.0  # leave time to pack
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    LOG = args.out / "driver.log"
    if not (ROOT / CLASSIFIER).is_file():
        log(f"missing {CLASSIFIER}: train it with `pssr train-classifier --config configs/cifar10-jpeg.toml`")
        return 2

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch, pssr.data as d; x = d.load('cifar10-jpeg'); "
            "print('data', x.train.x.shape, 'cuda', torch.cuda.is_available(), torch.__version__)",
        ],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=open(LOG, "a"),
        stderr=subprocess.STDOUT,
    )
    log(f"data ready after {time.time() - t0:.0f} s")

    # 2. probe: every job at once; the PSSR variants share the adversarial-example cache of the first
    only = set(args.only.split(",")) if args.only else set(ADV_JOBS) | set(PSSR_JOBS)
    adv_jobs = [n for n in ADV_JOBS if n in only]
    pssr_jobs = [n for n in PSSR_JOBS if n in only]
    n_train = SMOKE_SUBSET if args.smoke else N_TRAIN
    procs = {n: launch(n, adv_argv(n, args.work, MAX_EPOCHS["adv"], args.smoke), args.work) for n in adv_jobs}
    if pssr_jobs:
        first = pssr_jobs[0]
        procs[first] = launch(
            first, pssr_argv(first, args.work, MAX_EPOCHS["pssr"], 100, 0, args.smoke), args.work
        )
    tp = time.time()
    rates: dict[str, float] = {}
    while time.time() - tp < args.probe_timeout:
        time.sleep(3)
        cache = args.work / pssr_jobs[0] / CACHE if pssr_jobs else None
        if cache is not None and cache.is_file() and len(procs) < len(adv_jobs) + len(pssr_jobs):
            log(f"adversarial-example cache ready after {time.time() - tp:.0f} s: shared with the ablations")
            for n in pssr_jobs[1:]:
                (args.work / n).mkdir(parents=True, exist_ok=True)
                target = args.work / n / CACHE
                target.unlink(missing_ok=True)
                os.link(cache, target)  # same key (classifier, attack, data): same examples
                procs[n] = launch(
                    n, pssr_argv(n, args.work, MAX_EPOCHS["pssr"], 100, 0, args.smoke), args.work
                )
        for n in procs:
            if (r := last_rate(args.work / f"{n}.log")) and rates.get(n) != r:
                rates[n] = r  # kept running (the same contention as later) until every job has a rate
                log(f"probe {n}: {r:.0f} img/s")
        if set(rates) | dead(procs) >= set(adv_jobs) | set(pssr_jobs):
            break
    for n, p in procs.items():
        stop(p)
        if p.returncode not in (0, None, -signal.SIGTERM):
            log(f"probe {n} exited with {p.returncode}; see {n}.log")
            tail = (args.work / f"{n}.log").read_text(errors="replace").splitlines()[-15:]
            log("\n".join(tail))

    # 3. sizes from the measurements (the PSSR variants: one number for all, from the slowest)
    left = deadline - time.time()
    procs = {}
    plan: dict[str, int] = {}
    pssr_rates = [rates[n] for n in pssr_jobs if n in rates]
    if pssr_rates:
        epoch_s = n_train / min(pssr_rates) * SAFETY
        e = min(int((left - STARTUP_S - EVAL_MARGIN_S["pssr"]) // epoch_s), MAX_EPOCHS["pssr"])
        if e >= MIN_EPOCHS["pssr"]:
            plan |= {n: e for n in pssr_jobs if (args.work / n / CACHE).is_file()}
    for n in adv_jobs:
        if n in rates:
            e = min(
                int((left - STARTUP_S - EVAL_MARGIN_S["adv"]) // (N_TRAIN / rates[n] * SAFETY)),
                MAX_EPOCHS["adv"],
            )
            if e >= MIN_EPOCHS["adv"]:
                plan[n] = e
    log(
        f"{left:.0f} s left; plan (epochs): {json.dumps(plan)}; images/s {json.dumps(rates)} (n_train {n_train})"
    )
    for n, e in plan.items():
        if n in ADV_JOBS:
            argv = adv_argv(n, args.work, e, args.smoke)
        else:
            argv = pssr_argv(n, args.work, e, 300 if args.smoke else 0, 30 if args.smoke else 500, args.smoke)
        procs[n] = launch(n, argv + ["--no-resume"], args.work)  # the cache is kept: its key still matches

    # 4. wait for the deadline
    while time.time() < deadline and any(p.poll() is None for p in procs.values()):
        time.sleep(5)
    for n, p in procs.items():
        if p.poll() is None:
            log(f"{n} still running at the deadline: stopped (resume from its folder)")
        stop(p)
        log(f"{n}: exit {p.returncode}")
    pack(args.work, args.out, list(ADV_JOBS) + list(PSSR_JOBS))
    log(f"packed after {time.time() - t0:.0f} s")
    return 0


LOG = Path("driver.log")

if __name__ == "__main__":
    sys.exit(main())
