"""Training time: images/s and extrapolated seconds per epoch for classifier, PGD-AT and PSSR training steps.

Prints one table and writes ``results/benchmarks-train.json`` (``benchmarks/run_all.py`` runs this and
``bench_purify.py`` into one ``results/benchmarks.json``)::

    .venv/bin/python benchmarks/bench_train.py [--device cpu] [--steps 20] [--batch 128] [--quick]

Each row times up to ``steps`` optimizer steps (after ``warmup`` untimed ones; a row stops early
once its timed steps add up to ``row_budget_s`` seconds, after at least 2, which keeps the whole run
under about 7 minutes on 2 busy CPU cores) at batch ``batch``, on one fixed batch of uniform random images and
labels -- speed does not depend on the data -- with fresh weights:

* ``classifier``: cross-entropy + SGD (Nesterov) step, ``small-cnn`` on 1x28x28 (MNIST-style, 60k
  images per epoch) and ``resnet20`` on 3x32x32 (CIFAR, 50k);
* ``pgd-at``: the same models, each step a PGD-10 inner attack (eval mode) + the training step
  (:func:`pssr.train.adversarial.pgd_at_loss`, Madry et al. 2018); eps 0.1 / 8/255;
* ``pssr``: one PSSR step (:func:`pssr.train.losses.pssr_loss` + backward + Adam on the scorer and
  generator, classifier frozen) with the ``[pssr]`` table of ``configs/pssr-fashion-mnist.toml``
  (small-cnn) and ``configs/pssr-cifar10.toml`` (resnet20), on cached adversarial examples (here
  random points of the eps-ball: what they are does not change the cost of the step);
* ``pssr-adv-cache``: making those cached examples (PGD against the frozen classifier + the scorer's
  targets, :func:`pssr.train.adversarial_cache.make_adversarial`), done once per training run, not per epoch.

fp32, and bf16 where the trainer supports it (autocast, + channels_last for the classifier steps as
``TrainConfig.channels_last``; ``PSSRConfig.bf16`` for PSSR; the adversarial cache is made in fp32).
Seconds per epoch = epoch images / images/s: optimizer steps only (no data loading, augmentation,
evaluation or checkpoints). ``--quick``: batch 8, one warmup and one timed step: a smoke run, not numbers.
The number of timed steps of each row is in the JSON (``steps_timed``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_average, time_steps, write_section  # noqa: E402

from pssr.config import build, load_toml  # noqa: E402
from pssr.defense.pssr import PSSR, PSSRConfig  # noqa: E402
from pssr.defense.scoring import attack_share_target  # noqa: E402
from pssr.models import create_model  # noqa: E402
from pssr.train import losses  # noqa: E402
from pssr.train.adversarial import AdvTrainConfig, pgd_at_loss  # noqa: E402
from pssr.train.adversarial_cache import make_adversarial  # noqa: E402
from pssr.train.loop import TrainConfig  # noqa: E402
from pssr.train.losses import tapped_loss  # noqa: E402
from pssr.train.schedules import build_optimizer  # noqa: E402
from pssr.utils import autocast_context, default_device, eval_mode  # noqa: E402

DATA_NOTE = (
    "uniform random images and labels, fresh weights (speed does not depend on the data or the weights)"
)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One image shape and its classifier, PGD-AT budget and PSSR config."""

    name: str
    model: str
    shape: tuple[int, int, int]  # (C, H, W)
    epoch_images: int  # training images per epoch the seconds are extrapolated to
    eps: float  # PGD-AT L-inf radius, pixels in [0, 1]
    alpha: float  # PGD-AT step size, pixels
    pssr_config: str  # the TOML file whose [pssr] table builds PSSR


SETTINGS = (
    Setting("mnist-style", "small-cnn", (1, 28, 28), 60_000, 0.1, 0.01, "configs/pssr-fashion-mnist.toml"),
    Setting("cifar", "resnet20", (3, 32, 32), 50_000, 8 / 255, 2 / 255, "configs/pssr-cifar10.toml"),
)
PGD_STEPS = 10  # PGD-AT inner attack


