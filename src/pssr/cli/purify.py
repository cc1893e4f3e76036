"""``pssr purify --checkpoint ck.pt a.png b.png --out DIR [--figure]``: purified PNGs (and side-by-side
figures) written after checking every input; a zoo model name may stand for the checkpoint
(``--model fashion-mnist/pssr``)."""

from __future__ import annotations

import argparse


def _purify(args: argparse.Namespace) -> int:
    from pssr.defense.files import purify_files
    from pssr.zoo import resolve

    ck = resolve(args.checkpoint)  # a checkpoint path, or a zoo model name (pssr zoo list)
    for r in purify_files(ck, args.images, args.out, figure=args.figure, device=args.device):
        extra = f", figure {r['figure']}" if "figure" in r else ""
        print(
            f"{r['input']} -> {r['output']} ({r['removed_pixels']} pixels restored; "
            f"prediction {r['pred_before']} -> {r['pred_after']}{extra})"
        )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser(
        "purify",
        help="purify image files with a trained PSSR checkpoint",
        description="Purify PNG/JPEG images (of the model's exact input size) with PSSR.",
    )
    q.add_argument(
        "--checkpoint",
        "--model",
        dest="checkpoint",
        required=True,
        metavar="PATH_OR_NAME",
        help="PSSR checkpoint (pssr.pt from train-pssr) or zoo model name (pssr zoo list)",
    )
    q.add_argument("images", nargs="+", help="PNG/JPEG files (all are checked before anything is written)")
    q.add_argument(
        "--out",
        default="purified",
        help="output folder for purified PNGs (created when missing; default: purified)",
    )
    q.add_argument("--figure", action="store_true", help="also write input/score/mask/restored figures")
    q.add_argument("--device", default=None, help="cpu, cuda or auto (default: auto)")
    q.set_defaults(func=_purify)
