"""All benchmarks in one run: purification speed (bench_purify) and training time (bench_train).

Writes one ``results/benchmarks.json`` with sections ``purification`` (a list: one run per PSSR config,
by default Fashion-MNIST's and CIFAR-10's) and ``training``, plus the
environment a reader needs to judge the numbers (torch version and threads, CPU model, the 1-minute
load average at start and end: a busy machine makes every number slower)::

    .venv/bin/python benchmarks/run_all.py [--device cpu] [--quick] [--out results/benchmarks.json]

Estimated from single-step timings: about 8 minutes on 2 CPU cores under a load average of 5, less
when idle (each training row stops after ``--row-budget`` seconds of timed steps). ``--quick`` (about
10 seconds) is a smoke run whose numbers mean nothing. All inputs are random tensors: speed does not
depend on the data.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_purify import run_purification  # noqa: E402
from bench_train import run_training  # noqa: E402
from common import environment, load_average  # noqa: E402

from pssr.utils import atomic_write_json, default_device, run_metadata  # noqa: E402

DEFAULT_CONFIGS = ("configs/pssr-fashion-mnist.toml", "configs/pssr-cifar10-jpeg.toml")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--config",
        action="append",
        default=None,
        help="PSSR config of a purification run (repeatable; default: "
        f"{' and '.join(DEFAULT_CONFIGS)}, an MNIST-size and a CIFAR-size model)",
    )
    ap.add_argument(
        "--checkpoint",
        default=None,
        help="a trained PSSR checkpoint for the purification run (with exactly one --config)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5, help="purification: timed calls per batch-256 row")
    ap.add_argument("--baselines", default="jpeg,bit-depth,median,tvm")
    ap.add_argument("--no-art-tvm", action="store_true", help="purification: do not time ART's TVM")
    ap.add_argument("--steps", type=int, default=20, help="training: timed optimizer steps per row, at most")
    ap.add_argument(
        "--row-budget", type=float, default=15.0, help="training: seconds per row before stopping early"
    )
    ap.add_argument("--batch", type=int, default=128, help="training batch size")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny batches, one step / repeat per row")
    ap.add_argument("--out", default="results/benchmarks.json")
    args = ap.parse_args(argv)
    configs = args.config or list(DEFAULT_CONFIGS)
    if args.checkpoint and len(configs) != 1:
        ap.error("--checkpoint needs exactly one --config (the checkpoint's)")

    device = default_device(args.device)
    env = environment(device)
    env["load_average_1min_start"] = load_average()
    t0 = time.perf_counter()
    purification = []
    for config in configs:
        print(f"== purification ({config})")
        purification.append(
            run_purification(
                config,
                device=device,
                checkpoint=args.checkpoint,
                repeats=args.repeats,
                baselines=tuple(b for b in args.baselines.split(",") if b),
                art_tvm=not args.no_art_tvm,
                quick=args.quick,
            )
        )
    print("== training")
    training = run_training(
        device=device,
        steps=args.steps,
        batch=args.batch,
        row_budget_s=args.row_budget or None,
        quick=args.quick,
    )
    env["load_average_1min_end"] = load_average()
    env["wall_s"] = time.perf_counter() - t0
    atomic_write_json(
        args.out,
        {
            "benchmark": "pssr-benchmarks",
            "quick": args.quick,
            "data": "random tensors throughout: speed does not depend on the data",
            "environment": env,
            "purification": purification,
            "training": training,
            "metadata": run_metadata(),
        },
    )
    print(
        f"wrote {args.out} ({env['wall_s']:.0f} s; 1-min load average {env['load_average_1min_start']} -> "
        f"{env['load_average_1min_end']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
