"""Verified downloads: files are fetched to a temporary name, checked, then moved into place."""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from pssr.data.base import DataError

log = logging.getLogger(__name__)


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, checksum: str) -> None:
    """``checksum`` is "sha256:<hex>" or "md5:<hex>"; raise DataError on mismatch."""
    algo, _, expected = checksum.partition(":")
    got = file_digest(path, algo)
    if got != expected:
        raise DataError(
            f"{path}: {algo} checksum mismatch (expected {expected}, got {got}); the file is truncated or "
            "not the official release. Delete it and download again."
        )


def download(url: str, dest: Path, checksum: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is there already."""
    dest = Path(dest)
    if dest.is_file():
        verify(dest, checksum)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            for chunk in iter(lambda: r.read(1 << 20), b""):
                f.write(chunk)
    except OSError as e:
        if tmp.exists():
            tmp.unlink()
        raise DataError(
            f"could not download {url} ({e}); without network access place the file at {dest} by hand"
        ) from e
    try:
        verify(tmp, checksum)
    except DataError:
        tmp.unlink()
        raise
    os.replace(tmp, dest)
    return dest
