"""Checkpoint selection on a robust validation split held out of the training images (issue 18).

Used by :func:`pssr.train.adversarial.adversarial_train_run` when ``val_size > 0``:

- ``val_size`` training images, drawn at random with the config's seed (:func:`holdout`), are taken
  out of the training split; training runs on the rest (the checkpoint's ``data.n_train`` counts it).
  The test split is never touched before the end.
- After every epoch a :class:`Selector` (a :data:`pssr.train.loop.EpochCallback`) adds the clean and
  PGD robust accuracy on the held-out images to that epoch's history record (``val_clean_acc``,
  ``val_robust_acc``, ``val_seconds``) and, when the robust accuracy beats every earlier epoch's,
  keeps that epoch's weights (in memory, and in ``<stem>-best.pt`` beside the checkpoint). The
  selection rule: the highest validation robust accuracy; ties go to the **earliest** such epoch.
- The per-epoch checkpoint that resume reads is ``<stem>-last.pt``: it always holds the last
  finished epoch. The main checkpoint ``<stem>.pt`` is written at the end and holds the selected
  epoch's weights, with the test metrics computed on them and the selection recorded in its metrics.

Resume: the loop saves a checkpoint before it calls the epoch callbacks, so a run interrupted in
between resumes from a checkpoint whose last history record has no validation entry yet;
:func:`_complete_last_record` evaluates that epoch's saved weights before training goes on (the
validation PGD is seeded, so the numbers are those an uninterrupted run records). The best epoch
so far is recomputed from the history; its weights come from ``<stem>-best.pt``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pssr import distributed as D
from pssr.data import Dataset, Split
from pssr.train.loop import (
    BatchLoss,
    EpochCallback,
    FitResult,
    TrainConfig,
    evaluate_accuracy,
    fit,
)
from pssr.train.resume import config_diff
from pssr.utils import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

VAL_KEY = "val_robust_acc"  # the history entry the selection maximizes
# Parts of a per-epoch checkpoint that only resume needs: left out of the selected checkpoints.
RESUME_ONLY = ("optimizer", "rng")

ValEval = Callable[[nn.Module], dict[str, float]]


def holdout(data: Dataset, val_size: int, seed: int) -> tuple[Dataset, Split]:
    """(``data`` with ``val_size`` random training images removed, those images as a split); the draw
    is ``torch.randperm`` with a generator seeded by ``seed``, both parts keep the original order."""
    n = len(data.train)
    if not 0 < val_size < n:
        raise ValueError(
            f"val_size must be in [1, {n - 1}] for the {n} training images of {data.name!r}, got "
            f"{val_size}; lower adv_train.val_size (0 = no validation split)"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size].sort().values, perm[val_size:].sort().values
    x, y = data.train.x, data.train.y
    train = Split(x[train_idx], y[train_idx], data.train.dataset)
    return dataclasses.replace(data, train=train), Split(x[val_idx], y[val_idx], data.train.dataset)


def selection_paths(checkpoint: str | Path) -> tuple[Path, Path]:
    """(``<stem>-last.pt``: the per-epoch checkpoint resume reads, ``<stem>-best.pt``: the best epoch so far)."""
    p = Path(checkpoint)
    return p.with_name(f"{p.stem}-last{p.suffix}"), p.with_name(f"{p.stem}-best{p.suffix}")


def best_record(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The history record with the highest ``val_robust_acc``, the earliest on ties (None: no record has one)."""
    best = None
    for rec in history:
        if VAL_KEY in rec and (best is None or rec[VAL_KEY] > best[VAL_KEY]):
            best = rec
    return best


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


