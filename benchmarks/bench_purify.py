"""Purification throughput, latency and peak memory: PSSR vs each baseline defense vs the bare classifier.

Prints one table and writes ``results/benchmarks-purify.json`` (``benchmarks/run_all.py`` runs this and
``bench_train.py`` into one ``results/benchmarks.json``)::

    .venv/bin/python benchmarks/bench_purify.py --config configs/pssr-fashion-mnist.toml [--device cpu] [--quick]

Speed does not depend on trained weights or on the images, so models are built from the config with
fresh weights (a trained PSSR checkpoint can be given with ``--checkpoint``) and fed uniform random
images. Each model is timed on its full forward pass (purify + classify), at batch 1 (latency) and
batch 256 (throughput), in fp32 and with bf16 autocast (+ channels_last input). Robust accuracy is
never measured in bf16. With ``tvm`` in the baselines, ART's TVM (``tvm-art``: ``impl="art"``, ART's
own defaults) is timed too, for comparison with the default batched torch solver. ``--quick``: batch 8 instead of 256, one repeat: a smoke run, not numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, peak_memory, time_call, write_section  # noqa: E402

from pssr.config import build, load_toml  # noqa: E402
from pssr.defense.baselines import create_baseline  # noqa: E402
from pssr.defense.pssr import PSSR, PSSRConfig  # noqa: E402
from pssr.models import create_model  # noqa: E402
from pssr.utils import autocast_context, default_device  # noqa: E402

SHAPES = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "mnist-10k": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10-jpeg": (3, 32, 32),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}
CLASSIFIERS = {1: "small-cnn", 3: "resnet20"}
DATA_NOTE = (
    "uniform random images (speed does not depend on the data) and fresh weights unless trained_weights"
)


def run_purification(
    config: str,
    *,
    device: torch.device,
    checkpoint: str | None = None,
    repeats: int = 5,
    baselines: tuple[str, ...] = ("jpeg", "bit-depth", "median", "tvm"),
    art_tvm: bool = True,
    quick: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Time every model; return the ``purification`` section (rows + what they mean)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    mapping = load_toml(config)
    dataset = mapping["data"]["name"]
    if dataset not in SHAPES:
        raise ValueError(
            f"{config}: dataset {dataset!r} has no benchmark image shape; known: {', '.join(SHAPES)}"
        )
    shape = SHAPES[dataset]
    batches = (1, 8) if quick else (1, 256)
    repeats = 1 if quick else repeats
    torch.manual_seed(0)
    if checkpoint:
        pssr = PSSR.load(checkpoint, device=device)
        clf = pssr.classifier
    else:
        clf = create_model(CLASSIFIERS[shape[0]], in_channels=shape[0]).to(device).eval()
        pssr = PSSR(clf, build(PSSRConfig, mapping["pssr"]), image_shape=shape).to(device).eval()
    models = {"classifier": clf, "pssr": pssr}
    for name in baselines:
        models[name] = create_baseline(name, clf)
    if art_tvm and "tvm" in baselines:
        models["tvm-art"] = create_baseline("tvm", clf, impl="art")

    rows = []
    for name, model in models.items():
        for precision in ("fp32", "bf16"):
            for batch in batches:
                x = torch.rand(batch, *shape, device=device)
                if precision == "bf16":
                    x = x.contiguous(memory_format=torch.channels_last)

                def run(
                    model: torch.nn.Module = model, x: torch.Tensor = x, precision: str = precision
                ) -> None:
                    with torch.no_grad(), autocast_context(device, precision == "bf16"):
                        model(x)

                n_rep = repeats if batch > 1 else 3 * repeats
                with peak_memory(device) as mem:
                    t = time_call(run, device, warmup=1, repeats=n_rep)
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "batch": batch,
                        "repeats": n_rep,
                        "latency_ms": 1000 * t["median_s"],
                        "images_per_s": batch / t["median_s"],
                        "peak_mib": mem.get("peak_mib"),
                        "memory_kind": mem.get("kind"),
                    }
                )
                r = rows[-1]
                log(
                    f"{name:12s} {precision:5s} batch {batch:4d}: {r['latency_ms']:9.2f} ms  "
                    f"{r['images_per_s']:9.1f} img/s  peak {r['peak_mib'] or float('nan'):8.1f} MiB"
                )
    configs = {name: m.config() for name, m in models.items() if name not in ("classifier", "pssr")}
    return {
        "config": config,
        "dataset": dataset,
        "image_shape": list(shape),
        "trained_weights": bool(checkpoint),
        "device": str(device),
        "quick": quick,
        "data": DATA_NOTE,
        "baseline_configs": configs,
        "rows": rows,
        "note": "latency_ms is the median over repeats; images/s of the whole forward pass (purify + classify); "
        "bf16 = autocast + channels_last input; peak memory is the process's peak RSS during the row on "
        "CPU (reset before each row where Linux allows), CUDA allocator peak on GPU",
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/pssr-fashion-mnist.toml")
    ap.add_argument("--checkpoint", default=None, help="a trained PSSR checkpoint (else fresh weights)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baselines", default="jpeg,bit-depth,median,tvm")
    ap.add_argument("--no-art-tvm", action="store_true", help="do not time ART's TVM next to the torch one")
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 8 instead of 256, one repeat")
    ap.add_argument("--out", default="results/benchmarks-purify.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = default_device(args.device)
    load_start = load_average()
    section = run_purification(
        args.config,
        device=device,
        checkpoint=args.checkpoint,
        repeats=args.repeats,
        baselines=tuple(b for b in args.baselines.split(",") if b),
        art_tvm=not args.no_art_tvm,
        quick=args.quick,
    )
    write_section(args.out, "purification", section, device, load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
