"""An attack written against PSSR's own parts: PGD that also steers Pixel Surgery (issue 18).

Full-gradient PGD (``pgd-full``) differentiates the whole defense with the removal mask held fixed:
the top-k choice of the pixels to remove has no gradient, so the attacker never learns how to keep
its perturbation out of the removed set. ``pgd-surgery-aware`` gives the mask one: its gradients
come from a *relaxed* surgery in which each pixel is removed in proportion to
``sigmoid((s - t) / (T * std(s)))``, ``s`` the scorer's (differentiable) scores of the current input,
``t`` the midpoint between the k-th and (k+1)-th largest score (the hard top-k threshold) and ``T`` a
temperature; the removed share is filled, regenerated and classified as in the defense. The loss is
thus pushed both through the regenerator and the classifier and towards moving the scorer's choice
(keeping perturbed pixels from removal, or removing clean ones). The forward value of the view is the
defense's own output, bit for bit, so every iterate is judged on the real defense (the base class
checks the final points on it too). The same idea as BPDA's differentiable surrogate (Athalye et al.,
ICML 2018), applied to the one step that full-gradient PGD cannot see through.

On a model without top-k Pixel Surgery (a plain classifier, regeneration-only PSSR, a baseline) the
view is the model itself and the attack is ``pgd-full``.

Example::

    atk = create_attack("pgd-surgery-aware", defense, eps=0.1, steps=100)
    x_adv = atk(x, y)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pssr.attacks.adaptive import straight_through
from pssr.attacks.base import ATTACKS
from pssr.attacks.pgd import PGD
from pssr.utils import eval_mode


def _has_topk_surgery(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    return (
        getattr(model, "scorer", None) is not None
        and getattr(model, "generator", None) is not None
        and getattr(cfg, "use_surgery", False)
        and getattr(cfg, "mask_mode", None) == "topk"
    )


class SurgeryAwareView(nn.Module):
    """Forward: ``defense(x)`` exactly. Backward: through a relaxed (sigmoid) top-k Pixel Surgery."""

    def __init__(self, defense: nn.Module, temperature: float = 0.1) -> None:
        super().__init__()
        if not _has_topk_surgery(defense):
            raise ValueError(
                f"{type(defense).__name__} has no top-k Pixel Surgery to relax; use pgd-full on it"
            )
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.defense = defense
        self.temperature = float(temperature)

    def soft_mask(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) in (0, 1): each pixel's relaxed share of removal, differentiable in ``x``."""
        from pssr.defense.surgery import num_removed

        d = self.defense
        with eval_mode(d.scorer, d.classifier):
            s = d.scorer(x.float(), d.classifier).float()  # (N, 1, H, W)
        n, _, h, w = s.shape
        k = num_removed(d.config.ratio, h, w)
        if k == 0 or k == h * w:  # nothing or everything removed: the hard mask has no boundary to move
            return torch.full_like(s, float(k > 0))
        flat = s.detach().flatten(1)
        top = flat.topk(k + 1, dim=1).values  # (N, k + 1), descending
        thr = (top[:, k - 1] + top[:, k]) / 2  # between the last removed and the first kept score
        scale = flat.std(1).clamp_min(1e-12) * self.temperature
        return torch.sigmoid((s - thr.view(n, 1, 1, 1)) / scale.view(n, 1, 1, 1))

    def relaxed(self, x: Tensor) -> Tensor:
        """The defense's logits with the relaxed mask (a surrogate for the gradient only)."""
        from pssr.defense.surgery import FILLS

        d, cfg = self.defense, self.defense.config
        xf = x.float()
        m = self.soft_mask(xf)
        fill = FILLS.get(cfg.fill)(xf, d.mask(x).to(xf.dtype), value=cfg.fill_value)
        holed = xf * (1 - m) + fill * m
        with eval_mode(d.generator, d.classifier):
            cond = d.classifier(holed) if cfg.condition == "logits" else None
            gen = d.generator(holed, m, cond)
            out = gen if cfg.restore_scope == "full" else xf * (1 - m) + gen * m
            return d.classifier(out)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            hard = self.defense(x)
        return straight_through(self.relaxed(x), hard)


def surgery_aware_view(model: nn.Module, temperature: float = 0.1) -> nn.Module:
    """:class:`SurgeryAwareView` of a PSSR defense with top-k surgery, else ``model`` itself."""
    return SurgeryAwareView(model, temperature) if _has_topk_surgery(model) else model


@ATTACKS.register("pgd-surgery-aware")
class PGDSurgeryAware(PGD):
    """PGD whose gradients also move Pixel Surgery's choice (see the module docstring).

    Arguments as :class:`~pssr.attacks.pgd.PGD` (no ``grad_model``), plus ``temperature`` of the
    relaxed mask (in units of the scores' standard deviation per image).

    Example::

        atk = PGDSurgeryAware(defense, eps=0.1, steps=100, restarts=5)
        x_adv = atk(x, y)
    """

    name = "pgd-surgery-aware"

    def __init__(
        self,
        model: nn.Module,
        eps: float,
        norm: str = "linf",
        seed: int = 0,
        *,
        steps: int = 100,
        alpha: float | None = None,
        restarts: int = 1,
        random_start: bool = True,
        loss: str = "ce",
        early_stop: bool = True,
        temperature: float = 0.1,
    ) -> None:
        super().__init__(
            model,
            eps,
            norm,
            seed,
            steps=steps,
            alpha=alpha,
            restarts=restarts,
            random_start=random_start,
            loss=loss,
            early_stop=early_stop,
            grad_model=surgery_aware_view(model, temperature),
        )
