"""PSSR's regenerator trained as a Gaussian denoiser for a frozen classifier (denoised smoothing).

Salman, Sun, Yang, Kapoor and Kolter ("Denoised Smoothing", NeurIPS 2020, arXiv 2003.01908) make an
off-the-shelf classifier ``f`` certifiably robust by randomized smoothing of ``f(D(x + delta))``,
``delta ~ N(0, sigma^2 I)``, with a denoiser ``D`` trained while ``f`` stays frozen. Here ``D`` is
PSSR's purifier (arXiv 2402.00304): its Semantic Regeneration U-Net ``G``, with or without Pixel
Surgery in front (see :mod:`pssr.certify.denoised` for the two readings), trained on
``x + N(0, sigma^2 I)`` (unclipped) with

* a pixel loss, ``w_pixel * BCE(D(x + delta), x)`` (or MSE, Salman et al.'s denoising objective;
  see :data:`PIXEL_LOSSES` for why BCE is the default);
* PSSR's semantic alignment to the classifier on the clean image: ``w_kl * KL(f(x) || f(D(x + delta)))``
  and Salman et al.'s stability objective ``w_stability * CE(f(D(x + delta)), argmax f(x))``;
* with surgery and the learned scorer: ``w_scorer`` times the scorer's listwise loss against each
  pixel's share of the noise ``|delta|`` (the pixels that carry the most perturbation are the ones
  surgery should remove, as for an attack).

Salman et al. found the semantic terms work best as a second stage, after MSE alone: ``init`` starts
a run from a trained denoiser (ours: ``w_kl = 0`` first, then ``w_kl > 0`` from its weights; with
both terms from scratch the KL gradient through the classifier dominates and G collapses, measured
on mnist-10k at sigma 0.5, docs/certify.md).

The classifier is frozen (eval mode, no gradient to its weights; gradients flow through it to ``D``).
Each epoch writes ``OUT/denoiser-state.pt`` (weights, optimizer, generator states, history) and a
rerun resumes after the last finished epoch; the end writes ``OUT/denoiser.pt``, a PSSR checkpoint
(``torch.load(weights_only=True)``; :meth:`pssr.defense.PSSR.load` rebuilds denoiser and classifier)
whose ``metrics["denoiser"]`` records sigma and the validation history, and ``OUT/denoiser.json``.

Single process (no torchrun data parallelism here).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.config import asdict
from pssr.defense.config import DefenseConfig
from pssr.defense.pssr import PSSR
from pssr.defense.scoring import attack_share_target
from pssr.defense.surgery import MASK_MODES
from pssr.train import losses
from pssr.train.loop import Heartbeat
from pssr.utils import autocast_context, default_device, eval_mode, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

STATE_FORMAT = "pssr-denoise-state/1"
# Pixel losses between the denoised and the clean image (both in [0, 1], G's output is a sigmoid).
# "bce" (per-pixel binary cross-entropy, its gradient on G's logits is p - x) is the default: with
# "mse", whose gradient is damped by the sigmoid's slope, G collapsed to an all-zero output within 20
# Adam steps (lr 1e-3 and 3e-4, mnist-10k, sigma 0.5; BCE reached MSE 0.017 in 100 steps).
PIXEL_LOSSES = {
    "bce": lambda r, x: F.binary_cross_entropy(r.float().clamp(1e-6, 1 - 1e-6), x.float().clamp(0, 1)),
    "mse": lambda r, x: F.mse_loss(r.float(), x.float()),
}
# may differ between a saved state and the run resuming it: the device, and the number of epochs (Adam
# at a constant step size, so a run of E epochs is the first E epochs of a longer one; a state already
# past the epochs asked for is refused in _resume)
_RUNTIME = frozenset({"device", "epochs"})

__all__ = ["DenoiseConfig", "train_denoiser"]


@dataclasses.dataclass(frozen=True)
class DenoiseConfig:
    """The ``[denoise]`` table: the denoiser, its noise level and its training."""

    sigma: float = 0.5  # std of the Gaussian noise, pixel units (images in [0, 1])
    use_surgery: bool = False  # True: Pixel Surgery removes `ratio` of the noisy pixels before G
    scorer: str = "learned"  # with surgery: learned (trained on |noise|) | random | gradient
    scorer_width: int = 8  # channels of the learned scorer's first U-Net level
    ratio: float = 0.1  # share of the H*W pixels surgery removes
    fill: str = "mean"  # value of removed pixels fed to G
    gen_width: int = 16  # channels of G's first U-Net level
    gen_depth: int = 2  # 2x down-samplings in G
    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3  # Adam, constant
    train_subset: int = 0  # train on this many training images (0 = all), a seeded subset
    val_size: int = 1000  # validation images (from val, else held out of train)
    seed: int = 0
    bf16: bool = False  # bf16 autocast for G and the classifier in training (validation is fp32)
    device: str = "auto"
    pixel_loss: str = "bce"  # bce | mse (see PIXEL_LOSSES)
    w_pixel: float = 1.0  # pixel loss between D(x + delta) and x
    w_kl: float = 1.0  # KL(f(x) || f(D(x + delta)))
    w_stability: float = 0.0  # CE(f(D(x + delta)), argmax f(x))
    w_scorer: float = 1.0  # learned scorer vs |delta| (with surgery only)
    init: str = ""  # a denoiser.pt whose G (and scorer) this run starts from ("" = fresh weights)

    def __post_init__(self) -> None:
        checks = [
            ("sigma", 0 < self.sigma < float("inf"), "> 0"),
            ("ratio", 0.0 <= self.ratio <= 1.0, "in [0, 1]"),
            ("lr", self.lr > 0, "> 0"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("train_subset", self.train_subset >= 0, ">= 0"),
            ("val_size", self.val_size >= 1, ">= 1"),
            ("seed", self.seed >= 0, ">= 0"),
            ("pixel_loss", self.pixel_loss in PIXEL_LOSSES, f"one of {sorted(PIXEL_LOSSES)}"),
        ] + [
            (f.name, getattr(self, f.name) >= 0, ">= 0")
            for f in dataclasses.fields(self)
            if f.name.startswith("w_")
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"denoise.{name} must be {allowed}, got {getattr(self, name)!r}")
        self.defense_config()  # validates scorer, fill, widths

    def defense_config(self) -> DefenseConfig:
        """The PSSR architecture of this denoiser (G re-renders every pixel: ``restore_scope="full"``).
        Its training (this config) is recorded in the checkpoint's ``metrics["denoiser"]``."""
        return DefenseConfig(
            scorer=self.scorer,
            scorer_width=self.scorer_width,
            ratio=self.ratio,
            fill=self.fill,
            use_surgery=self.use_surgery,
            gen_width=self.gen_width,
            gen_depth=self.gen_depth,
            restore_scope="full",
        )


