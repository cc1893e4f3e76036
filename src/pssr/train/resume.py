"""Resuming :func:`pssr.train.loop.fit` from its per-epoch checkpoint: the random generators' states,
and the check that a checkpoint was written by the same run (same settings, same data)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from pssr.config import asdict
from pssr.data import Dataset
from pssr.utils import load_checkpoint

if TYPE_CHECKING:
    from pssr.train.loop import TrainConfig

log = logging.getLogger("pssr.train.loop")  # the loop's messages, under the loop's logger

# Fields that may differ between a checkpoint and the call resuming it (they do not change the result).
RUNTIME_FIELDS = frozenset({"device", "eval_batch_size"})


def rng_state(gens: dict[str, torch.Generator]) -> dict[str, Tensor | list[Tensor]]:
    state: dict[str, Any] = {f"gen_{k}": g.get_state() for k, g in gens.items()}
    state["torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict[str, Any], gens: dict[str, torch.Generator]) -> None:
    # RNG states are CPU byte tensors; a checkpoint loaded with map_location=<cuda device> holds
    # them on the GPU, which set_state refuses, hence .cpu() (a no-op on CPU).
    for k, g in gens.items():
        g.set_state(state[f"gen_{k}"].cpu())
    torch.set_rng_state(state["torch_cpu"].cpu())
    if torch.cuda.is_available() and "torch_cuda" in state:
        torch.cuda.set_rng_state_all([t.cpu() for t in state["torch_cuda"]])


def _set_rank_aug_state(rng: dict[str, Any], gen: torch.Generator, dist: Any, seed: int, epoch: int) -> None:
    """On resume under torchrun: this rank's own augmentation stream, as saved by the same number of
    ranks (so the resumed run equals an uninterrupted one); else, on ranks > 0, a fresh stream derived
    from the seed, rank and epoch (rank 0 continues the saved "gen_aug")."""
    by_rank = rng.get("gen_aug_by_rank")
    if by_rank is not None and len(by_rank) == dist.world_size:
        gen.set_state(by_rank[dist.rank].cpu())
    elif dist.rank > 0:
        gen.manual_seed(seed + 1 + 1000 * dist.rank + 1_000_003 * epoch)
        if dist.rank == 1:
            log.warning(
                "the checkpoint was written by %s process(es), this run has %d: ranks > 0 start new "
                "augmentation streams (the run is valid but not bit-identical to an uninterrupted one)",
                len(by_rank) if by_rank is not None else 1,
                dist.world_size,
            )


def config_diff(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Settings that differ between a checkpoint's config and ``cfg``; a key the checkpoint lacks
    (written by an older pssr) counts as equal when ``cfg`` holds that field's default."""
    now = asdict(cfg)
    defaults = asdict(type(cfg)())
    keys = (set(saved) | set(now)) - RUNTIME_FIELDS
    return sorted(k for k in keys if saved.get(k, defaults.get(k)) != now.get(k))


def resume_from(
    ckpt_path: Path,
    cfg: TrainConfig,
    kind: str,
    data: Dataset,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    gens: dict[str, torch.Generator],
    dist: Any,
    device: torch.device,
) -> tuple[int, int, list[dict[str, Any]], dict[str, Any]]:
    """Load a per-epoch checkpoint of the same run into ``model``, ``opt`` and the generators (a
    different run's is refused in one line); (epochs done, steps done, history, metrics)."""
    ck = load_checkpoint(ckpt_path, map_location=device)
    diff = config_diff(ck.get("config", {}), cfg)
    if ck.get("kind") != kind or diff:
        raise ValueError(
            f"checkpoint {ckpt_path} was written by a different run (kind {ck.get('kind')!r} vs {kind!r}, "
            f"differing settings: {', '.join(diff) or 'none'}); pass resume=False (--no-resume) to start "
            "over or choose another output path"
        )
    saved_data = ck.get("data", {})
    if saved_data.get("name") != data.name or saved_data.get("n_train") != len(data.train):
        raise ValueError(
            f"checkpoint {ckpt_path} was trained on {saved_data.get('name')!r} ({saved_data.get('n_train')} "
            f"training images), not on {data.name!r} ({len(data.train)}); pass resume=False to start over"
        )
    model.load_state_dict(ck["state_dict"])
    opt.load_state_dict(ck["optimizer"])
    _set_rng_state(ck["rng"], gens)
    start_epoch, step = int(ck["epoch"]), int(ck["scheduler"]["step"])
    if dist.enabled:
        _set_rank_aug_state(ck["rng"], gens["aug"], dist, cfg.seed, start_epoch)
    log.info("resuming %s from %s after epoch %d/%d", kind, ckpt_path, start_epoch, cfg.epochs)
    return start_epoch, step, list(ck.get("history", [])), dict(ck.get("metrics", {}))


__all__ = ["RUNTIME_FIELDS", "config_diff", "resume_from", "rng_state"]
