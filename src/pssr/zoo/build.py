"""Making zoo entries: export a trained checkpoint in half precision, then measure it.

Maintainers' tool, not needed to use the zoo::

    python -m pssr.zoo.build export runs/zoo/fashion-mnist/pssr/pssr.pt \\
        --made-by "pssr train-classifier ..." --made-by "pssr train-pssr ..." --train-seconds 1400
    python -m pssr.zoo.build measure fashion-mnist/pssr --n 500

``export`` strips optimizer and RNG state, stores floating-point tensors as fp16 under
``weights/<dataset>--<kind>.pt`` and writes the card (sha256, size, commands, training time, the
largest logit change fp16 storage causes on random inputs). ``measure`` evaluates the *shipped*
file (loaded back in fp32) with :func:`pssr.evaluate` on a seeded random subset of the test split:
clean accuracy, PGD under the paper's protocol (made on the classifier, then purified; on a
classifier this is plain white-box PGD) and full-gradient PGD through the whole model (``pgd-full``,
the adaptive attack of Athalye et al. 2018 where the pipeline is differentiable), and records the
numbers with n, seeds, eps and the attacks' settings in the card.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pssr.utils import atomic_write_json, load_checkpoint, save_checkpoint
from pssr.utils.meta import command_line, git_revision
from pssr.zoo import store
from pssr.zoo.store import CARDS_SCHEMA, CARDS_SCHEMA_VERSION, ZooError, sha256_of

log = logging.getLogger(__name__)

# Training-checkpoint keys a zoo file keeps (optimizer, scheduler and RNG state are for resuming only).
CLASSIFIER_KEYS = ("format", "kind", "model", "state_dict", "epoch", "config", "data", "metrics", "metadata")
MEASURE_ATTACKS = ("pgd", "pgd-full@adaptive")


def _kind_and_dataset(ck: dict[str, Any]) -> tuple[str, str]:
    from pssr.defense.pssr import FORMAT

    if ck.get("format") == FORMAT:
        data = (ck.get("metrics") or {}).get("data") or {}
        return "pssr", str(data.get("name", ""))
    kind = ck.get("kind")
    if kind not in store.KINDS or "state_dict" not in ck:
        raise ZooError(f"not a checkpoint the zoo can hold (kind {kind!r}); expected {store.KINDS.list()}")
    return str(kind), str((ck.get("data") or {}).get("name", ""))


def half(ck: dict[str, Any]) -> dict[str, Any]:
    """``ck`` with fp32 tensors stored as fp16 (a tensor that would overflow fp16 stays fp32)."""

    def cast(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and obj.dtype == torch.float32:
            h = obj.to(torch.float16)
            return h if torch.isfinite(h).all() or not torch.isfinite(obj).all() else obj
        if isinstance(obj, dict):
            return {k: cast(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(cast(v) for v in obj)
        return obj

    return cast(ck)


def _logit_change(fp32: dict[str, Any], fp16: dict[str, Any], kind: str, image_shape: Sequence[int]) -> float:
    """Largest |logit| difference between the fp32 model and its fp16-stored copy on 16 random images."""
    a = store.KINDS.create(kind, ck=fp32).eval()
    b = store.KINDS.create(kind, ck=store.to_fp32(fp16)).eval()
    x = torch.rand((16, *image_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def _write_cards(cards: list[dict[str, Any]], cards_file: Path) -> None:
    doc = {"schema": CARDS_SCHEMA, "schema_version": CARDS_SCHEMA_VERSION, "models": cards}
    atomic_write_json(cards_file, doc)


def _upsert(new: dict[str, Any], cards_file: Path) -> None:
    cards = store.read_cards(cards_file) if cards_file.exists() else []
    names = [c["name"] for c in cards]
    if new["name"] in names:
        cards[names.index(new["name"])] = new
    else:
        cards.append(new)
    _write_cards(cards, cards_file)


def export(
    checkpoint: str | Path,
    *,
    made_by: Sequence[str],
    train_seconds: float | None = None,
    notes: str = "",
    classifier: str | None = None,
    url: str | None = None,
    weights_dir: str | Path | None = None,
    cards_file: str | Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Store ``checkpoint`` in the zoo (fp16) and write its card; returns the card.

    ``made_by`` are the exact commands that trained it (in order), ``train_seconds`` their wall time,
    ``classifier`` the zoo name of the classifier a defense embeds. A card's earlier accuracies are
    kept only if the file is byte-identical (they were measured on that file).
    """
    weights_dir = Path(weights_dir) if weights_dir is not None else store.WEIGHTS_DIR
    cards_file = Path(cards_file) if cards_file is not None else store.CARDS_FILE
    ck = load_checkpoint(checkpoint)
    kind, dataset = _kind_and_dataset(ck)
    if not dataset:
        raise ZooError(f"{checkpoint}: no dataset name recorded; the zoo needs one")
    if kind != "pssr":
        ck = {k: ck[k] for k in CLASSIFIER_KEYS if k in ck}
    name = f"{dataset}/{kind}"
    stored = half(ck)
    stored["zoo"] = {"name": name, "dtype": "float16", "source_sha256": sha256_of(checkpoint)}
    if kind == "pssr":
        image_shape, classes, arch = (
            ck["image_shape"],
            ck["num_classes"],
            f"pssr around {ck['classifier']['name']}",
        )
    else:
        image_shape, classes, arch = ck["data"]["image_shape"], ck["data"]["num_classes"], ck["model"]["name"]
    diff = _logit_change(ck, stored, kind, image_shape)
    out = save_checkpoint(weights_dir / f"{dataset}--{kind}.pt", stored)
    sha = sha256_of(out)
    old = (
        next((c for c in store.read_cards(cards_file) if c["name"] == name), {})
        if cards_file.exists()
        else {}
    )
    metrics = ck.get("metrics") or {}
    new = {
        "name": name,
        "kind": kind,
        "dataset": dataset,
        "architecture": arch,
        "image_shape": list(image_shape),
        "num_classes": int(classes),
        "file": out.name,
        **({"url": url} if url else {}),
        "sha256": sha,
        "size_bytes": out.stat().st_size,
        "dtype": "float16",
        "fp16_max_logit_change": diff,
        **({"classifier": classifier} if classifier else {}),
        "made_by": list(made_by),
        "train_wall_seconds": train_seconds,
        "trainer_metrics": {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n_train"
        },
        "exported_by": command or command_line(),
        "exported_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_revision": git_revision(),
        "notes": notes,
    }
    if old.get("sha256") == sha and "accuracy" in old:
        new["accuracy"] = old["accuracy"]
    _upsert(new, cards_file)
    return new


