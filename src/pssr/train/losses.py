"""Losses of PSSR training (arXiv 2402.00304; our reading in shared/docs/paper-notes.md, items 1-4).

* pixel consistency: L1 between the restored and the clean image, on the removed pixels and on the
  whole image (``pixel_l1``);
* semantic consistency ("alignment"): ``KL(f(clean) || f(restored))`` on the frozen classifier's
  logits (``kl_to_target``) and optionally the MSE of its features at a named layer
  (:class:`FeatureTap`);
* cross-entropy of the classifier on restored images;
* the learned scorer's loss: a softmax over the H*W pixels of each image against the target share
  of the attack (``scorer_ce``), a listwise ranking loss suited to a top-k mask;
* adversarial R-drop (after R-Drop, Liang et al., NeurIPS 2021): the clean image and its
  adversarial version both go through surgery + regeneration and the symmetric KL between the
  classifier's predictions on the two restorations is minimized (``symmetric_kl``), with CE on both;
* R-Drop proper (``rdrop_drop > 0``): the adversarial image goes through surgery + regeneration
  twice, each pass with its own random extra pixel drop on top of the scorer's mask (the stochastic
  sub-model R-Drop regularizes), symmetric KL between the two passes and CE on both
  (:func:`random_drops` draws the drops).

Shapes: images (N, C, H, W); masks (N, 1, H, W); logits (N, K). Every loss returns a scalar mean.

:func:`pssr_loss` puts them together into the loss of one training batch (:func:`tapped_loss` with
the feature tap hooked in); under torch.distributed each rank computes its :class:`Share` of it.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr import distributed as D
from pssr.defense.pssr import PSSR, PSSRConfig
from pssr.defense.surgery import MASK_MODES
from pssr.utils import autocast_context


def pixel_l1(restored: Tensor, clean: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean |restored - clean| over the whole image, or over the masked pixels when ``mask`` is given."""
    err = (restored.float() - clean.float()).abs()  # (N, C, H, W)
    if mask is None:
        return err.mean()
    m = mask.float().expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1.0)


