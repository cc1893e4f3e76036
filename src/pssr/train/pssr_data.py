"""What PSSR training, calibration and the denoiser share: their seeded train / validation examples,
a digest of a classifier's weights, and accuracy on tensors."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

from pssr.defense.pssr import eval_mode


def classifier_digest(model: nn.Module | dict[str, Tensor]) -> str:
    """Digest of a classifier's weights (a module or its state dict)."""
    h = hashlib.sha256()
    for k, v in (model if isinstance(model, dict) else model.state_dict()).items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def split_examples(data: Any, cfg: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_val, y_val): a seeded train subset; val from ``data.val`` or held out of train.

    ``cfg``: a :class:`pssr.defense.PSSRConfig` or :class:`pssr.train.denoise.DenoiseConfig` (its
    ``seed``, ``val_size`` and ``train_subset``)."""
    train = data.train
    x, y = train.x, train.y
    g = torch.Generator().manual_seed(cfg.seed)
    val = getattr(data, "val", None)
    if val is not None and len(val) > 0:
        vi = torch.randperm(len(val), generator=g)[: cfg.val_size]
        xv, yv = val.x[vi], val.y[vi]
        perm = torch.randperm(len(x), generator=g)
    else:
        perm = torch.randperm(len(x), generator=g)
        hold = min(cfg.val_size, len(x) // 5)
        xv, yv = x[perm[:hold]], y[perm[:hold]]
        perm = perm[hold:]
    if cfg.train_subset:
        perm = perm[: cfg.train_subset]
    perm = perm.sort().values
    return x[perm], y[perm], xv, yv


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on (x, y) in eval mode (each submodule's mode restored), batch by batch."""
    dev = next(model.parameters()).device
    correct = 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            correct += int(
                (model(x[i : i + batch_size].to(dev)).argmax(1).cpu() == y[i : i + batch_size]).sum()
            )
    return correct / max(len(x), 1)


__all__ = ["accuracy", "classifier_digest", "split_examples"]
