"""Device choice, seeding, optional bf16 autocast, and the eval-mode context."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given ("auto" or None picks CUDA when available, else CPU)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded the same way."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def autocast_context(device: torch.device, enabled: bool) -> Iterator[None]:
    """bf16 autocast on the given device type when ``enabled``; a no-op otherwise."""
    if not enabled:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (else buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module | None, requires_grad: bool | None = None) -> Iterator[None]:
    """``modules`` (None entries skipped) in eval mode; afterwards each submodule gets its own mode back.

    Each submodule's mode is restored, not just the top module's: a caller may keep, e.g., BatchNorm
    frozen inside a model in train mode. ``requires_grad``: when a bool, every parameter's
    ``requires_grad`` is set to it (False freezes the weights during an attack or a scorer target;
    True makes a frozen classifier trainable with fixed BatchNorm statistics) and restored afterwards;
    None leaves the parameters alone. Shared parameters are seen once.
    """
    mods = [m for m in modules if m is not None]
    modes = [(m, m.training) for mod in mods for m in mod.modules()]
    params = (
        list({id(p): p for mod in mods for p in mod.parameters()}.values())
        if requires_grad is not None
        else []
    )
    req = [p.requires_grad for p in params]
    try:
        for mod in mods:
            mod.eval()
        for p in params:
            p.requires_grad_(bool(requires_grad))
        yield
    finally:
        for m, t in modes:
            m.training = t
        for p, r in zip(params, req):
            p.requires_grad_(r)
