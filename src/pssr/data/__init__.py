"""Datasets: ``pssr.data.load(name, ...)`` returns a :class:`Dataset` of float tensors in [0, 1], NCHW.

Registered: digits (embedded), mnist, fashion-mnist, cifar10, cifar100, image-folder, npz,
and the offline conveniences cifar10-jpeg and mnist-10k.
"""

from __future__ import annotations

from pssr.data.base import DataError, Dataset, Split
from pssr.data.sources import DATASETS, cache_dir, shared_data_dir


def load(name: str, **kwargs: object) -> Dataset:
    """Load dataset ``name`` (see :func:`list_datasets`); keyword arguments go to its builder."""
    return DATASETS.create(name, **kwargs)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "Split",
    "cache_dir",
    "list_datasets",
    "load",
    "shared_data_dir",
]
