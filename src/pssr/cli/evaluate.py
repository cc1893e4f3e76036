"""``pssr evaluate``: the evaluation harness from the shell.

``pssr evaluate --checkpoint SPEC [--checkpoint SPEC ...] [--data NAME] --out DIR`` evaluates each
model under the paper's (gray-box) protocol and the adaptive attacks and writes DIR/report.json,
records.jsonl, report.md and plots; the work is saved in DIR/state and rerunning the same command
resumes. A SPEC is ``[NAME=]PATH`` (a PSSR or classifier checkpoint) or
``[NAME=]BASELINE[:KEY=VALUE,...]@PATH`` (an input-transformation baseline around PATH's
classifier), e.g. ``--checkpoint none=runs/digits/classifier.pt --checkpoint runs/digits/pssr.pt
--checkpoint jpeg:quality=60@runs/digits/classifier.pt``.

Before it starts, the command prints an estimate of its duration (:mod:`pssr.evaluation.estimate`)
and, for the full suite, that of ``--attacks fast`` (the fast suite of :mod:`pssr.attacks.sets`,
docs/attack-suites.md). ``--quick`` is the fast suite on at most 100 examples.

Under ``torchrun --nproc_per_node=N -m pssr evaluate ...`` the examples are sharded over the N
ranks (gloo on CPU, NCCL with ``--device cuda``, one GPU per rank); the records equal those of one
process, and rank 0 alone writes OUT and prints the summary (see docs/distributed.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

DEFAULT_ATTACKS = "paper,adaptive"
QUICK_N = 100  # --quick: at most this many examples (a first look, not a report's numbers)


def _resolve_attacks(args: argparse.Namespace) -> tuple[str, int | None]:
    """(attacks, n) after --quick: the fast suite on at most QUICK_N examples."""
    if not args.quick:
        return args.attacks or DEFAULT_ATTACKS, args.n
    if args.attacks is not None and args.attacks.strip().lower() != "fast":
        raise ValueError(f"--quick runs the fast suite: drop --attacks {args.attacks} or drop --quick")
    return "fast", QUICK_N if args.n is None else min(args.n, QUICK_N)


def _dataset_name(
    args: argparse.Namespace, infos: dict[str, dict[str, Any]]
) -> tuple[str | None, dict[str, Any]]:
    """The dataset name and load arguments evaluate_checkpoints will use (--data, else the checkpoints')."""
    from pssr.experiments.loading import checkpoint_data

    stored = checkpoint_data(infos)
    name = args.data or stored.get("name")
    kw: dict[str, Any] = {}
    if stored.get("name") == name and stored.get("data_dir") is not None:
        kw["data_dir"] = stored["data_dir"]
    if args.data_dir is not None:
        kw["data_dir"] = args.data_dir
    return name, kw


def _print_estimate(
    args: argparse.Namespace,
    attacks: str,
    n: int | None,
    models: dict[str, Any],
    name: str,
    kw: dict[str, Any],
) -> None:
    """Print how long the evaluation should take (and the fast suite's time when it is not the one run).

    Loads the data once more than the evaluation does (cached: seconds) and times each model's
    passes on one batch.
    """
    import pssr.data
    from pssr.evaluation.estimate import estimate_evaluation, format_seconds
    from pssr.experiments.loading import parse_eps

    split = getattr(pssr.data.load(name, **kw), args.split)
    n_eval = len(split) if n is None else min(n, len(split))
    n_eps = len(parse_eps(args.eps)) if args.eps else 1
    common = dict(dataset=name, norm=args.norm, n_eps=n_eps, batch_size=args.batch_size, times={})
    x = split.x[:8]
    est = estimate_evaluation(models, attacks, n_eval, x, **common)
    line = est.text()
    if attacks.strip().lower() != "fast":
        fast = estimate_evaluation(models, "fast", n_eval, x, **common)
        line += f"; --attacks fast takes ~{format_seconds(fast.seconds)}"
    if (Path(args.out) / "state" / "state.json").is_file() and not args.fresh:
        line += " (before what OUT/state has saved)"
    print(line + " (rough: see docs/attack-suites.md)", flush=True)


def _evaluate(args: argparse.Namespace) -> int:
    if args.only and args.report_only:
        raise ValueError("--only and --report-only contradict each other: --report-only computes nothing")
    from pssr import distributed as D
    from pssr.attacks.sets import expand_suites
    from pssr.evaluation.checks import CheckConfig
    from pssr.experiments.loading import evaluate_checkpoints

    attacks, n = _resolve_attacks(args)
    dataset = args.data
    if not args.report_only:
        from pssr.experiments.loading import load_models

        # the checkpoints name the dataset (a suite's hyper-parameters depend on it) and the
        # estimate times the models: loaded here once more than the evaluation does (seconds)
        models, infos = load_models(args.checkpoint)
        dataset, kw = _dataset_name(args, infos)
        if args.estimate and dataset and os.environ.get("RANK", "0") == "0":
            _print_estimate(args, attacks, n, models, dataset, kw)
        del models

    report, is_main = D.run_and_leave(
        lambda: evaluate_checkpoints(
            args.checkpoint,
            args.out,
            data=args.data,
            data_dir=args.data_dir,
            split=args.split,
            attacks=expand_suites(attacks, args.norm, dataset),
            eps=args.eps,
            resume=args.resume,
            fresh=args.fresh,
            norm=args.norm,
            n=n,
            subset_seed=args.subset_seed,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            progress=args.progress,
            checks=CheckConfig(n=args.check_n) if args.checks else False,
            compute=set(args.only) if args.only else not args.report_only,
        )
    )
    if not is_main:  # under torchrun: rank 0 wrote the report and prints the summary
        return 0
    d = report.to_dict()
    for name, info in d["models"].items():
        s = info["summary"]
        worst = "; ".join(
            f"{t} worst " + ", ".join(f"{100 * v:.1f}% @{e}" for e, v in by_eps.items())
            for t, by_eps in s["worst_case"].items()
            if t != "all"
        )
        flags = ", ".join(f["name"] for f in info.get("flags", []))
        clean = s["clean_accuracy"]
        clean_text = "pending" if clean is None or clean != clean else f"{100 * clean:.1f}%"
        pending = f"  [{len(info['pending'])} pending]" if info.get("pending") else ""
        print(f"{name}: clean {clean_text}; {worst}" + (f"  [flags: {flags}]" if flags else "") + pending)
    if d["config"].get("complete") is False:
        print(
            "partial report: the evaluation is unfinished; run the command without --report-only / --only to "
            "finish it"
        )
    if args.results is not None:
        from pssr.utils import atomic_write_json

        print(f"report JSON: {atomic_write_json(args.results, d)}")
    print(f"report: {args.out}/report.md")
    return 0


def model_names(text: str) -> tuple[str, ...]:
    """``--only``'s value: comma-separated model names."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated model names, got {text!r}")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate models under the paper protocol and adaptive attacks",
        description="Evaluate checkpoints / baselines with the trustworthy harness (checks, worst case, resume).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="model SPEC: [NAME=]PATH | [NAME=]BASELINE[:KEY=VALUE,...]@PATH\n"
        "  PATH: a PSSR checkpoint or a classifier training checkpoint\n"
        "  BASELINE: jpeg, bit-depth, median, tvm, identity (around PATH's classifier)\n"
        "examples:\n"
        "  pssr evaluate --checkpoint none=runs/digits/classifier.pt --checkpoint runs/digits/pssr.pt \\\n"
        "      --checkpoint jpeg:quality=60@runs/digits/classifier.pt --n 200 --out runs/digits/report\n"
        "  pssr evaluate --checkpoint ck.pt --data mnist --attacks pgd,square@adaptive --eps 0.1,0.2,0.3 --out r\n"
        "  pssr evaluate --checkpoint runs/digits/pssr.pt --quick --out runs/digits/quick   # fast suite, <= 100 images\n"
        "cost (one CPU thread, 8x8 digits, 5 models: undefended, PGD-AT, PSSR, JPEG, TV minimization;\n"
        "docs/attack-suites.md): the default suite 2.45 CPU s per image per model, --attacks fast 0.35\n"
        "(the same adaptive worst case on 4 of the 5 models, 4 points higher on the randomized one);\n"
        "28x28 Fashion-MNIST, 3 models (undefended, PSSR, JPEG): 3.23 against 0.94.\n"
        "A time estimate is printed before the evaluation starts (--no-estimate to skip it).",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="SPEC",
        help="a model to evaluate (repeatable); see below",
    )
    p.add_argument("--data", default=None, help="dataset name (default: the one recorded in the checkpoint)")
    p.add_argument("--data-dir", default=None, help="dataset folder or archive")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate on")
    p.add_argument(
        "--attacks",
        default=None,
        help=f"'paper', 'adaptive' (default: {DEFAULT_ATTACKS}, what reports use), 'fast' (an adaptive worst "
        "case in minutes: APGD-CE/APGD-T through the BPDA view, full-gradient PGD, Square 1000, BPDA+EOT PGD "
        "on randomized defenses, the same APGD under the paper protocol; a third to a seventh of the full "
        "suite's time, see docs/attack-suites.md), or attack names (NAME[@paper|@adaptive]), comma-separated",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"the fast suite on at most {QUICK_N} examples (a first look, not a report's numbers)",
    )
    p.add_argument(
        "--eps",
        default=None,
        help="budget(s), comma-separated, fractions allowed (e.g. 8/255,16/255); "
        "default: the dataset's customary budget",
    )
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    # --num-examples: torchrun's own parser rejects "--n" anywhere on its command line (an ambiguous
    # abbreviation of its --nnodes, --nproc-per-node, ...), so launches under torchrun need this spelling.
    p.add_argument(
        "--n",
        "--num-examples",
        dest="n",
        type=int,
        default=None,
        help="number of test examples (default: all); under torchrun write --num-examples",
    )
    p.add_argument("--subset-seed", type=int, default=None, help="draw a random subset of n with this seed")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="attack seed")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: where the models are: cpu)")
    p.add_argument("--out", required=True, help="output folder (report files; state in OUT/state)")
    p.add_argument("--results", type=Path, default=None, help="also write the report JSON to this file")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--resume",
        action="store_true",
        help="require an existing state in OUT/state (a plain rerun resumes too)",
    )
    g.add_argument("--fresh", action="store_true", help="discard OUT/state and start over")
    g.add_argument(
        "--report-only",
        action="store_true",
        help="compute nothing: write the report of what OUT/state holds (partial while unfinished; "
        "without the example images, which need an attack)",
    )
    p.add_argument(
        "--only",
        type=model_names,
        default=(),
        metavar="NAMES",
        help="compute only these models (comma-separated NAMEs of the specs); the others' rows come from "
        "OUT/state, pending where nothing is saved",
    )
    p.add_argument("--no-checks", dest="checks", action="store_false", help="skip the sanity checks")
    p.add_argument("--check-n", type=int, default=64, help="examples used by the sanity checks")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument(
        "--no-estimate",
        dest="estimate",
        action="store_false",
        help="do not print the time estimate (it times each model on one batch first)",
    )
    p.set_defaults(func=_evaluate)
