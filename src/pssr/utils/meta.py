"""Metadata stored beside every result and inside every checkpoint: versions, hardware, git revision."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def git_revision(cwd: str | os.PathLike[str] | None = None) -> str | None:
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    rev = out.stdout.strip()
    if out.returncode != 0 or not rev:
        return None
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return rev + ("-dirty" if dirty else "")


_START: dict[str, str | None] = {}


def note_start_revision() -> None:
    """Remember the git revision the process started from (the CLI calls this first), so that the
    metadata of a result written hours later names the code that ran, not a later checkout."""
    if "git_revision" not in _START:
        _START["git_revision"] = git_revision()


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def run_metadata() -> dict[str, Any]:
    from pssr._version import __version__

    return {
        "pssr_version": __version__,
        "torch_version": str(torch.__version__),
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "hardware": hardware(),
        "git_revision": git_revision(),
        **({"git_revision_at_start": _START["git_revision"]} if "git_revision" in _START else {}),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command_line(),
    }


def command_line(argv: list[str] | None = None) -> str:
    """This process's command as a user would type it: ``pssr ...`` for the CLI (whether started as the
    console script, a venv path to it, or ``python -m pssr``), with its ``torchrun`` launcher under torchrun."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (Path(argv[0]).name == "pssr" or Path(argv[0]).parts[-2:] == ("pssr", "__main__.py")):
        argv[0] = "pssr"
    cmd = shlex.join(argv)
    local, world = os.environ.get("LOCAL_WORLD_SIZE"), os.environ.get("WORLD_SIZE")
    if os.environ.get("TORCHELASTIC_RUN_ID") and local and world and argv and argv[0] == "pssr":
        nodes = int(world) // max(1, int(local))
        cmd = (
            f"torchrun --nproc_per_node={local}" + (f" --nnodes={nodes}" if nodes > 1 else "") + " -m " + cmd
        )
    return cmd
