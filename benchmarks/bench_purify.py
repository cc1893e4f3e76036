"""Purification throughput, latency and peak memory: PSSR vs each baseline defense vs the bare classifier.

Prints one table and writes ``results/benchmarks.json``::

    .venv/bin/python benchmarks/bench_purify.py --config configs/pssr-fashion-mnist.toml [--device cpu]

Speed does not depend on trained weights, so models are built from the config with fresh weights
(a trained PSSR checkpoint can be given with ``--checkpoint``). Each model is timed on its full
forward pass (purify + classify), at batch 1 (latency) and batch 256 (throughput), in fp32 and
with bf16 autocast (+ channels_last for the CNNs). Robust accuracy is never measured in bf16.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_memory, time_call  # noqa: E402

from pssr.config import build, load_toml  # noqa: E402
from pssr.defense.baselines import create_baseline  # noqa: E402
from pssr.defense.pssr import PSSR, PSSRConfig  # noqa: E402
from pssr.models import create_model  # noqa: E402
from pssr.utils import atomic_write_json, autocast_context, default_device, run_metadata  # noqa: E402

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "mnist-10k": (1, 28, 28), "fashion-mnist": (1, 28, 28),
          "cifar10-jpeg": (3, 32, 32), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
CLASSIFIERS = {1: "small-cnn", 3: "resnet20"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pssr-fashion-mnist.toml")
    ap.add_argument("--checkpoint", default=None, help="a trained PSSR checkpoint (else fresh weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baselines", default="jpeg,bit-depth,median,tvm")
    ap.add_argument("--out", default="results/benchmarks.json")
    args = ap.parse_args(argv)

    device = default_device(args.device)
    mapping = load_toml(args.config)
    dataset = mapping["data"]["name"]
    shape = SHAPES[dataset]
    torch.manual_seed(0)
    if args.checkpoint:
        pssr = PSSR.load(args.checkpoint, device=device)
        clf = pssr.classifier
    else:
        clf = create_model(CLASSIFIERS[shape[0]], in_channels=shape[0]).to(device).eval()
        pssr = PSSR(clf, build(PSSRConfig, mapping["pssr"]), image_shape=shape).to(device).eval()
    models = {"classifier": clf, "pssr": pssr}
    for name in [b for b in args.baselines.split(",") if b]:
        models[name] = create_baseline(name, clf)

    rows = []
    for name, model in models.items():
        for precision in ("fp32", "bf16"):
            for batch in (1, 256):
                x = torch.rand(batch, *shape, device=device)
                if precision == "bf16":
                    x = x.contiguous(memory_format=torch.channels_last)

                def run(model=model, x=x, precision=precision) -> None:
                    with torch.no_grad(), autocast_context(device, precision == "bf16"):
                        model(x)

                with peak_memory(device) as mem:
                    t = time_call(run, device, warmup=1, repeats=args.repeats if batch > 1 else 3 * args.repeats)
                rows.append({"model": name, "precision": precision, "batch": batch,
                             "latency_ms": 1000 * t["median_s"], "images_per_s": batch / t["median_s"],
                             "peak_mib": mem.get("peak_mib"), "memory_kind": mem.get("kind")})
                r = rows[-1]
                print(f"{name:12s} {precision:5s} batch {batch:4d}: {r['latency_ms']:9.2f} ms  "
                      f"{r['images_per_s']:9.1f} img/s  peak {r['peak_mib'] or float('nan'):8.1f} MiB", flush=True)

    atomic_write_json(args.out, {"benchmark": "purification", "config": args.config, "dataset": dataset,
                                 "image_shape": list(shape), "trained_weights": bool(args.checkpoint),
                                 "device": str(device), "rows": rows, "metadata": run_metadata(),
                                 "note": "images/s of the whole forward pass (purify + classify); peak memory is the "
                                         "process's peak RSS on CPU (cumulative across rows), CUDA allocator peak on GPU"})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
