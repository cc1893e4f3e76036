"""``pssr zoo list``, ``pssr zoo show NAME`` and ``pssr zoo path NAME``: the pretrained models.

``list`` prints one row per model card (name, kind, size, and the accuracies measured on the shipped
file: clean, PGD under the paper's protocol, full-gradient adaptive PGD, with n and eps); ``show``
prints one card and verifies the file's sha256; ``path`` prints an fp32 checkpoint path usable
wherever a command takes a checkpoint (``pssr evaluate --checkpoint $(pssr zoo path NAME)``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}" if isinstance(v, (int, float)) else "-"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The ``pssr zoo list`` table in Markdown (docs/zoo.md's table is this output)."""
    lines = [
        "| name | kind | size | n | L-inf eps | PGD steps (paper/adaptive) | clean % | paper PGD % | adaptive PGD % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        eps = f"{r['eps']:.3g}" if r["eps"] is not None else "-"
        lines.append(
            f"| `{r['name']}` | {r['kind']} | {_size(r['size_bytes'])} | {r['n'] or '-'} | {eps} | {r['steps'] or '-'} | "
            f"{_pct(r['clean'])} | {_pct(r['paper'])} | {_pct(r['adaptive'])} |"
        )
    return "\n".join(lines)


def markdown_details(cards: list[dict[str, Any]]) -> str:
    """How each model was made and measured, in Markdown (docs/zoo.md's per-model sections)."""
    out = []
    for c in cards:
        acc = c.get("accuracy") or {}
        secs = c.get("train_wall_seconds")
        out += [
            f"### `{c['name']}`",
            "",
            f"{c.get('architecture', c['kind'])}; `{c['file']}`, {c['size_bytes']:,} bytes, sha256 `{c['sha256']}`. "
            + (f"Training wall time {_duration(secs)}. " if isinstance(secs, (int, float)) else "")
            + c.get("notes", ""),
            "",
            "```",
            *c.get("made_by", []),
            "```",
            "",
        ]
        tm = c.get("trainer_metrics") or {}
        if "test_acc" in tm:
            out += [
                f"The trainer's own test accuracy (fp32, before export): {_pct(tm['test_acc'])}% "
                f"on {tm.get('n_test', 'all')} test images.",
                "",
            ]
        if acc:
            out += [
                f"Measured by `{acc.get('measured_by')}` (n={acc.get('n')}, subset seed {acc.get('subset_seed')}).",
                "",
            ]
    return "\n".join(out).rstrip()


def _list(args: argparse.Namespace) -> int:
    from pssr.zoo.store import summary_rows

    rows = summary_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if args.markdown:
        from pssr.zoo import cards

        details = markdown_details(sorted(cards(), key=lambda c: c["name"]))
        print(markdown_table(rows) + ("\n\n" + details if args.details else ""))
        return 0
    head = ("name", "kind", "size", "n", "eps", "steps", "clean %", "paper PGD %", "adaptive PGD %")
    table = [
        (
            r["name"],
            r["kind"],
            _size(r["size_bytes"]) + ("" if r["shipped"] else " (url)"),
            str(r["n"] or "-"),
            f"{r['eps']:.3g}" if r["eps"] is not None else "-",
            r["steps"] or "-",
            _pct(r["clean"]),
            _pct(r["paper"]),
            _pct(r["adaptive"]),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) if table else len(h) for i, h in enumerate(head)]
    for line in (head, *table):
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    if not table:
        print("(no models in this installation's zoo)")
    print(
        "paper PGD: made on the classifier, then purified (gray-box); adaptive PGD: exact gradients through "
        "the whole model. `pssr zoo show NAME` gives the commands and settings."
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from pssr import zoo

    c = zoo.card(args.name)
    if args.json:
        print(json.dumps(c, indent=2))
        return 0
    p = zoo.path(c["name"], download=False) if not args.no_verify else None
    for k, v in c.items():
        if isinstance(v, list) and all(isinstance(i, (int, float, str)) for i in v) and len(str(v)) < 100:
            v = json.dumps(v)
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, indent=2).replace("\n", "\n    ")
        print(f"{k}: {v}")
    if p is not None:
        print(f"verified: {p} (sha256 matches)")
    return 0


def _path(args: argparse.Namespace) -> int:
    from pssr import zoo

    print(zoo.resolve(zoo.card(args.name)["name"]) if not args.stored else zoo.path(args.name))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "zoo",
        help="pretrained models shipped with pssr (list, show, path)",
        description="The pretrained model zoo: checkpoints shipped in half precision, verified by sha256 "
        "on load (docs/zoo.md).",
    )
    sub = p.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    ls = sub.add_parser("list", help="one line per model: name, size, measured accuracies")
    ls.add_argument("--json", action="store_true", help="the rows as JSON")
    ls.add_argument("--markdown", action="store_true", help="the table in Markdown (as in docs/zoo.md)")
    ls.add_argument("--details", action="store_true", help="with --markdown: how each model was made")
    ls.set_defaults(func=_list)
    sh = sub.add_parser("show", help="a model's card: file, sha256, commands, accuracies and settings")
    sh.add_argument("name", help="a zoo name, e.g. fashion-mnist/pssr")
    sh.add_argument("--json", action="store_true", help="the card as JSON")
    sh.add_argument("--no-verify", action="store_true", help="do not check the file's sha256")
    sh.set_defaults(func=_show)
    pa = sub.add_parser("path", help="print a local fp32 checkpoint path for a zoo model")
    pa.add_argument("name", help="a zoo name, e.g. fashion-mnist/pssr")
    pa.add_argument("--stored", action="store_true", help="the stored fp16 file instead")
    pa.set_defaults(func=_path)