def _random_batch(
    batch: int, shape: tuple[int, int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, *shape, generator=g).to(device), torch.randint(0, 10, (batch,), generator=g).to(
        device
    )


def classifier_step(
    setting: Setting, batch: int, device: torch.device, bf16: bool, adversarial: bool
) -> tuple[Callable[[], None], dict[str, Any]]:
    """One step of :func:`pssr.train.loop.fit`: (PGD-AT or plain) cross-entropy, backward, SGD."""
    cfg = TrainConfig(model=setting.model, batch_size=batch, bf16=bf16, channels_last=bf16)
    model = create_model(setting.model, in_channels=setting.shape[0]).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    x, y = _random_batch(batch, setting.shape, device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    if adversarial:
        batch_loss = pgd_at_loss(
            AdvTrainConfig(
                model=setting.model,
                eps=setting.eps,
                alpha=setting.alpha,
                steps=PGD_STEPS,
                bf16=bf16,
                channels_last=bf16,
            )
        )
        detail = {
            "method": f"PGD-AT, PGD-{PGD_STEPS} inner attack",
            "eps": setting.eps,
            "alpha": setting.alpha,
        }
    else:

        def batch_loss(
            m: torch.nn.Module, xb: torch.Tensor, yb: torch.Tensor, _: torch.Generator
        ) -> tuple[torch.Tensor, torch.Tensor]:
            logits = m(xb)
            return F.cross_entropy(logits.float(), yb), logits

        detail = {"method": "cross-entropy"}
    model.train()

    def step() -> None:
        with autocast_context(device, cfg.bf16):
            loss, _ = batch_loss(model, x, y, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, {"model": setting.model, "optimizer": "sgd-nesterov", **detail}


def _pssr_parts(
    setting: Setting, batch: int, device: torch.device, bf16: bool
) -> tuple[PSSR, PSSRConfig, torch.Tensor, torch.Tensor]:
    cfg = dataclasses.replace(
        build(PSSRConfig, load_toml(setting.pssr_config)["pssr"]),
        bf16=bf16,
        batch_size=batch,
        device=str(device),
    )
    torch.manual_seed(0)
    clf = create_model(setting.model, in_channels=setting.shape[0]).to(device).eval()
    defense = PSSR(clf, cfg, image_shape=setting.shape).to(device)
    x, y = _random_batch(batch, setting.shape, device)
    return defense, cfg, x, y


def pssr_step(
    setting: Setting, batch: int, device: torch.device, bf16: bool
) -> tuple[Callable[[], None], dict[str, Any]]:
    """One step of :func:`pssr.train.pssr_train.train_pssr` (cache mode): loss, backward, Adam."""
    defense, cfg, x, y = _pssr_parts(setting, batch, device, bf16)
    clf = defense.classifier
    # Any point of the eps-ball costs the same as a PGD one (timed in pssr-adv-cache); the scorer's
    # target is computed as the trainer does.
    g = torch.Generator().manual_seed(1)
    x_adv = (x + cfg.eps * torch.randn(x.shape, generator=g).sign().to(device)).clamp(0.0, 1.0)
    with eval_mode(clf, requires_grad=False):
        target = attack_share_target(cfg.scorer_target, x, x_adv, clf, y)  # (N, 1, H, W)
    learned = cfg.use_surgery and getattr(defense.scorer, "needs_training", False)
    params = [
        *(defense.scorer.parameters() if learned else []),
        *(defense.generator.parameters() if defense.generator is not None else []),
    ]
    if not params:
        raise ValueError(
            f"{setting.pssr_config}: this PSSR config trains nothing (no learned scorer, no generator)"
        )
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    use_tap = cfg.w_semantic_feat > 0 and bool(cfg.feature_layer)
    tap = losses.FeatureTap(clf, cfg.feature_layer) if use_tap else None

    def step() -> None:
        with eval_mode(clf, requires_grad=False):
            loss, _ = tapped_loss(defense, cfg, x, y, x_adv, target, tap)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return step, {
        "model": setting.model,
        "pssr_config": setting.pssr_config,
        "optimizer": "adam",
        "config_batch_size": build(PSSRConfig, load_toml(setting.pssr_config)["pssr"]).batch_size,
        "config_train_subset": cfg.train_subset,
        "scorer": cfg.scorer,
        "w_rdrop": cfg.w_rdrop,
    }


def pssr_cache_step(
    setting: Setting, batch: int, device: torch.device, bf16: bool
) -> tuple[Callable[[], None], dict[str, Any]]:
    """Adversarial examples + scorer targets for one batch, as the PSSR trainer caches them."""
    defense, cfg, x, y = _pssr_parts(setting, batch, device, bf16)
    clf = defense.classifier

    def step() -> None:
        with eval_mode(clf, requires_grad=False):
            make_adversarial(clf, x, y, cfg, seed=0, batch_size=batch)

    return step, {
        "model": setting.model,
        "pssr_config": setting.pssr_config,
        "method": f"PGD-{cfg.pgd_steps} (eps {cfg.eps:.4g}) + {cfg.scorer_target} targets",
    }


# (workload, builder, precisions the trainer supports, made once per run rather than per epoch)
WORKLOADS: tuple[
    tuple[str, Callable[..., tuple[Callable[[], None], dict[str, Any]]], tuple[str, ...], bool], ...
] = (
    (
        "classifier",
        lambda s, b, d, bf: classifier_step(s, b, d, bf, adversarial=False),
        ("fp32", "bf16"),
        False,
    ),
    ("pgd-at", lambda s, b, d, bf: classifier_step(s, b, d, bf, adversarial=True), ("fp32", "bf16"), False),
    ("pssr", pssr_step, ("fp32", "bf16"), False),
    ("pssr-adv-cache", pssr_cache_step, ("fp32",), True),
)


def run_training(
    *,
    device: torch.device,
    steps: int = 20,
    batch: int = 128,
    warmup: int = 1,
    row_budget_s: float | None = 15.0,
    quick: bool = False,
    workloads: tuple[str, ...] | None = None,
    log: Callable[[str], object] = print,
) -> dict[str, Any]:
    """Time every workload x setting x precision; return the ``training`` section."""
    for name, v, lo in (("steps", steps, 1), ("batch", batch, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if row_budget_s is not None and not row_budget_s > 0:
        raise ValueError(f"row_budget_s must be > 0 seconds (or None for no budget), got {row_budget_s!r}")
    known = [w[0] for w in WORKLOADS]
    chosen = known if workloads is None else list(workloads)
    if bad := [w for w in chosen if w not in known]:
        raise ValueError(f"unknown workload(s) {bad}; choose from {known}")
    if quick:
        steps, batch, warmup, row_budget_s = 1, 8, 1, None
    rows = []
    for workload, builder, precisions, once in WORKLOADS:
        if workload not in chosen:
            continue
        for setting in SETTINGS:
            for precision in precisions:
                step, detail = builder(setting, batch, device, precision == "bf16")
                times = time_steps(
                    step, device, warmup=warmup, steps=steps, budget_s=row_budget_s, min_steps=min(2, steps)
                )
                median = statistics.median(times)
                ips = batch / median
                seconds = setting.epoch_images / ips
                rows.append(
                    {
                        "workload": workload,
                        "setting": setting.name,
                        "image_shape": list(setting.shape),
                        "precision": precision,
                        "batch": batch,
                        "warmup_steps": warmup,
                        "steps_timed": len(times),
                        "median_step_s": median,
                        "min_step_s": min(times),
                        "mean_step_s": statistics.fmean(times),
                        "images_per_s": ips,
                        "epoch_images": setting.epoch_images,
                        "seconds_per_epoch": None if once else seconds,
                        "seconds_once_per_run": seconds if once else None,
                        **detail,
                    }
                )
                what = "s once per run" if once else "s/epoch"
                log(
                    f"{workload:14s} {setting.model:9s} {precision:4s} batch {batch:4d}: {1000 * median:9.1f} ms/step "
                    f"{ips:9.1f} img/s  {seconds:9.1f} {what} ({setting.epoch_images} images)"
                )
    return {
        "device": str(device),
        "quick": quick,
        "data": DATA_NOTE,
        "batch": batch,
        "max_steps": steps,
        "row_budget_s": row_budget_s,
        "rows": rows,
        "note": "median over timed steps; images_per_s = batch / median step time; seconds_per_epoch = "
        "epoch_images / images_per_s (optimizer steps only: no data loading, augmentation, evaluation "
        "or checkpointing); pssr-adv-cache is done once per PSSR training run (adv_mode='cache'); "
        "bf16 = autocast (+ channels_last for classifier and PGD-AT steps)",
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per row, at most")
    ap.add_argument(
        "--row-budget",
        type=float,
        default=15.0,
        help="seconds of timed steps after which a row stops early (after >= 2 steps); 0 = no budget",
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--workloads", default=",".join(w[0] for w in WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 8, one warmup and one timed step")
    ap.add_argument("--out", default="results/benchmarks-train.json")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    device = default_device(args.device)
    load_start = load_average()
    section = run_training(
        device=device,
        steps=args.steps,
        batch=args.batch,
        warmup=args.warmup,
        row_budget_s=args.row_budget or None,
        quick=args.quick,
        workloads=tuple(w for w in args.workloads.split(",") if w),
    )
    write_section(args.out, "training", section, device, load_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
