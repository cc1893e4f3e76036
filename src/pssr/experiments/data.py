"""The ``[data]`` table of a run's config file and the dataset it names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pssr.data import Dataset


@dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table: which dataset to load and how (see :func:`pssr.data.load`)."""

    name: str = "digits"
    data_dir: str | None = None  # folder or archive; None = the dataset's default places
    val_fraction: float | None = None  # share of train held out for validation; None = dataset default
    seed: int = 0  # seed of the train/val split (not of training)

    def __post_init__(self) -> None:
        if self.val_fraction is not None and not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")


def load_data(cfg: DataConfig) -> Dataset:
    """Load the dataset a :class:`DataConfig` names."""
    from pssr import data as pdata

    kw: dict[str, Any] = {"seed": cfg.seed}
    if cfg.data_dir is not None:
        kw["data_dir"] = cfg.data_dir
    if cfg.val_fraction is not None:
        kw["val_fraction"] = cfg.val_fraction
    return pdata.load(cfg.name, **kw)


__all__ = ["DataConfig", "load_data"]