def measure(
    name: str,
    n: int = 500,
    subset_seed: int = 0,
    seed: int = 0,
    out: str | Path | None = None,
    progress: bool = False,
    cards_file: str | Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Evaluate zoo model ``name`` as shipped and record its headline accuracies in its card."""
    from pssr.attacks.sets import BUDGETS, dataset_family
    from pssr.evaluation.harness import parse_attacks
    from pssr.experiments.loading import evaluate_checkpoints

    cards_file = Path(cards_file) if cards_file is not None else store.CARDS_FILE
    c = store.card(name)
    out = Path(out) if out is not None else Path("runs") / "zoo" / "eval" / c["file"].removesuffix(".pt")
    t0 = time.time()
    report = evaluate_checkpoints(
        [f"{c['kind']}={store.resolve(c['name'])}"],
        out,
        attacks=",".join(MEASURE_ATTACKS),
        n=n,
        subset_seed=subset_seed,
        seed=seed,
        progress=progress,
    )
    m = c["kind"]
    eps = BUDGETS[dataset_family(c["dataset"])]["linf"]
    specs = parse_attacks(list(MEASURE_ATTACKS), dataset=c["dataset"])
    flags = [f"{f.get('name')}: {f.get('message')}" for f in report.flags(m)]
    acc = {
        "split": "test",
        "n": next(r["n"] for r in report.results if r["model"] == m and r["attack"] == "clean"),
        "subset_seed": subset_seed,
        "attack_seed": seed,
        "norm": "linf",
        "eps": eps,
        "clean": report.accuracy(m, "clean"),
        "paper_pgd": report.accuracy(m, "pgd", "paper", eps),
        "adaptive_pgd_full": report.accuracy(m, "pgd-full", "adaptive", eps),
        "attacks": [
            {"label": s.label, "attack": s.name, "threat_model": s.threat_model, **_plain(s.kwargs)}
            for s in specs
        ],
        "protocol": "paper_pgd: PGD made on the classifier (for a defense: then purified); "
        "adaptive_pgd_full: PGD with exact gradients through the whole model",
        "weights": "the shipped fp16 file, loaded back in fp32",
        "sanity_flags": flags,
        "measured_by": command or command_line(),
        "report": str(out),
        "wall_seconds": round(time.time() - t0, 1),
        "git_revision": git_revision(),
    }
    cards = store.read_cards(cards_file)
    for cc in cards:
        if cc["name"] == c["name"]:
            if cc["sha256"] != c["sha256"]:
                raise ZooError(f"{name}: the card changed while it was being measured; measure it again")
            cc["accuracy"] = acc
    _write_cards(cards, cards_file)
    return acc


def render_doc(doc: str | Path) -> Path:
    """Replace the block between ``<!-- zoo:begin ...-->`` and ``<!-- zoo:end -->`` in ``doc`` with the
    ``pssr zoo list --markdown --details`` rendering of the cards (tables come from the JSON)."""
    import re

    from pssr.cli.zoo import markdown_details, markdown_table
    from pssr.utils import atomic_write_text

    doc = Path(doc)
    text = doc.read_text(encoding="utf-8")
    body = (
        markdown_table(store.summary_rows())
        + "\n\n"
        + markdown_details(sorted(store.cards(), key=lambda c: c["name"]))
    )
    new, n = re.subn(
        r"(<!-- zoo:begin[^\n]*-->\n).*?(<!-- zoo:end -->)",
        lambda m: m.group(1) + body + "\n" + m.group(2),
        text,
        flags=re.S,
    )
    if n != 1:
        raise ZooError(f"{doc}: expected one <!-- zoo:begin --> ... <!-- zoo:end --> block, found {n}")
    return atomic_write_text(doc, new)


def _plain(kw: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dict(kw), default=str))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pssr.zoo.build", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="store a trained checkpoint in the zoo (fp16) and write its card")
    e.add_argument("checkpoint")
    e.add_argument("--made-by", action="append", required=True, help="a command that made it (repeatable)")
    e.add_argument("--train-seconds", type=float, default=None, help="wall time of those commands")
    e.add_argument("--classifier", default=None, help="zoo name of the classifier a defense embeds")
    e.add_argument("--notes", default="")
    e.add_argument("--url", default=None, help="where the file is published, when not shipped")
    m = sub.add_parser("measure", help="measure a zoo model's headline accuracies into its card")
    m.add_argument("name")
    m.add_argument("--n", type=int, default=500)
    m.add_argument("--subset-seed", type=int, default=0)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", default=None)
    r = sub.add_parser("render-doc", help="render the cards into a Markdown file's zoo:begin/zoo:end block")
    r.add_argument("doc", nargs="?", default="docs/zoo.md")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    cmd = "python -m pssr.zoo.build " + shlex.join(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "render-doc":
            print(f"wrote {render_doc(args.doc)}")
        elif args.cmd == "export":
            c = export(
                args.checkpoint,
                made_by=args.made_by,
                train_seconds=args.train_seconds,
                notes=args.notes,
                classifier=args.classifier,
                url=args.url,
                command=cmd,
            )
            print(f"{c['name']}: {c['file']} {c['size_bytes']} bytes sha256 {c['sha256']}")
        else:
            a = measure(
                args.name, n=args.n, subset_seed=args.subset_seed, seed=args.seed, out=args.out, command=cmd
            )
            print(
                f"{args.name}: {json.dumps({k: a[k] for k in ('n', 'eps', 'clean', 'paper_pgd', 'adaptive_pgd_full')})}"
            )
    except (ValueError, FileNotFoundError) as err:
        print(f"python -m pssr.zoo.build {args.cmd}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
