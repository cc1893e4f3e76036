"""The model zoo's store: cards, verified files, fp32 materialization, loading.

A *card* (one entry of ``cards.json``) describes one pretrained model: its ``name``
(``"<dataset>/<kind>"``), ``kind`` (``classifier``, ``pgd-at`` or ``pssr``), ``dataset``, ``file``
(under ``weights/`` when shipped in the package), an optional ``url``, the file's ``sha256`` and
``size_bytes``, the commands that made it and the accuracies measured on it. Files hold the
checkpoints pssr's trainers write, stripped of optimizer and RNG state, with floating-point tensors
in half precision; they are read with ``torch.load(weights_only=True)``, checked against the card's
sha256 first, and converted back to fp32 before a model is built.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import shutil
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pssr.registry import Registry
from pssr.utils import atomic_write_bytes, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
CARDS_FILE = PACKAGE_DIR / "cards.json"
WEIGHTS_DIR = PACKAGE_DIR / "weights"
CARDS_SCHEMA = "pssr.zoo.cards"
CARDS_SCHEMA_VERSION = 1
MIRROR_ENV = "PSSR_ZOO_MIRROR"  # a folder or base URL holding the zoo files under their card names
REQUIRED_KEYS = ("name", "kind", "dataset", "file", "sha256", "size_bytes")


class ZooError(ValueError):
    """A zoo name, card or file problem; the CLI prints it as one line (a ValueError subclass)."""


# kind -> builder(checkpoint dict in fp32) -> nn.Module
KINDS: Registry[nn.Module] = Registry("zoo model kind")


@KINDS.register("classifier")
def _classifier(ck: dict[str, Any]) -> nn.Module:
    from pssr.models.specs import rebuild_model

    return rebuild_model(ck)


# An adversarially trained model is a classifier checkpoint of the same format (kind "pgd-at" or
# "trades": pssr train-adversarial writes its method as the checkpoint's kind).
KINDS.register("pgd-at")(_classifier)
KINDS.register("trades")(_classifier)


@KINDS.register("pssr")
def _pssr(ck: dict[str, Any]) -> nn.Module:
    from pssr.defense.pssr import PSSR

    return PSSR.from_state(ck)


# ---------------------------------------------------------------------------------------------
# cards
# ---------------------------------------------------------------------------------------------


def read_cards(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The cards of ``path`` (default: the package's ``cards.json``), validated."""
    path = Path(path) if path is not None else CARDS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ZooError(f"cannot read the zoo's cards {path}: {e}; reinstall pssr") from e
    if not isinstance(doc, dict) or doc.get("schema") != CARDS_SCHEMA:
        raise ZooError(f"{path} is not a pssr zoo card file (schema {CARDS_SCHEMA!r} expected)")
    cards = doc.get("models", [])
    for c in cards:
        missing = [k for k in REQUIRED_KEYS if k not in c]
        if missing:
            raise ZooError(f"{path}: card {c.get('name', '?')!r} lacks {', '.join(missing)}")
        if c["kind"] not in KINDS:
            raise ZooError(f"{path}: card {c['name']!r} has unknown kind {c['kind']!r}")
    names = [c["name"] for c in cards]
    if len(set(names)) != len(names):
        raise ZooError(f"{path}: duplicate model names")
    return cards


@lru_cache(maxsize=4)
def _cards_cached(path: str, mtime_ns: int) -> tuple[dict[str, Any], ...]:
    return tuple(read_cards(path))


def cards() -> list[dict[str, Any]]:
    """Copies of every card, in file order."""
    st = CARDS_FILE.stat() if CARDS_FILE.exists() else None
    if st is None:
        raise ZooError(f"the zoo's card file {CARDS_FILE} is missing; reinstall pssr")
    return [json.loads(json.dumps(c)) for c in _cards_cached(str(CARDS_FILE), st.st_mtime_ns)]


def list_models(pattern: str = "*") -> list[str]:
    """Names of the zoo's models matching a glob ``pattern`` (e.g. ``"fashion-mnist/*"``)."""
    import fnmatch

    return sorted(c["name"] for c in cards() if fnmatch.fnmatch(c["name"], pattern))


def card(name: str) -> dict[str, Any]:
    """The card of ``name``; an unknown name is a :class:`ZooError` naming the closest valid names."""
    all_cards = cards()
    key = name.strip().lower() if isinstance(name, str) else name
    for c in all_cards:
        if c["name"] == key:
            return c
    names = [c["name"] for c in all_cards]
    close = difflib.get_close_matches(str(key), names, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}?" if close else f"available: {', '.join(names) or 'none'}"
    raise ZooError(f"unknown zoo model {name!r}; {hint} (`pssr zoo list` shows them all)")


def is_model_name(spec: str) -> bool:
    """Whether ``spec`` names a zoo model (exactly, case-insensitively)."""
    return isinstance(spec, str) and spec.strip().lower() in set(list_models())


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def zoo_cache_dir() -> Path:
    """Downloaded and fp32 files: ``$PSSR_CACHE/zoo`` (default ``~/.cache/pssr/zoo``)."""
    from pssr.data.sources import cache_dir

    return cache_dir() / "zoo"


def _check(path: Path, c: dict[str, Any], fix: str) -> Path:
    got = sha256_of(path)
    if got != c["sha256"]:
        raise ZooError(
            f"{c['name']}: {path} fails its sha256 check (expected {c['sha256'][:16]}..., got {got[:16]}...): "
            f"the file is damaged or was changed; {fix}"
        )
    return path