class Selector:
    """The epoch callback: validation accuracy into the record, the best epoch's weights kept."""

    def __init__(
        self, model: nn.Module, evaluate: ValEval, meta: dict[str, Any], paths: tuple[Path, Path] | None
    ):
        self.model, self.evaluate, self.meta, self.paths = model, evaluate, meta, paths
        self.best: dict[str, Any] | None = None  # the best record so far
        self.state: dict[str, torch.Tensor] | None = None  # its weights, when trained in this call

    def start(self, history: Sequence[dict[str, Any]]) -> None:
        """The best so far from a resumed run's history (its weights stay in ``<stem>-best.pt``)."""
        self.best, self.state = best_record(history), None

    def __call__(self, rec: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        rec.update(self.evaluate(self.model))
        rec["val_seconds"] = time.perf_counter() - t0
        log.info(
            "epoch %d: val_clean_acc=%.4f, val_robust_acc=%.4f",
            rec["epoch"],
            rec["val_clean_acc"],
            rec[VAL_KEY],
        )
        if self.best is None or rec[VAL_KEY] > self.best[VAL_KEY]:
            self.best, self.state = rec, _cpu_state(self.model)
            if self.paths is not None:
                self._save_best(rec, None)

    def _save_best(self, rec: dict[str, Any], ck: dict[str, Any] | None) -> None:
        """``<stem>-best.pt``: the per-epoch checkpoint of ``rec``'s epoch (``ck``, else the file just
        saved by the loop) without its resume state, the selection in its metrics."""
        assert self.paths is not None
        last, best = self.paths
        info = D.current()
        if info.is_main:
            ck = dict(ck if ck is not None else load_checkpoint(last))
            if int(ck["epoch"]) != rec["epoch"]:
                raise ValueError(
                    f"{last} holds epoch {ck['epoch']}, not {rec['epoch']}; rerun with --no-resume"
                )
            for k in RESUME_ONLY:
                ck.pop(k, None)
            ck["history"] = [*ck["history"][:-1], dict(rec)]
            ck["metrics"] = {**self.meta, "selected_epoch": rec["epoch"], **_val_of(rec)}
            save_checkpoint(best, ck)
        D.barrier(info)

    def weights(self, epoch: int) -> dict[str, torch.Tensor]:
        """The weights of ``epoch``, the selected one: from memory, else from ``<stem>-best.pt``."""
        if self.state is not None and self.best is not None and self.best["epoch"] == epoch:
            return self.state
        if self.paths is None or not self.paths[1].is_file():
            raise ValueError(f"the weights of the selected epoch {epoch} are gone; rerun with --no-resume")
        ck = load_checkpoint(self.paths[1])
        if int(ck["epoch"]) != epoch:
            raise ValueError(
                f"{self.paths[1]} holds epoch {ck['epoch']}, not the selected {epoch}; rerun with --no-resume"
            )
        return ck["state_dict"]


def _val_of(rec: dict[str, Any]) -> dict[str, float]:
    return {"val_clean_acc": rec["val_clean_acc"], "val_robust_acc": rec[VAL_KEY]}


def _complete_last_record(
    sel: Selector, cfg: TrainConfig, kind: str, data: Dataset, resume: bool
) -> list[dict[str, Any]]:
    """Before resuming: the history of ``<stem>-last.pt`` with its last record's validation entry
    filled in (and the file rewritten) when the run stopped between the checkpoint and the callback.
    A checkpoint of another run is left for :func:`pssr.train.loop.fit` to refuse."""
    if sel.paths is None or not resume or not sel.paths[0].is_file():
        return []
    ck = load_checkpoint(sel.paths[0])
    same = ck.get("kind") == kind and not config_diff(ck.get("config", {}), cfg)
    if not same or ck.get("data", {}).get("n_train") != len(data.train):
        return []
    history = list(ck.get("history", []))
    if history and VAL_KEY not in history[-1]:
        model = copy.deepcopy(sel.model)
        model.load_state_dict(ck["state_dict"])
        sel.start(history[:-1])
        probe = Selector(model, sel.evaluate, sel.meta, None)
        probe.best = sel.best
        rec = history[-1] = dict(history[-1])
        probe(rec)
        if probe.best is rec:
            sel._save_best(rec, ck)
        ck["history"] = history
        info = D.current()
        if info.is_main:
            save_checkpoint(sel.paths[0], ck)
        D.barrier(info)
    return history


def fit_with_selection(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    batch_loss: BatchLoss,
    *,
    val_size: int,
    evaluate_val: Callable[[nn.Module, Split], dict[str, float]],
    final_metrics: Callable[[nn.Module], dict[str, float]],
    meta: dict[str, Any],
    model_name: str | None,
    model_kwargs: dict[str, Any],
    kind: str,
    checkpoint: str | Path | None,
    resume: bool,
    progress: bool,
    callbacks: Sequence[EpochCallback],
) -> FitResult:
    """:func:`pssr.train.loop.fit` on ``data`` less ``val_size`` held-out training images, the epoch
    with the best ``evaluate_val`` robust accuracy on them selected (see the module docstring).

    ``evaluate_val(model, split)`` returns ``{"val_clean_acc", "val_robust_acc"}``; ``meta`` goes into
    the selected checkpoints' metrics (``val_size``, ``passes_per_example`` ...). Returns the selected
    model (eval mode) and the main checkpoint (its metrics: test accuracy and ``final_metrics`` of
    the selected weights, the selection, ``train_seconds``); the history holds every epoch's entries.
    """
    train_data, val = holdout(data, val_size, cfg.seed)
    paths = selection_paths(checkpoint) if checkpoint is not None else None
    sel = Selector(model, lambda m: evaluate_val(m, val), meta, paths)
    sel.start(_complete_last_record(sel, cfg, kind, train_data, resume))
    res = fit(
        model,
        train_data,
        cfg,
        batch_loss,
        model_name=model_name,
        model_kwargs=model_kwargs,
        kind=kind,
        checkpoint=paths[0] if paths is not None else None,
        resume=resume,
        progress=progress,
        callbacks=[sel, *callbacks],
        final_metrics=None,  # the test metrics are those of the selected epoch, below
    )
    info = D.current()
    if paths is not None and info.is_main:  # the last epoch's validation entry, saved with it
        save_checkpoint(paths[0], res.checkpoint)
    best = best_record(res.history)
    if best is None:
        raise ValueError(f"no epoch of {paths and paths[0]} has a validation entry; rerun with --no-resume")
    res.model.load_state_dict(sel.weights(best["epoch"]))
    res.model.eval()
    metrics: dict[str, Any] = {
        "test_acc": evaluate_accuracy(res.model, data.test, cfg.eval_batch_size),
        "n_test": len(data.test),
        **final_metrics(res.model),
        **meta,
        "selected_epoch": best["epoch"],
        **_val_of(best),
        "train_seconds": sum(h["train_seconds"] for h in res.history),
        "val_seconds": sum(h.get("val_seconds", 0.0) for h in res.history),
    }
    log.info("selected epoch %d of %d: %s", best["epoch"], len(res.history), metrics)
    ck = {k: v for k, v in res.checkpoint.items() if k not in RESUME_ONLY}
    ck["state_dict"] = {k: v.detach().contiguous() for k, v in res.model.state_dict().items()}
    ck["metrics"] = metrics
    if checkpoint is not None and info.is_main:
        save_checkpoint(checkpoint, ck)
    D.barrier(info)
    return FitResult(res.model, res.history, ck)


__all__ = ["Selector", "best_record", "fit_with_selection", "holdout", "selection_paths"]
