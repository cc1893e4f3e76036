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
  classifier's predictions on the two restorations is minimized (``symmetric_kl``), with CE on both.

Shapes: images (N, C, H, W); masks (N, 1, H, W); logits (N, K). Every loss returns a scalar mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


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