def _source_of(c: dict[str, Any]) -> str | None:
    """Where to fetch a file that is not in the package: ``$PSSR_ZOO_MIRROR/<file>``, else the card's url."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        return mirror.rstrip("/") + "/" + c["file"]
    return c.get("url") or None


def _download(src: str, dest: Path, c: dict[str, Any], timeout: float = 60.0) -> Path:
    """Copy ``src`` (a URL or a local path) to ``dest`` through a temporary file, verified first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    log.info("zoo: fetching %s -> %s", src, dest)
    try:
        if "://" in src:
            with urllib.request.urlopen(src, timeout=timeout) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        else:
            shutil.copyfile(src, tmp)
        _check(tmp, c, f"the source {src} does not hold the file this pssr expects")
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ZooError(
            f"{c['name']}: could not fetch {src} ({type(e).__name__}: {e}); without network access copy "
            f"the file to {dest} by hand or set {MIRROR_ENV} to a folder that holds {c['file']}"
        ) from e
    except ZooError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return dest


def path(name: str, download: bool = True) -> Path:
    """The verified local file of zoo model ``name`` (half precision, as stored).

    A file shipped in the package is checked against the card's sha256; a file that is not shipped
    is taken from ``$PSSR_CACHE/zoo`` or, with ``download=True``, fetched there from
    ``$PSSR_ZOO_MIRROR/<file>`` or the card's ``url`` and verified before it is kept.
    """
    c = card(name)
    shipped = WEIGHTS_DIR / c["file"]
    if shipped.is_file():
        return _check(shipped, c, "reinstall pssr (or `git checkout` the file in a clone)")
    cached = zoo_cache_dir() / c["file"]
    if cached.is_file():
        return _check(cached, c, f"delete {cached} and run again to download it anew")
    src = _source_of(c)
    if src is None:
        raise ZooError(
            f"{c['name']}: {shipped} is missing from this installation and the card names no url; reinstall pssr"
        )
    if not download:
        raise ZooError(f"{c['name']}: not downloaded yet; fetch it with pssr.zoo.path({c['name']!r})")
    return _download(src, cached, c)


def _to_dtype(obj: Any, src: torch.dtype, dst: torch.dtype) -> Any:
    """``obj`` with every tensor of dtype ``src`` cast to ``dst`` (nested dicts, lists, tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dst) if obj.dtype == src else obj
    if isinstance(obj, dict):
        return {k: _to_dtype(v, src, dst) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_dtype(v, src, dst) for v in obj)
    return obj


def to_fp32(ck: dict[str, Any]) -> dict[str, Any]:
    """A zoo checkpoint with its half-precision tensors converted back to fp32."""
    return _to_dtype(ck, torch.float16, torch.float32)


def read(name: str) -> dict[str, Any]:
    """The checkpoint dict of zoo model ``name``: verified, read with weights_only=True, in fp32."""
    return to_fp32(load_checkpoint(path(name)))


def load(name: str, device: str | torch.device | None = None) -> nn.Module:
    """The model of zoo card ``name`` (a classifier or a :class:`pssr.PSSR` defense), in eval mode.

    Example: ``defense = pssr.zoo.load("fashion-mnist/pssr"); x_pure = defense.purify(x)``.
    """
    c = card(name)
    model = KINDS.create(c["kind"], ck=read(c["name"]))
    model.eval()
    return model.to(device) if device is not None else model


def resolve(spec: str) -> str:
    """A local checkpoint path for ``spec``: a zoo name becomes an fp32 checkpoint in the cache folder
    (written once, atomically, beside a digest of its source), any other string is returned as given.

    This lets every command that takes a checkpoint path take a zoo name too::

        PSSR.load(pssr.zoo.resolve("fashion-mnist/pssr"))
    """
    if not isinstance(spec, str) or not is_model_name(spec):
        if isinstance(spec, str) and _looks_like_name(spec):
            card(spec)  # raises the unknown-name error with the closest names
        return spec
    c = card(spec)
    src = path(c["name"])
    out = zoo_cache_dir() / "fp32" / f"{Path(c['file']).stem}-{c['sha256'][:12]}.pt"
    stamp = out.with_name(out.name + ".sha256")
    if out.is_file() and stamp.is_file() and stamp.read_text().strip() == sha256_of(out):
        return str(out)
    save_checkpoint(out, to_fp32(load_checkpoint(src)))
    atomic_write_bytes(stamp, (sha256_of(out) + "\n").encode())
    return str(out)


def _looks_like_name(spec: str) -> bool:
    """``dataset/kind`` with no file behind it: meant as a zoo name, not a path."""
    s = spec.strip()
    return s.count("/") == 1 and not Path(s).suffix and not Path(s).exists() and not s.startswith(("/", "."))


def summary_rows() -> list[dict[str, Any]]:
    """One row per card for tables: name, kind, size, clean / paper / adaptive accuracies."""
    rows = []
    for c in sorted(cards(), key=lambda c: c["name"]):
        acc = c.get("accuracy") or {}
        rows.append(
            {
                "name": c["name"],
                "kind": c["kind"],
                "size_bytes": c["size_bytes"],
                "shipped": (WEIGHTS_DIR / c["file"]).is_file(),
                "n": acc.get("n"),
                "eps": acc.get("eps"),
                "clean": acc.get("clean"),
                "paper": acc.get("paper_pgd"),
                "adaptive": acc.get("adaptive_pgd_full"),
                "steps": "/".join(str(a.get("steps", "?")) for a in acc.get("attacks", [])) or None,
            }
        )
    return rows
