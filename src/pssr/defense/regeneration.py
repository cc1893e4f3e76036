"""Semantic Regeneration: the conditional alignment extrapolator ``G(x_holed, mask)``.

PSSR (Fu, Zhou, Ma, Zhang, "Invariance-powered Trustworthy Defense via Remove Then Restore",
arXiv 2402.00304) restores the discriminative content of the pixels removed by Pixel Surgery with
a module built on a *conditional alignment extrapolator*. The paper gives no architecture; our
reading (shared/docs/paper-notes.md, item 3):

* ``G`` is a small U-Net-class encoder-decoder. Its input is the holed image concatenated with the
  removal mask, ``[x_holed, m]`` (N, C+1, H, W), so it knows which pixels it must extrapolate and
  which are context. "Conditional" is the mask/context conditioning; optionally (``condition=
  "logits"``) it is also conditioned on the frozen classifier's logits of the holed image through
  a FiLM layer (scale and shift of the bottleneck features), the "semantic" option of the notes.
* The output is ``sigmoid(.)`` in [0, 1], (N, C, H, W). :func:`compose` writes it back **only**
  where ``m == 1``; kept pixels are copied bit-for-bit with ``torch.where``.
* "Alignment" is the training objective (pixel and semantic consistency with the clean image,
  see ``pssr.train.losses``), not a layer.

No normalization layers: BatchNorm would make outputs depend on the batch and on train/eval mode,
and the generator must be deterministic for a fixed input. Sizes need not be divisible by
``2**depth``: inputs are padded (replicate) and the output is cropped back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONDITIONS = ("none", "logits")


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class UNet(nn.Module):
    """A plain U-Net: ``depth`` 2x down-samplings, channels ``width * 2**level``, skip connections.

    ``forward(x) -> (N, out_channels, H, W)`` raw (unbounded) outputs. ``cond_dim > 0`` adds a FiLM
    layer on the bottleneck driven by a (N, cond_dim) vector.
    """

    def __init__(
        self, in_channels: int, out_channels: int, width: int = 32, depth: int = 2, cond_dim: int = 0
    ) -> None:
        super().__init__()
        for name, v, lo in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("width", width, 1),
            ("depth", depth, 0),
            ("cond_dim", cond_dim, 0),
        ):
            if not isinstance(v, int) or v < lo:
                raise ValueError(f"UNet: {name} must be an int >= {lo}, got {v!r}")
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_block(in_channels, chans[0])] + [_block(chans[i - 1], chans[i]) for i in range(1, depth + 1)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2) for i in range(depth, 0, -1)]
        )
        self.dec = nn.ModuleList([_block(2 * chans[i - 1], chans[i - 1]) for i in range(depth, 0, -1)])
        self.head = nn.Conv2d(chans[0], out_channels, 1)
        self.film = nn.Linear(cond_dim, 2 * chans[-1]) if cond_dim > 0 else None
        if self.film is not None:  # start as the identity modulation
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h, w = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        skips = []
        for i, blk in enumerate(self.down):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        if self.film is not None:
            if cond is None:
                raise ValueError("UNet built with cond_dim > 0 needs a conditioning vector")
            gamma, beta = self.film(cond).chunk(2, dim=1)  # (N, C_bottleneck) each
            x = x * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]


class Regenerator(nn.Module):
    """``G(x_holed, mask[, cond]) -> (N, C, H, W)`` in [0, 1].

    Args:
        channels: image channels C.
        width: channels of the first U-Net level (doubles per level).
        depth: number of 2x down-samplings.
        condition: "none" or "logits" (FiLM on the classifier's logits of the holed image).
        num_classes: size of the logits vector when ``condition == "logits"``.
    """

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        depth: int = 2,
        condition: str = "none",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"Regenerator: condition={condition!r} not supported; choose from {CONDITIONS}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Regenerator: num_classes must be an int >= 2, got {num_classes!r}")
        self.channels, self.condition = channels, condition
        self.kwargs = {
            "channels": channels,
            "width": width,
            "depth": depth,
            "condition": condition,
            "num_classes": num_classes,
        }
        self.net = UNet(
            channels + 1,
            channels,
            width=width,
            depth=depth,
            cond_dim=num_classes if condition == "logits" else 0,
        )

    def forward(self, x_holed: Tensor, mask: Tensor, cond: Tensor | None = None) -> Tensor:
        if x_holed.ndim != 4 or x_holed.shape[1] != self.channels:
            raise ValueError(
                f"Regenerator: x_holed must be (N, {self.channels}, H, W), got {tuple(x_holed.shape)}"
            )
        if mask.shape != (x_holed.shape[0], 1, *x_holed.shape[2:]):
            raise ValueError(
                f"Regenerator: mask must be (N, 1, H, W) matching x_holed, got {tuple(mask.shape)}"
            )
        if self.condition == "logits":
            if cond is None:
                raise ValueError("Regenerator(condition='logits') needs the classifier logits as cond")
            cond = torch.softmax(cond.float(), dim=1)  # bounded conditioning, (N, K)
        else:
            cond = None
        return torch.sigmoid(self.net(torch.cat([x_holed, mask.to(x_holed.dtype)], dim=1), cond))


def compose(x: Tensor, generated: Tensor, mask: Tensor) -> Tensor:
    """``generated`` where ``mask`` is 1, ``x`` elsewhere (bit-identical), in ``x``'s dtype.

    Shapes: x (N, C, H, W), generated (N, C, H, W), mask (N, 1, H, W) with values in {0, 1}.
    Gradients flow to ``generated`` on the mask and to ``x`` off the mask.
    """
    return torch.where(mask.bool(), generated.to(x.dtype), x)
