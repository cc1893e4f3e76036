"""``pssr certify``: randomized smoothing certificates from the shell.

``pssr certify --model SPEC [--model SPEC ...] --out DIR [--sigma 0.25,0.5]`` certifies each model
(a classifier, a Gaussian-trained classifier, or a PSSR denoiser checkpoint, which is smoothed as
``classifier(denoise(x + delta))``) with CERTIFY of Cohen et al. (2019) on a seeded random subset of
the test split, and writes DIR/report.json, report.md, certify.png and records.jsonl.gz; the records
are saved in DIR/state as they come and rerunning the same command resumes. Under
``torchrun --nproc_per_node=N -m pssr certify ...`` the examples are dealt out over the ranks and
rank 0 writes. ``--sigma`` defaults to the sigma each model was trained for.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _sigmas(text: str) -> list[float]:
    try:
        out = [float(t) for t in text.split(",") if t.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sigma: expected comma-separated numbers, got {text!r}") from e
    if not out or any(not s > 0 for s in out):
        raise argparse.ArgumentTypeError(f"--sigma: expected positive numbers, got {text!r}")
    return out


def _certify(args: argparse.Namespace) -> int:
    from pssr import distributed as D
    from pssr.certify.loading import certify_checkpoints
    from pssr.utils import default_device

    def run() -> dict[str, Any]:
        D.init_distributed(default_device(args.device or "cpu"))
        return certify_checkpoints(
            args.model,
            args.out,
            sigma=args.sigma,
            data=args.data,
            data_dir=args.data_dir,
            split=args.split,
            device=args.device,
            channels_last=args.channels_last,
            n0=args.n0,
            n=args.n,
            alpha=args.alpha,
            num_examples=args.num if args.num > 0 else None,
            subset_seed=args.subset_seed,
            seed=args.seed,
            batch_size=args.batch_size,
            compute=not args.report_only,
            fresh=args.fresh,
            from_report=args.from_report,
            progress=args.progress,
        )

    report, is_main = D.run_and_leave(run)
    if not is_main:
        return 0
    for key, u in report["units"].items():
        ca = u["certified_accuracy"]
        cells = ", ".join(
            f"r={r}: {100 * ca[r]['accuracy']:.1f}%"
            for r in ("0", "0.25", "0.5", "1")
            if ca[r]["accuracy"] is not None
        )
        state = "" if u["complete"] else f" [partial: {u['n_examples']}/{report['settings']['num_examples']}]"
        print(f"{key}: {cells or 'no records'}{state}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "certify",
        help="certified L2 robustness by randomized smoothing (optionally PSSR-denoised)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="SPEC",
        help="[NAME=]PATH of a classifier or PSSR/denoiser checkpoint (repeatable)",
    )
    p.add_argument(
        "--sigma",
        type=_sigmas,
        default=None,
        help="noise levels, e.g. 0.25,0.5 (default: each model's training sigma)",
    )
    p.add_argument("--out", required=True, help="report folder (its state/ subfolder makes reruns resume)")
    p.add_argument("--data", default=None, help="dataset name (default: the one in the checkpoints)")
    p.add_argument("--data-dir", default=None, help="dataset folder or archive")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--num", type=int, default=500, help="examples drawn at random from the split (0 = all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the examples' draw")
    p.add_argument("--n0", type=int, default=100, help="selection samples per example")
    p.add_argument("--n", type=int, default=10_000, help="estimation samples per example")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    p.add_argument("--seed", type=int, default=0, help="root of the per-example noise seeds")
    p.add_argument("--batch-size", type=int, default=1000, help="noisy samples per forward pass")
    p.add_argument("--device", default=None, help="cpu (default), cuda, auto")
    p.add_argument(
        "--channels-last", action="store_true", help="NHWC weights (faster convolutions on CPU and GPU)"
    )
    p.add_argument("--report-only", action="store_true", help="compute nothing: the report of what is saved")
    p.add_argument("--fresh", action="store_true", help="discard the saved state first")
    p.add_argument(
        "--from-report",
        default=None,
        metavar="DIR",
        help="start from a saved report folder with the same settings (report.json + records.jsonl.gz, "
        "e.g. under results/): its units join this report and only what is missing is computed",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=_certify)