def _mask(defense: PSSR, x_noisy: Tensor) -> tuple[Tensor, Tensor | None]:
    """(mask, scores with gradient for a learned scorer or None) of a noisy batch."""
    cfg = defense.config
    if not cfg.use_surgery:
        return x_noisy.new_zeros(x_noisy.shape[0], 1, *x_noisy.shape[2:]), None
    learned = getattr(defense.scorer, "needs_training", False)
    with torch.set_grad_enabled(learned and torch.is_grad_enabled()):
        scores = defense.scorer(x_noisy, defense.classifier)  # (N, 1, H, W)
    m = MASK_MODES[cfg.mask_mode](scores.detach().float(), cfg.ratio)
    return m, scores if learned else None


def _loss(defense: PSSR, cfg: DenoiseConfig, x: Tensor, noise: Tensor) -> tuple[Tensor, dict[str, float]]:
    clf = defense.classifier
    x_noisy = x + cfg.sigma * noise  # (N, C, H, W), unclipped
    with torch.no_grad():
        logits_clean = clf(x)
    m, scores = _mask(defense, x_noisy)
    with autocast_context(x.device, cfg.bf16):
        restored = defense.restore(x_noisy, m)
        logits = clf(restored)
    parts = {
        "pixel": cfg.w_pixel * PIXEL_LOSSES[cfg.pixel_loss](restored, x),
        "kl": cfg.w_kl * losses.kl_to_target(logits_clean, logits),
    }
    if cfg.w_stability > 0:
        parts["stability"] = cfg.w_stability * F.cross_entropy(logits.float(), logits_clean.argmax(1))
    if scores is not None and cfg.w_scorer > 0:
        target = attack_share_target("delta", x, x_noisy)  # each pixel's share of |delta|
        parts["scorer"] = cfg.w_scorer * losses.scorer_ce(scores, target)
    return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def validate(defense: PSSR, x: Tensor, y: Tensor, sigma: float, seed: int, batch_size: int = 250) -> dict:
    """Accuracy of the classifier on one seeded noisy copy of each image, without and with the
    denoiser (the base models whose smoothing is certified), the denoiser's clean accuracy, and its
    pixel MSE. fp32, eval mode."""
    from pssr.certify.denoised import DenoisedClassifier

    dev = next(defense.parameters()).device
    den = DenoisedClassifier(defense)
    g = torch.Generator().manual_seed(seed)
    hits = {"noisy_acc_classifier": 0, "noisy_acc_denoised": 0, "clean_acc_denoised": 0}
    mse = 0.0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        xn = xb + sigma * torch.randn(xb.shape, generator=g).to(dev)
        r = den.denoise(xn)
        hits["noisy_acc_classifier"] += int((defense.classifier(xn).argmax(1) == yb).sum())
        hits["noisy_acc_denoised"] += int((defense.classifier(r).argmax(1) == yb).sum())
        hits["clean_acc_denoised"] += int((den(xb).argmax(1) == yb).sum())
        mse += float(((r - xb) ** 2).mean()) * len(xb)
    return {**{k: v / len(x) for k, v in hits.items()}, "pixel_mse": mse / len(x)}


