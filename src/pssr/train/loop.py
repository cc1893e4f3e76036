"""The training loop shared by every trainer in :mod:`pssr.train`: epochs, checkpoints, resume.

The design follows airbench: the whole training split sits in memory (on the training device) as
one tensor, each epoch draws a permutation from a seeded ``torch.Generator``, and augmentation is a
batched tensor op (:mod:`pssr.train.augment`). The learning rate is a pure function of the global
step (:func:`lr_at`), so the "scheduler state" is one integer.

After every epoch the loop writes an atomic checkpoint holding the model, optimizer, step, the
states of every random generator it uses (as uint8 tensors), the resolved config (a plain dict), the
per-epoch history and :func:`pssr.utils.run_metadata`. Everything in it loads with
``torch.load(weights_only=True)``. Restarting the same call with ``resume=True`` continues after the
last finished epoch and, on the same device and thread count, gives bit-identical weights to a run
that was never interrupted (``tests/test_train.py`` checks this).

Trainers plug in through ``batch_loss(model, x, y, gen) -> (loss, logits)``: plain cross-entropy
for :mod:`pssr.train.classifier`, PGD-AT / TRADES for :mod:`pssr.train.adversarial`.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pssr.config import asdict
from pssr.data import Dataset, Split
from pssr.models.specs import model_spec
from pssr.train.augment import AUGMENTATIONS
from pssr.train.resume import resume_from, rng_state
from pssr.train.schedules import OPTIMIZERS, SCHEDULES, build_optimizer, lr_at
from pssr.utils import (
    autocast_context,
    default_device,
    model_device,
    run_metadata,
    save_checkpoint,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "pssr-train/1"
# seconds between heartbeat log lines when there is no progress bar ($PSSR_HEARTBEAT_S overrides)
LOG_EVERY_S = float(os.environ.get("PSSR_HEARTBEAT_S", "120"))

BatchLoss = Callable[[nn.Module, Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]
EpochCallback = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------
# Configs


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings common to every trainer (a TOML table such as ``[classifier]``)."""

    model: str = "small-cnn"  # name in pssr.models (ignored when an nn.Module is passed)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra create_model arguments
    epochs: int = 10
    batch_size: int = 128  # images per optimizer step
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adam"
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9  # SGD momentum / Adam beta1
    weight_decay: float = 5e-4  # L2 on every parameter (decoupled for Adam: AdamW)
    schedule: str = "onecycle"  # "onecycle" | "cosine" | "step" | "constant", stepped per iteration
    warmup: float = 0.2  # share of all steps spent warming up (onecycle, cosine)
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0 = off
    augment: str = "none"  # "none" | "crop-flip" | "crop" | "flip" (batched, see pssr.train.augment)
    crop_padding: int = 4  # pixels of zero padding for random crops
    seed: int = 0  # seeds init, shuffling, augmentation, dropout
    bf16: bool = False  # bf16 autocast for the training forward/backward (evaluation stays fp32)
    channels_last: bool = False  # NHWC memory layout (faster convolutions on CPU with AMX/AVX512 and GPUs)
    eval_batch_size: int = 1000  # images per evaluation batch
    device: str = "auto"  # "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("momentum", 0.0 <= self.momentum < 1.0, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup", 0.0 <= self.warmup < 1.0, "in [0, 1)"),
            ("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "in [0, 1)"),
            ("crop_padding", self.crop_padding >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {tuple(AUGMENTATIONS.list())}, got {self.augment!r}")


# ---------------------------------------------------------------------------------------------
# Evaluation
def to_device(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``. A CPU tensor bound for CUDA is copied through pinned (page-locked) memory
    with ``non_blocking=True``, so the host can queue the next work while the copy runs (PyTorch's
    pinned-memory allocator keeps the staging buffer alive until the copy is done). Anything else is a
    plain ``.to(device)``, so CPU runs are unaffected."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def iter_batches(split: Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for i in range(0, len(split), batch_size):
        yield split.x[i : i + batch_size], split.y[i : i + batch_size]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Top-1 accuracy (in [0, 1]) of ``model`` on ``split`` in fp32 eval mode; the mode is restored."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    was_training = model.training
    model.eval()
    dev = model_device(model)
    correct = 0
    try:
        for x, y in iter_batches(split, batch_size):
            correct += int((model(to_device(x, dev)).argmax(1) == to_device(y, dev)).sum())
    finally:
        model.train(was_training)
    return correct / len(split)


# ---------------------------------------------------------------------------------------------
# Checkpoints
def plain_metadata() -> dict[str, Any]:
    """:func:`run_metadata` reduced to JSON types (``torch.__version__`` is a str subclass that
    ``torch.load(weights_only=True)`` refuses)."""
    return json.loads(json.dumps(run_metadata(), default=str))


# ---------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    model: nn.Module
    history: list[dict[str, Any]]
    checkpoint: dict[str, Any]


def _progress_enabled(progress: bool) -> bool:
    return bool(progress) and sys.stderr.isatty()


def fit(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    batch_loss: BatchLoss,
    *,
    model_name: str | None,
    model_kwargs: dict[str, Any],
    kind: str,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    final_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
) -> FitResult:
    """Train ``model`` on ``data.train`` for ``cfg.epochs`` epochs with ``batch_loss``.

    ``kind`` names the trainer ("classifier", "pgd-at", ...) in the checkpoint. After the last epoch
    the test accuracy (fp32) and ``final_metrics(model)`` are added to ``checkpoint["metrics"]``.
    The model is returned in eval mode, in contiguous memory format, on the training device.
    """
    from pssr import distributed as D

    # Under torchrun: join the process group (gloo on CPU, NCCL on CUDA); otherwise a no-op.
    dist = D.init_distributed(default_device(cfg.device))
    device = D.device_for(dist, default_device(cfg.device))
    cfg_dict = asdict(cfg)
    metadata = plain_metadata()  # taken now, so the git revision is that of the code this run loaded
    ckpt_path = Path(checkpoint) if checkpoint is not None else None

    torch.manual_seed(cfg.seed)  # dropout and anything else drawing on the global generator
    # The shuffle generator is the same on every rank (one global permutation per epoch, each rank
    # takes its share of every global batch); augmentation draws are per rank.
    gens = {
        "shuffle": torch.Generator().manual_seed(cfg.seed),
        "aug": torch.Generator().manual_seed(cfg.seed + 1 + 1000 * dist.rank),
    }
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    start_epoch, step, history, metrics = 0, 0, [], {}
    if ckpt_path is not None and ckpt_path.is_file() and resume:
        start_epoch, step, history, metrics = resume_from(
            ckpt_path, cfg, kind, data, model, opt, gens, dist, device
        )

    train = data.train
    n = len(train)
    if n == 0:
        raise ValueError(f"dataset {data.name!r} has an empty train split")
    # Whole split on the device once (one plain copy: pinning a whole split would hold that much
    # page-locked host memory for the rest of the run); batches are then indexed on the device.
    x_all, y_all = train.x.to(device), train.y.to(device)
    bs = min(cfg.batch_size, n)  # the global batch: split evenly across ranks
    if bs % dist.world_size:
        raise ValueError(f"batch_size {bs} must be divisible by the number of processes ({dist.world_size})")
    steps_per_epoch = n // bs
    net = D.wrap_model(model, dist)  # DistributedDataParallel averages gradients across ranks
    total_steps = steps_per_epoch * cfg.epochs
    augment = AUGMENTATIONS.get(cfg.augment)
    has_val = len(data.val) > 0

    def save(epoch: int) -> dict[str, Any]:
        rng = rng_state(gens)
        if dist.enabled:  # every rank's augmentation stream (rank 0's alone is "gen_aug"), in rank order
            rng["gen_aug_by_rank"] = D.all_gather_objects(gens["aug"].get_state(), dist)
        ck = {
            "format": CHECKPOINT_FORMAT,
            "kind": kind,
            "model": model_spec(model, model_name, model_kwargs),
            "state_dict": {k: v.detach().contiguous() for k, v in model.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": {"name": cfg.schedule, "step": step, "total_steps": total_steps},
            "rng": rng,
            "epoch": epoch,
            "config": cfg_dict,
            "data": {
                "name": data.name,
                "image_shape": list(data.image_shape),
                "num_classes": data.num_classes,
                "classes": list(data.classes),
                "n_train": n,
            },
            "history": history,
            "metrics": metrics,
            "metadata": {**metadata, "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        }
        if ckpt_path is not None and dist.is_main:
            save_checkpoint(ckpt_path, ck)
        D.barrier(dist)  # no rank runs ahead of a checkpoint it might need to resume from
        return ck

    ck: dict[str, Any] | None = None
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=gens["shuffle"])
        # This rank's share of each global batch (the whole batch in a single process); the last
        # partial batch is dropped (BatchNorm dislikes tiny batches).
        # One (pinned, asynchronous on CUDA) copy of the epoch's permutation; the batches are views of it.
        batches = D.global_batches(to_device(perm, device), bs, dist, drop_last=True)
        bar = _tqdm(range(steps_per_epoch), desc=f"{kind} epoch {epoch + 1}/{cfg.epochs}", progress=progress)
        what = f"{kind} epoch {epoch + 1}/{cfg.epochs}"
        loss_sum, correct, seen, lr, step = _train_steps(
            net,
            opt,
            batch_loss,
            cfg,
            batches,
            x_all,
            y_all,
            gens["aug"],
            augment,
            step,
            total_steps,
            bar,
            what,
        )
        rec = _epoch_record(epoch, loss_sum, correct, seen, lr, time.perf_counter() - t0, dist, device)
        if has_val:
            rec["val_acc"] = evaluate_accuracy(model, data.val, cfg.eval_batch_size)
        rec["epoch_seconds"] = time.perf_counter() - t0
        history.append(rec)
        if dist.is_main:
            log.info(
                "%s epoch %d/%d: %s",
                kind,
                epoch + 1,
                cfg.epochs,
                ", ".join(f"{k}={v:.4g}" for k, v in rec.items() if k != "epoch"),
            )
        if epoch + 1 == cfg.epochs:
            metrics = _final(model, data, cfg, final_metrics)
        ck = save(epoch + 1)
        for cb in callbacks:
            cb(rec)

    if ck is None:  # nothing left to train: the checkpoint was already complete
        metrics = metrics if "test_acc" in metrics else _final(model, data, cfg, final_metrics)
        ck = save(max(start_epoch, cfg.epochs))
    opt.zero_grad(set_to_none=True)  # the last step's gradients would leak into the caller's code
    # Free a DDP wrapper now, not at some later garbage collection: one collected after the process
    # group is destroyed can abort the process ("terminate called without an active exception").
    wrapped = net is not model
    del net
    _collect_if(wrapped)
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return FitResult(model, history, ck)


def _collect_if(wrapped: bool) -> None:
    if wrapped:
        gc.collect()


def _train_steps(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    batch_loss: BatchLoss,
    cfg: TrainConfig,
    batches: Sequence[Tensor],
    x_all: Tensor,
    y_all: Tensor,
    gen: torch.Generator,
    augment: Callable[..., Tensor],
    step: int,
    total_steps: int,
    bar: Any,
    what: str,
) -> tuple[Tensor, Tensor, int, float, int]:
    """One epoch's optimizer steps over ``batches`` (this rank's index tensors), the learning rate set
    per global ``step``; (summed loss, correct predictions, images seen, last lr, next step)."""
    device = x_all.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    lr = cfg.lr
    heartbeat = Heartbeat(log)
    for i in bar:
        idx = batches[i]
        x = augment(x_all[idx], gen, cfg.crop_padding)
        y = y_all[idx]
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = lr_at(cfg, step, total_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast_context(device, cfg.bf16):
            loss, logits = batch_loss(net, x, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        loss_sum += loss.detach().float() * y.shape[0]
        correct += (logits.detach().argmax(1) == y).sum()
        seen += y.shape[0]
        _show_step(bar, heartbeat, loss, lr, seen, i, len(batches), what)
    return loss_sum, correct, seen, lr, step


def _show_step(
    bar: Any, heartbeat: Heartbeat, loss: Tensor, lr: float, seen: int, i: int, steps: int, what: str
) -> None:
    """The progress bar's loss and lr every 20 steps; without a bar (a background run) a heartbeat line."""
    if i % 20 == 0 or i == steps - 1:
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
    if isinstance(bar, _NoBar):
        heartbeat(seen, "%s: step %d/%d", what, i + 1, steps)


def _epoch_record(
    epoch: int,
    loss_sum: Tensor,
    correct: Tensor,
    seen: int,
    lr: float,
    train_time: float,
    dist: Any,
    device: torch.device,
) -> dict[str, Any]:
    """An epoch's training statistics, summed over all ranks under torch.distributed."""
    from pssr import distributed as D

    if dist.enabled:
        stats = D.all_reduce_sum(
            torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=device)]), dist
        )
        loss_sum, correct, seen = stats[0], stats[1], int(stats[2])
    return {
        "epoch": epoch + 1,
        "train_loss": float(loss_sum) / seen,
        "train_acc": float(correct) / seen,
        "lr_last": lr,
        "train_seconds": train_time,
        "images_per_second": seen / train_time,
    }


def _final(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    final_metrics: Callable[[nn.Module], dict[str, float]] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "test_acc": evaluate_accuracy(model, data.test, cfg.eval_batch_size),
        "n_test": len(data.test),
    }
    if final_metrics is not None:
        out.update(final_metrics(model))
    log.info("final metrics: %s", out)
    return out


def _tqdm(it: range, desc: str, progress: bool) -> Any:
    if not _progress_enabled(progress):
        return _NoBar(it)
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)


class Heartbeat:
    """Progress log lines for runs without a progress bar: called after every batch with the images
    seen so far in the epoch, it logs at most one line every ``LOG_EVERY_S`` seconds, with the epoch's
    mean rate and the rate since the previous line (which leaves the warm-up out). One per epoch."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.start = self.last = time.perf_counter()
        self.last_seen = 0

    def __call__(self, seen: int, msg: str, *args: Any) -> None:
        now = time.perf_counter()
        if now - self.last <= LOG_EVERY_S:
            return
        self.logger.info(
            msg + ", %.0f img/s (%.0f since the last line)",
            *args,
            seen / (now - self.start),
            (seen - self.last_seen) / (now - self.last),
        )
        self.last, self.last_seen = now, seen


class _NoBar:
    def __init__(self, it: range) -> None:
        self._it = it

    def __iter__(self) -> Iterator[int]:
        return iter(self._it)

    def set_postfix(self, **_: Any) -> None:
        pass
