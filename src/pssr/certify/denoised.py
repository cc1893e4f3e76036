"""Denoised smoothing with PSSR's regenerator as the denoiser: ``f(D(x + delta))``.

Salman, Sun, Yang, Kapoor and Kolter, "Denoised Smoothing: A Provable Defense for Pretrained
Classifiers" (NeurIPS 2020, arXiv 2003.01908) put a Gaussian denoiser ``D`` in front of a frozen,
off-the-shelf classifier ``f`` and smooth the composition; Carlini et al. (ICLR 2023, arXiv
2206.10550) do the same with a diffusion model. Here ``D`` is a PSSR purifier (arXiv 2402.00304):
a :class:`pssr.defense.pssr.PSSR` trained on noisy images by :mod:`pssr.train.denoise` (or any PSSR
checkpoint, used as it is). Two readings of "the regenerator as the denoiser":

* without surgery (``use_surgery=False``): ``G`` sees the whole noisy image (with an all-zero mask
  channel) and re-renders every pixel;
* with surgery: the scorer marks the ``ratio`` most suspicious noisy pixels, they are replaced by
  the fill, and ``G`` re-renders the image from what is left (``restore_scope="full"``; with
  ``"mask"`` the kept pixels would reach the classifier still noisy).

Unlike ``PSSR.forward``, which rejects inputs outside [0, 1] (an attack's input is an image), this
wrapper takes the unclipped ``x + delta`` of randomized smoothing, as Salman et al.'s denoisers do.
The mask is computed without gradient (a top-k step), as in ``PSSR.purify``.
"""

from __future__ import annotations

from torch import Tensor, nn

from pssr.defense.pssr import PSSR
from pssr.defense.surgery import MASK_MODES
from pssr.utils import eval_mode


class DenoisedClassifier(nn.Module):
    """``forward(x) = defense.classifier(denoise(x))`` for any real-valued ``x`` of the defense's shape.

    Args:
        defense: a :class:`PSSR` (its scorer, generator, classifier and config are used as they are).
    """

    def __init__(self, defense: PSSR) -> None:
        super().__init__()
        if not isinstance(defense, PSSR):
            raise ValueError(f"defense must be a pssr.defense.PSSR, got {type(defense).__name__}")
        self.defense = defense

    @property
    def classifier(self) -> nn.Module:
        return self.defense.classifier

    def mask(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) removal mask of the noisy ``x`` (all zeros without surgery)."""
        d, cfg = self.defense, self.defense.config
        zeros = x.new_zeros(x.shape[0], 1, *x.shape[2:])
        if not cfg.use_surgery:
            return zeros
        with eval_mode(d.scorer, d.classifier):
            scores = d.scorer(x.float().detach(), d.classifier).detach().float()  # (N, 1, H, W)
        arg = cfg.ratio if cfg.mask_mode == "topk" else cfg.threshold
        return MASK_MODES[cfg.mask_mode](scores, arg).to(x.device)

    def denoise(self, x: Tensor) -> Tensor:
        """The restored images (N, C, H, W), in [0, 1] where ``G`` writes (its output is a sigmoid)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.defense.image_shape:
            raise ValueError(
                f"x must be (N, {', '.join(map(str, self.defense.image_shape))}), got {tuple(x.shape)}"
            )
        return self.defense.restore(x, self.mask(x))

    def forward(self, x: Tensor) -> Tensor:
        with eval_mode(self.defense.classifier):
            return self.defense.classifier(self.denoise(x).float())
