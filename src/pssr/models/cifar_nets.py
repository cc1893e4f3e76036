"""Classifiers for 32x32 images: fast CPU nets (ResNet-20, VGG-8) and the standard research
architectures (PreAct ResNet-18, He et al. 2016; WideResNet-28-10 / 34-10, Zagoruyko & Komodakis 2016).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pssr.models.common import MODELS, Normalize, default_stats

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _stats(
    in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    if mean is None and std is None and in_channels == 3:
        return list(CIFAR_MEAN), list(CIFAR_STD)
    return default_stats(in_channels, mean, std)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class ResNetCifar(nn.Module):
    """ResNet-6n+2 for CIFAR (He et al. 2016, section 4.2); n=3 gives ResNet-20 (0.27M parameters)."""

    def __init__(
        self,
        n: int = 3,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(*_stats(in_channels, mean, std))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(self.stem(self.normalize(x)))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("resnet20")
def resnet20(num_classes: int = 10, in_channels: int = 3, **kw: object) -> nn.Module:
    return ResNetCifar(3, num_classes, in_channels, **kw)  # type: ignore[arg-type]


@MODELS.register("resnet20-wide")
def resnet20_wide(num_classes: int = 10, in_channels: int = 3, **kw: object) -> nn.Module:
    """ResNet-20 with doubled width (32-64-128 channels, ~1.1M parameters): more accuracy per CPU-second."""
    return ResNetCifar(3, num_classes, in_channels, width=32, **kw)  # type: ignore[arg-type]


class VGG(nn.Module):
    """VGG-style conv stacks with BatchNorm; ``cfg`` lists channels, "M" is a 2x2 max-pool."""

    def __init__(
        self,
        cfg: Sequence[int | str],
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(*_stats(in_channels, mean, std))
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [
                    nn.Conv2d(cin, int(v), 3, padding=1, bias=False),
                    nn.BatchNorm2d(int(v)),
                    nn.ReLU(inplace=True),
                ]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.adaptive_max_pool2d(self.features(self.normalize(x)), 1).flatten(1))


@MODELS.register("vgg8")
def vgg8(num_classes: int = 10, in_channels: int = 3, **kw: object) -> nn.Module:
    """VGG-8: 7 conv layers + 1 linear (64-128-M-256-256-M-512-512-M-512), fast on CPU."""
    return VGG([64, 128, "M", 256, 256, "M", 512, 512, "M", 512], num_classes, in_channels, **kw)  # type: ignore[arg-type]


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        short = self.short(out) if self.short is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + short


class _PreActStack(nn.Module):
    """Normalize -> 3x3 stem -> pre-activation blocks -> BN-ReLU -> global average pool -> linear.

    The trunk shared by :class:`PreActResNet` and :class:`WideResNet`; ``stages`` lists ``(channels,
    blocks)`` per stage, the first block of every stage after the first down-sampling by 2.
    """

    def __init__(
        self,
        block: Callable[[int, int, int], nn.Module],
        stem_width: int,
        stages: Sequence[tuple[int, int]],
        num_classes: int,
        in_channels: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(*_stats(in_channels, mean, std))
        self.stem = nn.Conv2d(in_channels, stem_width, 3, 1, 1, bias=False)
        layers, cin = [], stem_width
        for i, (cout, nb) in enumerate(stages):
            for j in range(nb):
                layers.append(block(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn(self.layers(self.stem(self.normalize(x)))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class PreActResNet(_PreActStack):
    """Pre-activation ResNet (He et al., ECCV 2016); [2, 2, 2, 2] is PreAct ResNet-18 (11M parameters)."""

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            PreActBlock, 64, list(zip((64, 128, 256, 512), blocks)), num_classes, in_channels, mean, std
        )


@MODELS.register("preact-resnet18")
def preact_resnet18(num_classes: int = 10, in_channels: int = 3, **kw: object) -> nn.Module:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels, **kw)  # type: ignore[arg-type]


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.short = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        short = self.short(o) if self.short is not None else x
        out = self.conv1(o)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        return self.conv2(out) + short


class WideResNet(_PreActStack):
    """WideResNet-depth-k (Zagoruyko & Komodakis, BMVC 2016): 28-10 has 36.5M parameters."""

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n+4, got depth={depth}")
        n = (depth - 4) // 6
        super().__init__(
            lambda cin, cout, stride: WideBlock(cin, cout, stride, dropout),
            16,
            [(16 * widen, n), (32 * widen, n), (64 * widen, n)],
            num_classes,
            in_channels,
            mean,
            std,
        )


@MODELS.register("wrn-28-10")
def wrn_28_10(num_classes: int = 10, in_channels: int = 3, **kw: object) -> nn.Module:
    return WideResNet(28, 10, num_classes, in_channels, **kw)  # type: ignore[arg-type]


@MODELS.register("wrn-34-10")
def wrn_34_10(num_classes: int = 10, in_channels: int = 3, **kw: object) -> nn.Module:
    return WideResNet(34, 10, num_classes, in_channels, **kw)  # type: ignore[arg-type]
