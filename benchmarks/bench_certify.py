"""Randomized-smoothing certification: speed of our CERTIFY loop and agreement with ART's.

Two sections, written as JSON to ``--out`` (default ``results/benchmarks-certify.json``)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_certify.py speed --model runs/zoo/mnist-10k/classifier.pt
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_certify.py art --model runs/zoo/mnist-10k/classifier.pt \
        --sigma 0.25 --num 50 --n 1000

* ``speed``: the same base model's batched forward throughput (``model(x)`` on a ready batch of
  ``--batch-size`` images, no noise, no bookkeeping) against the certify loop's samples per second
  (``SmoothedClassifier.certify``: noise drawn from a seeded generator, forward, argmax, counts,
  Clopper-Pearson). Issue 19's bar: the loop at >= 80% of the forward throughput. The two are timed
  in alternation, ``--repeats`` times each, and the medians are compared (the machine may be shared).
* ``art``: ART's ``PyTorchRandomizedSmoothing.certify`` and ours on the same model, examples, sigma,
  n0 (ART's ``sample_size``), n and alpha; different noise, so they agree within sampling error:
  the report gives the share of equal predictions, the mean and max ``|p_lower(ours) - p_lower(ART)|``
  (ART's ``p_lower`` recovered as ``Phi(radius / sigma)``) and both certified accuracies. ART bounds
  with statsmodels; where that is not installed, the same exact interval from scipy's ``binomtest``
  is patched in (recorded in the JSON).

A PSSR / denoiser checkpoint is timed and compared as its :class:`DenoisedClassifier`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average  # noqa: E402

from pssr.certify import SmoothedClassifier, load_base_model  # noqa: E402
from pssr.certify.run import select_examples  # noqa: E402
from pssr.experiments.summary import host_info  # noqa: E402
from pssr.train.loop import plain_metadata  # noqa: E402


def _data(info: dict[str, Any], name: str | None) -> Any:
    import pssr.data

    dname = name or (info["checkpoint"].get("data") or {}).get("name")
    dname = dname or ((info["checkpoint"].get("metrics") or {}).get("data") or {}).get("name")
    if not dname:
        raise SystemExit("no dataset recorded in the checkpoint: pass --data")
    return pssr.data.load(dname)


def speed(
    model: torch.nn.Module, x: torch.Tensor, sigma: float, n0: int, n: int, batch: int, repeats: int
) -> dict:
    """Median forward throughput vs median certify-loop throughput, timed in alternation."""
    g = SmoothedClassifier(model, sigma, batch_size=batch)
    xb = x[0:1].expand(batch, *x.shape[1:]).contiguous() + sigma * torch.randn(batch, *x.shape[1:])
    fwd, loop = [], []
    with torch.no_grad():
        model(xb)  # warm-up
        g.certify(x[0], n0, min(n, batch), 0.001, g.generator(0))
        for r in range(repeats):
            reps = max(1, (n0 + n) // batch)
            t0 = time.perf_counter()
            for _ in range(reps):
                model(xb).argmax(1)
            fwd.append(reps * batch / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            g.certify(x[r % len(x)], n0, n, 0.001, g.generator(r))
            loop.append((n0 + n) / (time.perf_counter() - t0))
    f, lp = statistics.median(fwd), statistics.median(loop)
    return {
        "forward_samples_per_s": f,
        "certify_samples_per_s": lp,
        "ratio": lp / f,
        "bar": 0.8,
        "meets_bar": lp / f >= 0.8,
        "forward_runs": fwd,
        "certify_runs": loop,
        "batch_size": batch,
        "n0": n0,
        "n": n,
        "repeats": repeats,
        "note": "forward: model(x).argmax(1) on a ready noisy batch; certify: n0 + n noisy samples drawn, "
        "classified, counted and bounded for one example",
    }


def art_compare(model: torch.nn.Module, split: Any, args: argparse.Namespace, nb_classes: int) -> dict:
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    from scipy.stats import binomtest, norm

    idx = select_examples(len(split), args.num, args.subset_seed)
    x, y = split.x[idx], split.y[idx]
    rs = PyTorchRandomizedSmoothing(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=nb_classes,
        sample_size=args.n0,
        scale=args.sigma,
        alpha=args.alpha,
        device_type="cpu",
    )
    patched = False
    try:
        import statsmodels  # noqa: F401
    except ImportError:
        patched = True

        def lcb(self: Any, k: int, total: int) -> float:
            return binomtest(int(k), int(total)).proportion_ci(1 - 2 * self.alpha, method="exact").low

        type(rs)._lower_confidence_bound = lcb
    np.random.seed(args.seed)
    t0 = time.perf_counter()
    art_pred, art_rad = rs.certify(x.numpy(), n=args.n, batch_size=args.batch_size)
    art_s = time.perf_counter() - t0
    g = SmoothedClassifier(model, args.sigma, batch_size=args.batch_size)
    t0 = time.perf_counter()
    ours = [g.certify(x[i], args.n0, args.n, args.alpha, g.generator(1000 + i)) for i in range(len(x))]
    ours_s = time.perf_counter() - t0
    diffs, same = [], 0
    for i, c in enumerate(ours):
        same += int(int(art_pred[i]) == c.prediction)
        if art_pred[i] != -1 and not c.abstained:
            diffs.append(abs(c.p_lower - float(norm.cdf(art_rad[i] / args.sigma))))

    def cert_acc(pred: list[int], rad: list[float], r: float) -> float:
        return float(np.mean([(p == int(t)) and (q >= r) for p, q, t in zip(pred, rad, y.tolist())]))

    radii = (0.0, 0.25, 0.5, 0.75, 1.0)
    return {
        "examples": len(idx),
        "sigma": args.sigma,
        "n0": args.n0,
        "n": args.n,
        "alpha": args.alpha,
        "same_prediction_share": same / len(idx),
        "mean_abs_p_lower_diff": float(np.mean(diffs)) if diffs else None,
        "max_abs_p_lower_diff": float(np.max(diffs)) if diffs else None,
        "binomial_se_at_p_0.99": float(np.sqrt(0.99 * 0.01 / args.n)),
        "certified_accuracy_ours": {
            f"{r:g}": cert_acc([c.prediction for c in ours], [c.radius for c in ours], r) for r in radii
        },
        "certified_accuracy_art": {
            f"{r:g}": cert_acc([int(p) for p in art_pred], list(map(float, art_rad)), r) for r in radii
        },
        "seconds_ours": ours_s,
        "seconds_art": art_s,
        "art_bound_patched_with_scipy_binomtest": patched,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("speed", "art"))
    p.add_argument("--model", required=True, help="[NAME=]checkpoint (classifier or PSSR denoiser)")
    p.add_argument("--data", default=None)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--num", type=int, default=50)
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--channels-last", action="store_true", help="NHWC weights (as pssr certify --channels-last)"
    )
    p.add_argument("--out", default="results/benchmarks-certify.json")
    args = p.parse_args(argv)
    name, model, info = load_base_model(args.model)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    data = _data(info, args.data)
    if args.what == "speed":
        res = speed(model, data.test.x[:8], args.sigma, args.n0, args.n, args.batch_size, args.repeats)
    else:
        res = art_compare(model, data.test, args, data.num_classes)
    res.update(
        {
            "channels_last": args.channels_last,
            "model": name,
            "path": str(info["path"]),
            "dataset": data.name,
            "load_average": load_average(),
        }
    )
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.is_file() else {}
    doc[args.what] = res
    doc["metadata"], doc["host"] = plain_metadata(), host_info()
    from pssr.utils import atomic_write_json

    atomic_write_json(out, doc)
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, list)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