def kl_to_target(target_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(softmax(target) || softmax(logits))`` averaged over the batch; ``target`` gets no gradient."""
    t = F.log_softmax(target_logits.detach().float(), dim=1)
    s = F.log_softmax(logits.float(), dim=1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean")


def symmetric_kl(a_logits: Tensor, b_logits: Tensor) -> Tensor:
    """``(KL(p_a || p_b) + KL(p_b || p_a)) / 2``, gradients to both sides (R-Drop)."""
    la, lb = F.log_softmax(a_logits.float(), dim=1), F.log_softmax(b_logits.float(), dim=1)
    return 0.5 * (
        F.kl_div(lb, la, log_target=True, reduction="batchmean")
        + F.kl_div(la, lb, log_target=True, reduction="batchmean")
    )


def scorer_ce(scores: Tensor, target_share: Tensor) -> Tensor:
    """Pixel-wise softmax cross-entropy: ``-sum_p t_p log softmax(s)_p`` per image, batch mean."""
    logp = F.log_softmax(scores.float().flatten(1), dim=1)  # (N, H*W)
    return -(target_share.float().flatten(1) * logp).sum(1).mean()


@torch.no_grad()
def entropy(target_share: Tensor) -> Tensor:
    """Entropy ``-sum_p t_p log t_p`` of each image's target distribution over pixels, batch mean: the
    minimum of :func:`scorer_ce` for that target."""
    t = target_share.float().flatten(1)
    return -(t * t.clamp_min(1e-30).log()).sum(1).mean()


def random_drops(n: int, shape: tuple[int, int], share: float, seed: int) -> Tensor:
    """(2, n, 1, H, W) masks in {0, 1}, each removing exactly ``round(share * H * W)`` pixels per image
    at random: the two R-Drop passes' extra drops, seeded (drawn for a whole global batch so that
    every example's drops do not depend on how the batch is sharded)."""
    h, w = shape
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(2 * n, 1, h, w, generator=g)
    return MASK_MODES["topk"](scores, share).view(2, n, 1, h, w)


def rdrop_drops(
    cfg: PSSRConfig, n: int, shape: tuple[int, ...], epoch: int, batch: int, rows: range
) -> Tensor | None:
    """This rank's ``rows`` of the global batch's R-Drop drops (:func:`random_drops`, seeded by the
    run's seed, the epoch and the batch index); None when ``cfg.rdrop_drop`` is 0."""
    if cfg.rdrop_drop <= 0:
        return None
    seed = cfg.seed * 104_729 + epoch * 100_003 + batch
    return random_drops(n, (int(shape[0]), int(shape[1])), cfg.rdrop_drop, seed)[:, rows.start : rows.stop]


class FeatureTap:
    """Records the output of ``model.<layer>`` on every forward (for the feature-MSE loss).

    ``with FeatureTap(model, "features") as tap: model(x); feats = tap.pop()``.
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        modules = dict(model.named_modules())
        if layer not in modules:
            raise ValueError(
                f"feature_layer={layer!r} is not a submodule of the classifier; "
                f"choose from {', '.join(n for n in modules if n) or '(none)'}"
            )
        self.module = modules[layer]
        self.outputs: list[Tensor] = []
        self.handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> FeatureTap:
        self.handle = self.module.register_forward_hook(lambda _m, _i, out: self.outputs.append(out))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()

    def pop(self) -> Tensor:
        if not self.outputs:
            raise RuntimeError("FeatureTap: no forward pass recorded")
        return self.outputs.pop()


def feature_mse(target: Tensor, feats: Tensor) -> Tensor:
    return F.mse_loss(feats.float(), target.detach().float())


@dataclasses.dataclass(frozen=True)
class Share:
    """This rank's part of a global batch under torch.distributed.

    Each rank backpropagates its *contribution* to the loss of the whole global batch: batch means
    scaled by ``frac`` (= examples here / examples in the global batch) and the masked pixel L1 summed
    here but divided by the number of masked values of the whole global batch. The sum of the ranks'
    gradients (:func:`pssr.distributed.all_reduce_grads`) is then the one-process gradient on the
    global batch, also for uneven shares (a ragged last batch) and for threshold masks, whose size
    varies per image.
    """

    info: D.DistInfo
    frac: float

    def mask_totals(self, local: Tensor) -> Tensor:
        """(2,) sums over ranks of the adversarial and the clean masks' values. Every rank calls it once
        per step -- from :func:`pssr_loss`, or directly when its share of the batch is empty."""
        return D.all_reduce_sum(local, self.info)


def _masks(
    defense: PSSR, cfg: PSSRConfig, x: Tensor, x_adv: Tensor, target: Tensor | None
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """(mask of x_adv, mask of x, the learned scorer's loss and its floor, {} for another scorer)."""
    clf = defense.classifier

    def mask_of(scores: Tensor) -> Tensor:
        arg = cfg.ratio if cfg.mask_mode == "topk" else cfg.threshold
        return MASK_MODES[cfg.mask_mode](scores.detach(), arg)

    if not cfg.use_surgery:
        zeros = torch.zeros(x.shape[0], 1, *x.shape[2:], device=x.device)
        return zeros, zeros, {}
    if not getattr(defense.scorer, "needs_training", False):
        with torch.no_grad():
            return mask_of(defense.scorer(x_adv, clf)), mask_of(defense.scorer(x, clf)), {}
    s_adv = defense.scorer(x_adv, clf)  # (N, 1, H, W), with grad
    with torch.no_grad():
        m_clean = mask_of(defense.scorer(x, clf))
    # the floor is logged, not optimized: the lowest value the scorer loss can reach (the target's
    # entropy); loss_scorer - loss_scorer_floor is the KL the scorer has left to learn
    losses = {
        "scorer": cfg.w_scorer * scorer_ce(s_adv, target),
        "scorer_floor": cfg.w_scorer * entropy(target),
    }
    return mask_of(s_adv), m_clean, losses


def pssr_loss(
    defense: PSSR,
    cfg: PSSRConfig,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    target: Tensor | None,
    tap: FeatureTap | None,
    share: Share | None = None,
    drops: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The training loss on one batch and its parts (for the log). ``share``: under torch.distributed,
    this rank's contribution to the global batch's loss (see :class:`Share`). ``drops``: (2, N, 1, H,
    W) random extra removals of the two R-Drop passes (:func:`random_drops`), when ``rdrop_drop > 0``."""
    clf = defense.classifier
    parts: dict[str, Tensor] = {}
    with torch.no_grad():
        logits_clean = clf(x)
        feat_clean = tap.pop() if tap is not None else None

    def mean(t: Tensor) -> Tensor:  # a batch mean; under torch.distributed this rank's part of the global one
        return t if share is None else t * share.frac

    def masked_l1(r: Tensor, m: Tensor, which: int) -> Tensor:
        if share is None:
            return pixel_l1(r, x, m)
        err = (r.float() - x.float()).abs()  # (n, C, H, W)
        return (err * m.float().expand_as(err)).sum() / totals[which].clamp_min(1.0)

    m_adv, m_clean, scorer_parts = _masks(defense, cfg, x, x_adv, target)
    learned = bool(scorer_parts)
    if learned:
        parts["scorer"] = mean(scorer_parts["scorer"])
        floor = mean(scorer_parts["scorer_floor"])

    m_scorer = m_adv
    if drops is not None:  # R-Drop: pass 1 removes the scorer's mask and its own random drop
        m_adv = torch.maximum(m_scorer, drops[0].to(m_scorer))
    if share is not None:  # masked values of the whole global batch, (2,): one collective per step
        totals = share.mask_totals(
            torch.stack([m_adv.float().expand_as(x).sum(), m_clean.float().expand_as(x).sum()])
        )

    if defense.generator is not None:
        with autocast_context(x.device, cfg.bf16):
            r_adv = defense.restore(x_adv, m_adv)
            logits_adv = clf(r_adv)
            feat_adv = tap.pop() if tap is not None else None
        parts["pix_mask"] = cfg.w_pixel_mask * masked_l1(r_adv, m_adv, 0)
        parts["pix_full"] = cfg.w_pixel_full * mean(pixel_l1(r_adv, x))
        parts["kl"] = cfg.w_semantic_kl * mean(kl_to_target(logits_clean, logits_adv))
        parts["ce"] = cfg.w_ce * mean(F.cross_entropy(logits_adv.float(), y))
        if tap is not None:
            parts["feat"] = cfg.w_semantic_feat * mean(feature_mse(feat_clean, feat_adv))
        if drops is not None:  # pass 2: the same adversarial input, another random drop
            m2 = torch.maximum(m_scorer, drops[1].to(m_scorer))
            with autocast_context(x.device, cfg.bf16):
                logits_adv2 = clf(defense.restore(x_adv, m2))
                if tap is not None:
                    tap.pop()
            parts["ce"] = 0.5 * (parts["ce"] + cfg.w_ce * mean(F.cross_entropy(logits_adv2.float(), y)))
            parts["rdrop_passes"] = cfg.w_rdrop * mean(symmetric_kl(logits_adv, logits_adv2))
        if cfg.w_rdrop > 0:
            with autocast_context(x.device, cfg.bf16):
                r_clean = defense.restore(x, m_clean)
                logits_rc = clf(r_clean)
                if tap is not None:
                    tap.pop()
            parts["rdrop"] = cfg.w_rdrop * mean(
                symmetric_kl(logits_rc, logits_adv) + F.cross_entropy(logits_rc.float(), y)
            )
            parts["pix_clean"] = cfg.w_pixel_mask * masked_l1(r_clean, m_clean, 1) + cfg.w_pixel_full * mean(
                pixel_l1(r_clean, x)
            )
    if not parts:
        return torch.zeros((), device=x.device), {}
    total = sum(parts.values())
    logged = {k: float(v.detach()) for k, v in parts.items()}
    if learned:
        logged["scorer_floor"] = float(floor)
    return total, logged


def tapped_loss(
    defense: PSSR,
    cfg: PSSRConfig,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    target: Tensor | None,
    tap: FeatureTap | None,
    share: Share | None = None,
    drops: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """:func:`pssr_loss` with the feature tap (if any) hooked in for this step only and emptied after."""
    if tap is None:
        return pssr_loss(defense, cfg, x, y, x_adv, target, None, share, drops)
    with tap:
        try:
            return pssr_loss(defense, cfg, x, y, x_adv, target, tap, share, drops)
        finally:
            tap.outputs.clear()
