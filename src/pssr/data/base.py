"""Dataset containers: whole splits held as tensors (airbench-style), images in [0, 1], NCHW."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


class DataError(ValueError):
    """A dataset file is missing, truncated or corrupt; the message names the file and the fix."""


@dataclass(frozen=True)
class Split:
    """One split: ``x`` float32 (N, C, H, W) in [0, 1], ``y`` int64 (N,).

    ``dataset`` is the name of the dataset it came from (set by :class:`Dataset`), so that a split
    alone tells training, calibration and evaluation its budget (:mod:`pssr.defaults`)."""

    x: Tensor
    y: Tensor
    dataset: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.dataset is not None and not isinstance(self.dataset, str):
            raise ValueError(f"Split.dataset must be a dataset name or None, got {self.dataset!r}")
        if self.x.ndim != 4:
            raise ValueError(f"Split.x must be (N, C, H, W), got shape {tuple(self.x.shape)}")
        if self.y.ndim != 1 or self.y.shape[0] != self.x.shape[0]:
            raise ValueError(
                f"Split.y must be (N,) with N={self.x.shape[0]}, got shape {tuple(self.y.shape)}"
            )
        if self.x.dtype != torch.float32 or self.y.dtype != torch.int64:
            raise ValueError(
                f"Split needs float32 images and int64 labels, got {self.x.dtype} / {self.y.dtype}"
            )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, n: int | None, seed: int | None = None) -> Split:
        """The first ``n`` examples (or a seeded random ``n`` when ``seed`` is given)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise ValueError(f"subset size must be positive, got n={n}")
        if seed is None:
            idx = torch.arange(n)
        else:
            idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return Split(self.x[idx], self.y[idx], self.dataset)


@dataclass(frozen=True)
class Dataset:
    """A named dataset with train / validation / test splits and class names."""

    name: str
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    info: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every split carries the dataset's name (frozen dataclasses: set through object.__setattr__)
        for part in ("train", "val", "test"):
            split = getattr(self, part)
            if isinstance(split, Split) and split.dataset != self.name:
                object.__setattr__(self, part, dataclasses.replace(split, dataset=self.name))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.x.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, val={len(self.val)}, test={len(self.test)}, "
            f"shape=({c}, {h}, {w}), classes={self.num_classes})"
        )


def to_float_nchw(images: np.ndarray, layout: str) -> Tensor:
    """uint8 images in ``layout`` ("NHW", "NHWC" or "NCHW") -> float32 (N, C, H, W) in [0, 1]."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {arr.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if layout == "NHW":
        t = t.unsqueeze(1)
    elif layout == "NHWC":
        t = t.permute(0, 3, 1, 2)
    elif layout != "NCHW":
        raise ValueError(f"unknown layout {layout!r}")
    return t.contiguous().float().div_(255.0)


def split_train_val(x: Tensor, y: Tensor, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """Seeded, stratification-free split of a training set into train / validation.

    The training part keeps the source's order (training draws its own permutations, and PSSR's
    held-out images are chosen by position in it); the validation part comes in the seeded random
    order, so that its first ``n`` images are a random sample even when the source is sorted by class
    (see :func:`shuffled`)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = x.shape[0]
    n_val = int(round(val_fraction * n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, tr_idx = perm[:n_val], perm[n_val:].sort().values
    return Split(x[tr_idx], y[tr_idx]), Split(x[val_idx], y[val_idx])


def shuffled(split: Split, seed: int) -> Split:
    """``split`` in a seeded random order.

    Evaluations take the first ``n`` images of a split (``Split.subset``, ``evaluate(n=...)``,
    quick evaluations): on a source stored class by class (an image folder, an array file sorted by
    label) those would all be of the first class or two. Loaders give their evaluation splits in a
    random order for that reason."""
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed + 104729))
    return Split(split.x[perm], split.y[perm])


def three_way_split(
    x: Tensor, y: Tensor, test_fraction: float, val_fraction: float, seed: int
) -> tuple[Split, Split, Split]:
    """Seeded train / val / test split for sources that ship no split."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = x.shape[0]
    n_test = int(round(test_fraction * n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    te, rest = perm[:n_test], perm[n_test:].sort().values  # test in random order (see split_train_val)
    train, val = split_train_val(x[rest], y[rest], val_fraction / (1 - test_fraction), seed)
    return train, val, Split(x[te], y[te])
