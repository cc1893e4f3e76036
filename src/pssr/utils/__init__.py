"""Small shared helpers: atomic I/O, checkpoints, devices, seeds, the eval-mode context, run metadata."""

from pssr.utils.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from pssr.utils.meta import run_metadata
from pssr.utils.runtime import autocast_context, default_device, eval_mode, model_device, seed_everything

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "autocast_context",
    "default_device",
    "eval_mode",
    "load_checkpoint",
    "model_device",
    "run_metadata",
    "save_checkpoint",
    "seed_everything",
]
