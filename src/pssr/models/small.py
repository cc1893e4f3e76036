"""Small CNNs for 28x28 (and 8x8) gray images."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from pssr.models.common import MODELS, Normalize, default_stats


class SmallCNN(nn.Module):
    """conv(32)-conv(32)-pool-conv(64)-conv(64)-pool-fc(256)-fc(classes), BatchNorm after each conv.

    Works for any input of at least 8x8 (adaptive pooling before the classifier).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        width: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        mean, std = default_stats(in_channels, mean, std)
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            *block(in_channels, w),
            *block(w, w),
            nn.MaxPool2d(2),
            *block(w, 2 * w),
            *block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * w * 16, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(0.3),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(self.normalize(x)))


@MODELS.register("small-cnn")
def small_cnn(num_classes: int = 10, in_channels: int = 1, **kw: object) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, **kw)  # type: ignore[arg-type]


@MODELS.register("tiny-cnn")
def tiny_cnn(num_classes: int = 10, in_channels: int = 1, **kw: object) -> nn.Module:
    """A narrower SmallCNN (width 16) for tests and the embedded digits demo."""
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, width=16, **kw)  # type: ignore[arg-type]
