"""Datasets: ``pssr.data.load(name, ...)`` returns a :class:`Dataset` of float tensors in [0, 1], NCHW.

Registered: digits (embedded), mnist, fashion-mnist, cifar10, cifar100, image-folder, npz,
and the offline conveniences cifar10-jpeg and mnist-10k.
"""

from __future__ import annotations

import inspect

from pssr.data.base import DataError, Dataset, Split
from pssr.data.sources import DATASETS, cache_dir, shared_data_dir

# Arguments every caller may pass to any dataset (the [data] table, --data-dir): a builder that has no
# use for one (the embedded digits have no files) ignores it.
COMMON_ARGS = frozenset({"data_dir", "download", "seed", "val_fraction"})


class DataArgumentError(DataError, TypeError):
    """An argument the dataset does not take (a ValueError for the CLI, a TypeError for Python)."""


def load(name: str, **kwargs: object) -> Dataset:
    """Load dataset ``name`` (see :func:`list_datasets`); keyword arguments go to its builder.

    A keyword the builder does not take (other than :data:`COMMON_ARGS`) is a ValueError naming the
    closest one it does take, so that a typo never loads the dataset with its defaults."""
    from pssr.config import did_you_mean

    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}{did_you_mean(str(name).strip().lower(), DATASETS.list())}; "
            f"available: {', '.join(DATASETS.list())}"
        )
    builder = DATASETS.get(name)
    allowed = set(COMMON_ARGS) | _named_parameters(builder)
    for key in kwargs:
        if key not in allowed:
            # a size asked of the loader: splits are cut after loading
            size = "; take fewer images with data.train.subset(n)" if key.startswith(("n_", "num_")) else ""
            raise DataArgumentError(
                f"pssr.data.load({name!r}): unexpected keyword argument {key!r}{did_you_mean(key, allowed)}; "
                f"{name} takes {', '.join(sorted(allowed))}{size}"
            )
    return builder(**kwargs)


def _named_parameters(fn: object) -> set[str]:
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in sig.parameters.values() if p.kind in kinds}


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


__all__ = [
    "DATASETS",
    "COMMON_ARGS",
    "DataArgumentError",
    "DataError",
    "Dataset",
    "Split",
    "cache_dir",
    "list_datasets",
    "load",
    "shared_data_dir",
]