def _init_from(defense: PSSR, path: str) -> None:
    """Start from the G (and scorer) weights of the denoiser checkpoint ``path`` (same architecture)."""
    ck = load_checkpoint(path)
    if ck.get("generator") is None or defense.generator is None:
        raise ValueError(f"denoise.init={path!r} is not a denoiser checkpoint with a generator")
    try:
        defense.generator.load_state_dict(ck["generator"]["state_dict"])
        if (
            defense.config.use_surgery
            and ck.get("scorer")
            and ck["scorer"].get("name") == defense.config.scorer
        ):
            defense.scorer.load_state_dict(ck["scorer"]["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"denoise.init={path!r}: another architecture ({str(e).splitlines()[0]})") from e


def _digest(model: nn.Module) -> str:
    from pssr.evaluation.common import model_fingerprint

    return model_fingerprint(model)


def _params(defense: PSSR) -> list[nn.Parameter]:
    ps = list(defense.generator.parameters()) if defense.generator is not None else []
    if defense.config.use_surgery and getattr(defense.scorer, "needs_training", False):
        ps += list(defense.scorer.parameters())
    return ps


def _resume(
    path: Path, cfg: DenoiseConfig, digest: str, defense: PSSR, opt: Any, gens: dict
) -> tuple[int, list]:
    ck = load_checkpoint(path)
    saved = {k: v for k, v in ck.get("config", {}).items() if k not in _RUNTIME}
    now = {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME}
    if ck.get("format") != STATE_FORMAT or saved != now or ck.get("classifier") != digest:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(
            f"{path} was written by another denoiser run (differing: {', '.join(diff) or 'the classifier'}); "
            "pass resume=False (--no-resume) to start over, or choose another --out"
        )
    if int(ck["epoch"]) > cfg.epochs:
        raise ValueError(
            f"{path} is already {ck['epoch']} epochs in, more than epochs={cfg.epochs}; ask for at least "
            f"{ck['epoch']} epochs, or pass resume=False (--no-resume) to start over"
        )
    defense.generator.load_state_dict(ck["generator"])
    defense.scorer.load_state_dict(ck["scorer"])
    opt.load_state_dict(ck["optimizer"])
    for k, g in gens.items():
        g.set_state(ck["rng"][k].cpu())
    log.info("resuming the denoiser from %s after epoch %d/%d", path, ck["epoch"], cfg.epochs)
    return int(ck["epoch"]), list(ck["history"])


def train_denoiser(
    classifier: nn.Module,
    data: Any,
    config: DenoiseConfig | None = None,
    *,
    out: str | Path | None = None,
    resume: bool = True,
    **overrides: Any,
) -> PSSR:
    """Train PSSR's regenerator (and, with surgery, its learned scorer) as a denoiser for ``classifier``.

    Args:
        classifier: frozen ``nn.Module`` (images in [0, 1] -> logits); needs ``pssr_spec`` (set by
            :func:`pssr.train.classifier.load_classifier`) for the saved checkpoint to rebuild it.
        data: a :class:`pssr.data.Dataset`.
        config: a :class:`DenoiseConfig`; keyword ``overrides`` replace its fields.
        out: folder of ``denoiser-state.pt`` (per epoch, for resume), ``denoiser.pt`` and
            ``denoiser.json``; None keeps nothing on disk.

    Returns the trained :class:`PSSR` in eval mode (``DenoisedClassifier(result)`` is the base model).
    """
    cfg = dataclasses.replace(
        config or DenoiseConfig(), **{k: v for k, v in overrides.items() if v is not None}
    )
    if not isinstance(classifier, nn.Module):
        raise ValueError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
    from pssr.train.pssr_data import split_examples

    device = default_device(cfg.device)
    torch.manual_seed(cfg.seed)  # the weight init of G and the scorer
    defense = PSSR(
        classifier.to(device).eval(), cfg.defense_config(), tuple(data.image_shape), data.num_classes
    )
    if cfg.init:
        _init_from(defense, cfg.init)
    defense.to(device)
    digest = _digest(classifier)
    x_tr, _, x_val, y_val = split_examples(data, cfg)
    params = _params(defense)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    gens = {
        "shuffle": torch.Generator().manual_seed(cfg.seed),
        "noise": torch.Generator().manual_seed(cfg.seed + 1),
    }
    state_path = Path(out) / "denoiser-state.pt" if out is not None else None
    start, history = 0, []
    if state_path is not None and state_path.is_file() and resume:
        start, history = _resume(state_path, cfg, digest, defense, opt, gens)
    n = len(x_tr)
    bs = min(cfg.batch_size, n)
    t_all = time.perf_counter()
    with eval_mode(classifier, requires_grad=False):
        for epoch in range(start, cfg.epochs):
            t0, sums, steps = time.perf_counter(), {}, 0
            defense.generator.train()
            perm = torch.randperm(n, generator=gens["shuffle"])
            beat = Heartbeat(log)  # a log line every PSSR_HEARTBEAT_S seconds (120 by default)
            for i in range(0, n - bs + 1, bs):
                x = x_tr[perm[i : i + bs]].to(device)
                noise = torch.randn(x.shape, generator=gens["noise"]).to(device)
                loss, parts = _loss(defense, cfg, x, noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                beat(steps * bs, "denoiser epoch %d/%d: step %d/%d", epoch + 1, cfg.epochs, steps, n // bs)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
            defense.eval()
            rec = {
                "epoch": epoch + 1,
                **{f"loss_{k}": v / max(1, steps) for k, v in sums.items()},
                "train_seconds": time.perf_counter() - t0,
                **validate(defense, x_val, y_val, cfg.sigma, seed=cfg.seed + 2),
            }
            history.append(rec)
            log.info(
                "denoiser epoch %d/%d: %s",
                epoch + 1,
                cfg.epochs,
                ", ".join(f"{k}={v:.4g}" for k, v in rec.items()),
            )
            if state_path is not None:
                save_checkpoint(
                    state_path,
                    {
                        "format": STATE_FORMAT,
                        "config": asdict(cfg),
                        "classifier": digest,
                        "generator": {k: v.detach().cpu() for k, v in defense.generator.state_dict().items()},
                        "scorer": {k: v.detach().cpu() for k, v in defense.scorer.state_dict().items()},
                        "optimizer": opt.state_dict(),
                        "rng": {k: g.get_state() for k, g in gens.items()},
                        "epoch": epoch + 1,
                        "history": history,
                    },
                )
    defense.eval()
    defense.metrics = {
        "denoiser": {"sigma": cfg.sigma, "config": asdict(cfg), "history": history},
        "final": history[-1] if history else {},
        "data": {"name": data.name, "n_train": n, "n_val": len(x_val)},
        "wall_seconds_this_invocation": time.perf_counter() - t_all,
    }
    if out is not None:
        defense.save(Path(out) / "denoiser.pt")
    return defense
