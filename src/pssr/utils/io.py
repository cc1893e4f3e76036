"""Atomic file writes and safe checkpoints.

Every file pssr writes goes to a temporary file in the same folder first and is then moved
over the target with ``os.replace`` (atomic on POSIX), so an interrupted run never leaves a
half-written report or checkpoint behind. Checkpoints hold plain tensors and Python types only
and are always read back with ``torch.load(weights_only=True)``: loading a model file never runs
code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, not while threads write files
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode an ordinary open() would (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(
        path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n"
    )


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


def save_checkpoint(path: str | os.PathLike[str], obj: dict[str, Any]) -> Path:
    """Write ``obj`` (tensors, numbers, strings, lists, dicts) atomically with ``torch.save``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a one-line error for a missing, truncated or
    foreign file that says what the file is and what to do (never torch's advice to unpickle it)."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pt"))[:4]
        raise ValueError(
            f"{path} is a folder, not a checkpoint file; pass the .pt file"
            + (f" (it holds {', '.join(inside)})" if inside else "")
        )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files before refusing them
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise ValueError(_unreadable(path, e)) from e
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict written by pssr")
    return obj


def _unreadable(path: Path, e: Exception) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in one line, with what to do."""
    text = str(e)
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if code:  # a pickle that refers to Python classes or functions
        return (
            f"{path} is not a pssr checkpoint: it is a pickle that refers to Python code ({code.group(1)}), from "
            "another program or an untrusted source. pssr reads checkpoints as tensors and plain types only and "
            "never unpickles code; load that model with the code that saved it and pass the nn.Module to pssr, "
            "or re-create the checkpoint with pssr"
        )
    if isinstance(e, EOFError) or path.stat().st_size == 0:
        return f"{path} is empty; re-create it (an interrupted copy?)"
    if "zip archive" in text or "central directory" in text:
        return (
            f"{path} is truncated or corrupt (not a complete torch.save archive); copy or re-create it again"
        )
    if "Weights only load failed" in text or isinstance(e, pickle.UnpicklingError):
        return (
            f"{path} is not a pssr checkpoint (neither a torch.save archive of tensors and plain types nor a "
            "readable pickle of them); pass a file written by pssr (PSSR.save, pssr train-*)"
        )
    first = text.splitlines()[0] if text else ""
    return f"could not read checkpoint {path} ({type(e).__name__}: {first}); re-create it with pssr"
