"""``pssr train-pssr`` and ``pssr purify``: the PSSR defense from the shell.

``pssr train-pssr --config configs/pssr-digits.toml [--set pssr.epochs=3] [--out DIR]`` trains the
scorer and regenerator in front of the classifier checkpoint named in ``[run] classifier``, runs a
quick gray-box + adaptive evaluation on the test split and writes ``DIR/pssr.pt`` and the JSON
summary (rerunning the same command resumes). Under ``torchrun --nproc_per_node=N -m pssr train-pssr
...`` training and the quick evaluation are sharded over the N ranks and rank 0 alone writes DIR and
prints the summary (see docs/distributed.md). ``pssr purify --checkpoint ck.pt a.png b.png --out
DIR [--figure]`` writes purified PNGs (and side-by-side figures).
"""

from __future__ import annotations

import argparse
import shlex
import sys


def _train_pssr(args: argparse.Namespace) -> int:
    from pssr import distributed as D
    from pssr.config import apply_overrides, load_toml
    from pssr.train.pssr_train import run_from_config

    mapping = apply_overrides(load_toml(args.config), list(args.overrides))
    s, is_main = D.run_and_leave(lambda: run_from_config(
        mapping, args.out, results=args.results, resume=args.resume, progress=args.progress,
        command=shlex.join(["pssr", *sys.argv[1:]])))
    if not is_main:  # under torchrun: rank 0 wrote the files and prints the summary
        return 0
    t = s["test"]
    adaptive = (f"adaptive (n={t['adaptive_n']}) bpda-identity {t['pssr_adaptive_pgd_identity_acc']:.4f}, "
                f"mask-constant {t['pssr_adaptive_pgd_mask-constant_acc']:.4f}, worst {t['pssr_adaptive_worst_acc']:.4f}"
                if t["adaptive_n"] else "no adaptive attack (run.adaptive_n = 0)")
    print(f"pssr on {s['dataset']} (n={t['n']}, Linf eps={t['eps']:.4g}, PGD-{t['steps']}): "
          f"clean {t['clf_clean_acc']:.4f} -> {t['pssr_clean_acc']:.4f}; gray-box PGD {t['clf_pgd_acc']:.4f} -> "
          f"{t['pssr_graybox_pgd_acc']:.4f}; {adaptive}; checkpoint {s['checkpoint']}")
    return 0


def _purify(args: argparse.Namespace) -> int:
    from pssr.defense.pssr import purify_files

    for r in purify_files(args.checkpoint, args.images, args.out, figure=args.figure, device=args.device):
        extra = f", figure {r['figure']}" if "figure" in r else ""
        print(f"{r['input']} -> {r['output']} ({r['removed_pixels']} pixels restored; "
              f"prediction {r['pred_before']} -> {r['pred_after']}{extra})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-pssr", help="train the PSSR defense from a config file",
                              description="Train PSSR ([data], [pssr], [run] tables of a TOML config) and evaluate it.")
    p.add_argument("--config", required=True, help="TOML file, e.g. configs/pssr-digits.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (repeatable), e.g. --set pssr.epochs=3")
    p.add_argument("--out", default=None, help="output folder (default: [run] out, else runs/<dataset>/pssr)")
    p.add_argument("--results", default=None, help="also write the JSON summary here (default: [run] results)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing training state")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=_train_pssr)

    q = subparsers.add_parser("purify", help="purify image files with a trained PSSR checkpoint",
                              description="Purify PNG/JPEG images (of the model's exact input size) with PSSR.")
    q.add_argument("--checkpoint", required=True, help="PSSR checkpoint (pssr.pt from train-pssr)")
    q.add_argument("images", nargs="+", help="PNG/JPEG files")
    q.add_argument("--out", required=True, help="output folder for purified PNGs")
    q.add_argument("--figure", action="store_true", help="also write input/score/mask/restored figures")
    q.add_argument("--device", default=None, help="cpu, cuda or auto (default: auto)")
    q.set_defaults(func=_purify)
