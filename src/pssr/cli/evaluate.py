"""``pssr evaluate`` and ``pssr report``: the evaluation harness from the shell.

``pssr evaluate --checkpoint SPEC [--checkpoint SPEC ...] [--data NAME] --out DIR`` evaluates each
model under the paper's (gray-box) protocol and the adaptive attacks and writes DIR/report.json,
records.jsonl, report.md and plots; the work is saved in DIR/state and rerunning the same command
resumes. A SPEC is ``[NAME=]PATH`` (a PSSR or classifier checkpoint) or
``[NAME=]BASELINE[:KEY=VALUE,...]@PATH`` (an input-transformation baseline around PATH's
classifier), e.g. ``--checkpoint none=runs/digits/classifier.pt --checkpoint runs/digits/pssr.pt
--checkpoint jpeg:quality=60@runs/digits/classifier.pt``.

Under ``torchrun --nproc_per_node=N -m pssr evaluate ...`` the examples are sharded over the N
ranks (gloo on CPU, NCCL with ``--device cuda``, one GPU per rank); the records equal those of one
process, and rank 0 alone writes OUT and prints the summary (see docs/distributed.md).

``pssr report DIR`` redraws report.md and the plots from DIR/report.json.
"""

from __future__ import annotations

import argparse


def _evaluate(args: argparse.Namespace) -> int:
    if args.only and args.report_only:
        raise ValueError("--only and --report-only contradict each other: --report-only computes nothing")
    from pssr import distributed as D
    from pssr.evaluation.checks import CheckConfig
    from pssr.evaluation.loading import evaluate_checkpoints

    report, is_main = D.run_and_leave(
        lambda: evaluate_checkpoints(
            args.checkpoint,
            args.out,
            data=args.data,
            data_dir=args.data_dir,
            split=args.split,
            attacks=args.attacks,
            eps=args.eps,
            resume=args.resume,
            fresh=args.fresh,
            norm=args.norm,
            n=args.n,
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
    print(f"report: {args.out}/report.md")
    return 0


def model_names(text: str) -> tuple[str, ...]:
    """``--only``'s value: comma-separated model names."""
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated model names, got {text!r}")
    return names


def _report(args: argparse.Namespace) -> int:
    from pssr.evaluation.report import rerender

    print(f"wrote {rerender(args.dir)}")
    return 0


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
        "  pssr evaluate --checkpoint ck.pt --data mnist --attacks pgd,square@adaptive --eps 0.1,0.2,0.3 --out r",
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
        default="paper,adaptive",
        help="'paper', 'adaptive', attack names (NAME[@paper|@adaptive]), comma-separated",
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
    p.set_defaults(func=_evaluate)

    q = subparsers.add_parser(
        "report",
        help="re-render report.md and plots from a saved report.json",
        description="Redraw report.md and the plots of an evaluation report folder.",
    )
    q.add_argument("dir", help="folder holding report.json")
    q.set_defaults(func=_report)
