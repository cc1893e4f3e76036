"""Adversarial-training baselines: PGD-AT (Madry et al. 2018) and TRADES (Zhang et al. 2019).

Threat model: L-infinity, radius ``eps`` in [0, 1] pixel units, white-box on the classifier.

- **PGD-AT** — "Towards Deep Learning Models Resistant to Adversarial Attacks", Madry, Makelov,
  Schmidt, Tsipras, Vladu, ICLR 2018 (arXiv 1706.06083). Each training batch is replaced by its
  PGD-``steps`` adversarial version (uniform random start in the eps-ball, step ``alpha`` along the
  gradient sign, projection onto the ball and [0, 1]); the loss is cross-entropy on those.
- **TRADES** — "Theoretically Principled Trade-off between Robustness and Accuracy", Zhang, Yu, Jiao,
  Xing, El Ghaoui, Jordan, ICML 2019 (arXiv 1901.08573). Loss ``CE(f(x), y) + beta * KL(f(x) || f(x'))``
  where ``x'`` maximizes the KL term by PGD started at ``x + 0.001 * N(0, I)``; ``beta = 6`` is the
  paper's CIFAR-10 / MNIST choice.

The adversarial examples are generated with the model in eval mode (BatchNorm uses running
statistics and dropout is off, so the attack sees the deterministic network and does not pollute the
BatchNorm statistics), and the update runs in train mode. The loop, checkpoints and exact resume are
:mod:`pssr.train.loop`'s. :func:`pssr.attacks.pgd.pgd_linf` (the one training PGD, shared with PSSR
training and calibration) makes the training examples and the robust accuracy recorded at the end (PGD-``eval_steps``, worst case over ``eval_restarts`` random
starts); the full evaluation lives in :mod:`pssr.evaluation` with :mod:`pssr.attacks`.

Checkpoint selection (``val_size > 0``, :mod:`pssr.train.selection`): that many training images,
drawn at random with ``seed``, are held out of training; after every epoch their clean and
PGD-``val_steps`` robust accuracy (step ``2.5 * eps / val_steps``, one random start, eval mode, fp32)
go into the history, and the epoch with the highest validation robust accuracy is selected (ties:
the earliest). The returned model and ``<method>.pt`` hold that epoch's weights and its test metrics;
``<method>-best.pt`` the best epoch so far; ``<method>-last.pt`` the last epoch (resume reads it).
Their metrics record ``selected_epoch``, ``val_size``, ``val_steps``, ``train_seconds`` and
``passes_per_example``. ``val_size = 0`` (the default) trains on the whole split and keeps the last
epoch, as before.

Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64, logits (N, classes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.attacks.pgd import pgd_linf
from pssr.data import Dataset, Split
from pssr.distributed import unwrap
from pssr.models.specs import attach_spec
from pssr.registry import Registry
from pssr.train.loop import EpochCallback, FitResult, TrainConfig, fit, iter_batches, model_device
from pssr.utils import load_checkpoint

log = logging.getLogger(__name__)

BatchLoss = Callable[[nn.Module, Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]
ADV_METHODS: Registry[BatchLoss] = Registry("adversarial training method")


@dataclass(frozen=True)
class AdvTrainConfig(TrainConfig):
    """The ``[adv_train]`` table: :class:`TrainConfig` fields plus the attack used in training."""

    method: str = "pgd-at"  # "pgd-at" (Madry et al. 2018) or "trades" (Zhang et al. 2019)
    eps: float = 0.0  # L-inf radius, pixel units in [0, 1]; 0 = the dataset's budget (pssr.defaults.budget)
    alpha: float = 0.01  # PGD step size, pixel units
    steps: int = 10  # PGD steps per training batch
    beta: float = 6.0  # TRADES robustness weight (ignored by pgd-at)
    init_checkpoint: str | None = None  # start from these weights (e.g. a standard classifier checkpoint)
    eval_steps: int = 20  # PGD steps of the robust test accuracy stored at the end; 0 = skip it
    eval_alpha: float | None = None  # its step size; None = 2.5 * eps / eval_steps
    eval_restarts: int = 1  # random starts; an example is robust only if it survives all of them
    eval_n: int | None = None  # test images for the robust accuracy; None = the whole test split
    val_size: int = 0  # training images held out to select the epoch (robust val acc); 0 = keep the last
    val_steps: int = 10  # PGD steps of that validation robust accuracy (step 2.5 * eps / val_steps)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in ADV_METHODS:
            raise ValueError(f"method must be one of {ADV_METHODS.list()}, got {self.method!r}")
        checks = [
            ("eps", 0.0 <= self.eps <= 1.0, "in [0, 1] (0 = the dataset's budget)"),
            ("alpha", 0.0 < self.alpha <= 1.0, "in (0, 1]"),
            ("steps", self.steps >= 1, ">= 1"),
            ("beta", self.beta >= 0.0, ">= 0"),
            ("eval_steps", self.eval_steps >= 0, ">= 0"),
            ("eval_restarts", self.eval_restarts >= 1, ">= 1"),
            ("val_size", self.val_size >= 0, ">= 0 (0 = no validation split)"),
            ("val_steps", self.val_steps >= 1, ">= 1"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {getattr(self, name)!r}")
        if self.eval_alpha is not None and not 0.0 < self.eval_alpha <= 1.0:
            raise ValueError(f"eval_alpha must be in (0, 1] or None, got {self.eval_alpha!r}")
        if self.eval_n is not None and self.eval_n < 1:
            raise ValueError(f"eval_n must be >= 1 or None, got {self.eval_n!r}")


# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def pgd_accuracy(
    model: nn.Module,
    split: Split,
    *,
    eps: float,
    alpha: float | None = None,
    steps: int = 20,
    restarts: int = 1,
    batch_size: int = 500,
    seed: int = 0,
    n: int | None = None,
) -> dict[str, float]:
    """Clean and PGD-``steps`` robust accuracy (L-inf ``eps``) on the first ``n`` images of ``split``.

    fp32, eval mode (the caller's mode is restored); an image counts as robust only if it is still
    classified correctly after every one of the ``restarts`` random-start runs.
    """
    if eps <= 0 or steps < 1 or restarts < 1:
        raise ValueError(
            f"need eps > 0, steps >= 1, restarts >= 1; got eps={eps}, steps={steps}, restarts={restarts}"
        )
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    split = split.subset(n) if n is not None else split
    was_training = model.training
    model.eval()
    dev = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    clean = robust = 0
    try:
        for x, y in iter_batches(split, batch_size):
            x, y = x.to(dev), y.to(dev)
            ok = model(x).argmax(1) == y
            clean += int(ok.sum())
            for _ in range(restarts):
                x_adv = pgd_linf(model, x, y, eps=eps, alpha=alpha, steps=steps, generator=gen)
                ok &= model(x_adv).argmax(1) == y
            robust += int(ok.sum())
    finally:
        model.train(was_training)
    m = len(split)
    return {
        "clean_acc": clean / m,
        "robust_acc": robust / m,
        "n": m,
        "eps": eps,
        "alpha": alpha,
        "steps": steps,
        "restarts": restarts,
    }


# ---------------------------------------------------------------------------------------------
def _eval_mode_attack(model: nn.Module, make: Callable[[], Tensor]) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        return make()
    finally:
        model.train(was_training)


@ADV_METHODS.register("pgd-at")
def pgd_at_loss(cfg: AdvTrainConfig) -> BatchLoss:
    """Cross-entropy on PGD adversarial examples (Madry et al. 2018)."""

    def batch_loss(model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        # Attack the bare module: under torchrun `model` is the DDP wrapper, whose forward must be
        # followed by exactly one backward (the training step's).
        inner = unwrap(model)
        x_adv = _eval_mode_attack(
            inner, lambda: pgd_linf(inner, x, y, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, generator=gen)
        )
        logits = model(x_adv)
        return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing), logits

    return batch_loss


def trades_start(x: Tensor, gen: torch.Generator) -> Tensor:
    """TRADES' start of the inner maximization: ``x + 0.001 * N(0, I)`` (CPU generator ``gen``), in [0, 1]."""
    return (x + 0.001 * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0.0, 1.0)


def trades_step(
    model: nn.Module, x: Tensor, y: Tensor, x0: Tensor, cfg: AdvTrainConfig
) -> tuple[Tensor, Tensor]:
    """The TRADES loss of one batch, its inner maximization started at ``x0`` (see :func:`trades_start`).

    ``model`` may be the DDP wrapper: the attack runs on the bare module (see :func:`pgd_at_loss`),
    then the clean and the adversarial batch go through ``model`` in two forward passes, as in the
    paper's code (each half gets its own BatchNorm batch statistics), before the single backward.
    That is correct under DistributedDataParallel: autograd sums each parameter's gradient over
    both uses before that parameter's one accumulation hook fires, so DDP's reducer sees every
    parameter once per backward and averages the full gradient across ranks
    (``tests/test_distributed.py`` checks it against one process on the same global batch).
    Returns ``(loss, clean logits (N, K))``.
    """
    inner = unwrap(model)

    def attack() -> Tensor:
        with torch.no_grad():
            p_clean = F.softmax(inner(x).float(), dim=1)  # (N, K), the fixed target of the inner max

        def kl(logits: Tensor, _: Tensor) -> Tensor:
            return F.kl_div(F.log_softmax(logits.float(), dim=1), p_clean, reduction="sum")

        return pgd_linf(
            inner, x0, y, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, random_start=False, loss=kl
        )

    x_adv = _eval_mode_attack(inner, attack)
    # pgd_linf projects onto the ball around its start x0; re-project onto the ball around x.
    x_adv = torch.min(torch.max(x_adv, x - cfg.eps), x + cfg.eps).clamp(0.0, 1.0)
    logits = model(x)
    logits_adv = model(x_adv)
    natural = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    robust = F.kl_div(
        F.log_softmax(logits_adv.float(), dim=1), F.softmax(logits.float(), dim=1), reduction="batchmean"
    )
    return natural + cfg.beta * robust, logits


@ADV_METHODS.register("trades")
def trades_loss(cfg: AdvTrainConfig) -> BatchLoss:
    """CE(f(x), y) + beta * KL(f(x) || f(x')) with x' from PGD on the KL term (Zhang et al. 2019)."""

    def batch_loss(model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        return trades_step(model, x, y, trades_start(x, gen), cfg)

    return batch_loss


# ---------------------------------------------------------------------------------------------
def adversarial_train_run(
    model: str | nn.Module,
    data: Dataset,
    config: AdvTrainConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    **overrides: Any,
) -> FitResult:
    """Like :func:`adversarial_train` but returns the :class:`FitResult`."""
    from pssr.defaults import resolved
    from pssr.train.classifier import build_model, resolve_config

    cfg = resolve_config(AdvTrainConfig, config, model, overrides)
    assert isinstance(cfg, AdvTrainConfig)
    cfg = resolved(cfg, data.name)  # eps 0: the dataset's budget
    torch.manual_seed(cfg.seed)
    module, name, kw = build_model(
        model if isinstance(model, nn.Module) else cfg.model, data, cfg.model_kwargs
    )
    if cfg.init_checkpoint:
        module.load_state_dict(load_checkpoint(cfg.init_checkpoint)["state_dict"])
        log.info("initialized from %s", cfg.init_checkpoint)

    def final(m: nn.Module) -> dict[str, float]:
        if cfg.eval_steps == 0:
            return {}
        r = pgd_accuracy(
            m,
            data.test,
            eps=cfg.eps,
            alpha=cfg.eval_alpha,
            steps=cfg.eval_steps,
            restarts=cfg.eval_restarts,
            batch_size=cfg.eval_batch_size,
            seed=cfg.seed,
            n=cfg.eval_n,
        )
        return {f"pgd{cfg.eval_steps}_{k}": v for k, v in r.items()}

    batch_loss = ADV_METHODS.create(cfg.method, cfg=cfg)
    common: dict[str, Any] = {
        "model_name": name,
        "model_kwargs": kw,
        "kind": cfg.method,
        "checkpoint": checkpoint,
        "resume": resume,
        "progress": progress,
        "callbacks": callbacks,
        "final_metrics": final,
    }
    if cfg.val_size > 0:
        return _fit_selected(module, data, cfg, batch_loss, common)
    return fit(module, data, cfg, batch_loss, **common)


def passes_per_example(cfg: AdvTrainConfig) -> dict[str, int]:
    """Network passes per training example per epoch. ``passes_per_example`` counts the passes with a
    backward: PGD-AT ``steps`` attack steps + 1 training pass; TRADES ``steps`` attack steps + the
    clean and the adversarial training forwards (one backward through both) = ``steps + 2``.
    ``forward_passes_per_example`` adds TRADES' gradient-free clean forward (the KL target)."""
    with_backward = cfg.steps + (1 if cfg.method == "pgd-at" else 2)
    return {
        "passes_per_example": with_backward,
        "forward_passes_per_example": with_backward + int(cfg.method == "trades"),
    }


def _fit_selected(
    module: nn.Module, data: Dataset, cfg: AdvTrainConfig, batch_loss: BatchLoss, common: dict[str, Any]
) -> FitResult:
    """:func:`pssr.train.selection.fit_with_selection` with the validation robust accuracy of ``cfg``;
    ``common``: the keyword arguments it shares with :func:`pssr.train.loop.fit`."""
    from pssr.train.selection import fit_with_selection

    def evaluate_val(m: nn.Module, val: Split) -> dict[str, float]:
        r = pgd_accuracy(
            m, val, eps=cfg.eps, steps=cfg.val_steps, batch_size=cfg.eval_batch_size, seed=cfg.seed
        )
        return {"val_clean_acc": r["clean_acc"], "val_robust_acc": r["robust_acc"]}

    meta = {"val_size": cfg.val_size, "val_steps": cfg.val_steps, **passes_per_example(cfg)}
    return fit_with_selection(
        module, data, cfg, batch_loss, val_size=cfg.val_size, evaluate_val=evaluate_val, meta=meta, **common
    )


def adversarial_train(
    model: str | nn.Module,
    data: Dataset,
    config: AdvTrainConfig | None = None,
    *,
    method: str | None = None,
    eps: float | None = None,
    alpha: float | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[EpochCallback] = (),
    **more: Any,
) -> nn.Module:
    """Adversarially train ``model`` (a registry name or an ``nn.Module``) on ``data.train``.

    ``method`` is "pgd-at" or "trades"; ``eps`` / ``alpha`` are L-inf pixel units. Other
    :class:`AdvTrainConfig` fields (``beta``, ``lr``, ``batch_size``, ``init_checkpoint``, ``eval_steps`` ...)
    go through ``more``. Checkpointing and resume work as in :func:`pssr.train.train_classifier`;
    the checkpoint's metrics hold the clean and PGD-``eval_steps`` test accuracy.
    """
    overrides = dict(method=method, eps=eps, alpha=alpha, steps=steps, epochs=epochs, **more)
    res = adversarial_train_run(
        model,
        data,
        config,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        callbacks=callbacks,
        **overrides,
    )
    return attach_spec(res.model, res.checkpoint.get("model"), res.checkpoint.get("data"))


__all__ = [
    "ADV_METHODS",
    "AdvTrainConfig",
    "adversarial_train",
    "adversarial_train_run",
    "passes_per_example",
    "pgd_accuracy",
    "pgd_linf",
    "trades_start",
    "trades_step",
]
