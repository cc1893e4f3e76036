"""Shared pieces of the classifiers: the registry, the normalization layer, the input-shape check."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pssr.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the model's first layer, so callers pass pixels in [0, 1].

    pssr feeds every classifier images in [0, 1] (attacks and budgets are defined there); a model
    trained on normalized inputs is wrapped: ``nn.Sequential(Normalize(mean, std), model)``.
    ``mean`` and ``std``: one value per channel, or one value for every channel.
    """

    def __init__(self, mean: float | Sequence[float], std: float | Sequence[float]) -> None:
        super().__init__()
        mean = [float(mean)] if isinstance(mean, (int, float)) else [float(m) for m in mean]
        std = [float(std)] if isinstance(std, (int, float)) else [float(s) for s in std]
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if not mean:
            raise ValueError("mean and std need at least one value")
        if any(not math.isfinite(s) or s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        # a 3-value mean would silently broadcast a gray image into 3 channels
        if self.channels > 1 and (x.ndim != 4 or x.shape[1] != self.channels):
            raise ValueError(
                f"Normalize has {self.channels} channels (mean/std), the input is {tuple(x.shape)}; "
                f"it expects (N, {self.channels}, H, W)"
            )
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={[round(v, 6) for v in self.mean.flatten().tolist()]}, std={[round(v, 6) for v in self.std.flatten().tolist()]}"


def default_stats(
    in_channels: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[list[float], list[float]]:
    if mean is None:
        mean = [0.5] * in_channels
    if std is None:
        std = [0.25] * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(
            f"mean/std need {in_channels} values (one per channel), got {list(mean)} / {list(std)}"
        )
    return list(mean), list(std)


# ----------------------------------------------------------------------------------------------
# Does a model take a dataset's images?
# ----------------------------------------------------------------------------------------------
def declared_image_shape(model: nn.Module) -> tuple[int, int, int] | None:
    """The (C, H, W) a model says it takes: the ``image_shape`` attribute of it or of a submodule
    (a PSSR defense has one; pssr sets it on the classifiers it rebuilds from checkpoints)."""
    for m in model.modules():
        shape = getattr(m, "image_shape", None)
        if isinstance(shape, (tuple, list)) and len(shape) == 3 and all(isinstance(s, int) for s in shape):
            return (int(shape[0]), int(shape[1]), int(shape[2]))
    return None


def expected_input(model: nn.Module) -> str | None:
    """What the first layers of ``model`` imply about its input, in words (None when unknown)."""
    declared = declared_image_shape(model)
    if declared is not None:
        return f"(C, H, W) = {declared}"
    channels = None
    for m in model.modules():
        if isinstance(m, Normalize) and m.channels > 1:
            channels = m.channels
        elif isinstance(m, nn.Conv2d):
            return f"{m.in_channels}-channel images"
        elif isinstance(m, nn.Linear):  # a flattening model: the first layer fixes C*H*W
            n = m.in_features
            for c in (channels,) if channels else (1, 3):
                side = math.isqrt(n // c)
                if side * side * c == n:
                    return f"{n} input values (C*H*W, e.g. {c}x{side}x{side})"
            return f"{n} input values (C*H*W)"
    return None


def check_input_shape(model: nn.Module, shape: Sequence[int], what: str = "the dataset's images") -> int:
    """One forward pass of ``model`` on a zero image of ``shape`` (C, H, W); the number of logits.

    A ValueError in one line, naming the model's expected input when it is known and the images'
    shape, when the model declares another shape, fails on these images (a shape RuntimeError from
    torch), or does not return logits (N, classes). ``what`` names the images in the message. The
    model's train/eval modes are restored.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) of positive ints, got {shape}")
    declared = declared_image_shape(model)
    if declared is not None and declared != shape:
        raise ValueError(
            f"the model takes images of (C, H, W) = {declared} but {what} are {shape}; use a model "
            "trained on images of this size and channel count"
        )
    ref = next(iter(model.parameters()), None)
    ref = ref if ref is not None else next(iter(model.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # BatchNorm in train mode refuses a batch of one
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape, device=device, dtype=dtype))
    except (RuntimeError, ValueError) as e:
        hint = expected_input(model)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"the model does not take {what} ((C, H, W) = {shape})"
            + (f": it expects {hint}" if hint else "")
            + f" ({first}); use a model built for this image size and channel count"
        ) from e
    finally:
        for m, t in modes:
            m.training = t
    if not isinstance(out, Tensor) or out.ndim != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape (N, classes), got {got} for one image")
    return int(out.shape[1])


# ----------------------------------------------------------------------------------------------
# Weights of a model of your own
# ----------------------------------------------------------------------------------------------
def describe_model(model: nn.Module) -> str:
    """``module.Class``, or ``nn.Sequential(A, module.B)`` for a wrapper (for messages)."""

    def name(m: nn.Module) -> str:
        cls = type(m)
        local = cls.__module__.startswith(("torch.", "pssr."))
        return cls.__qualname__ if local else f"{cls.__module__}.{cls.__qualname__}"

    if isinstance(model, nn.Sequential):
        return f"nn.Sequential({', '.join(name(m) for m in model)})"
    return name(model)


def load_matching_weights(
    model: nn.Module, state_dict: dict[str, Tensor], what: str = "the saved weights"
) -> None:
    """``model.load_state_dict(state_dict)`` after checking that every parameter and buffer name and
    shape agree: a one-line ValueError naming the first difference otherwise (``what`` names the
    source of ``state_dict`` in it)."""
    mine = model.state_dict()
    here = f"the model given ({describe_model(model)})"

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing, extra = sorted(set(state_dict) - set(mine)), sorted(set(mine) - set(state_dict))
    if missing or extra:
        parts = ([f"{some(missing)} missing in it"] if missing else []) + (
            [f"{some(extra)} not saved"] if extra else []
        )
        raise ValueError(
            f"{here} does not match {what}: {'; '.join(parts)}; pass a model of the saved architecture"
        )
    bad = [k for k in state_dict if tuple(state_dict[k].shape) != tuple(mine[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{here} does not match {what}: {k} is {tuple(mine[k].shape)} in it, {tuple(state_dict[k].shape)} "
            "saved" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "") + "; pass a model of the saved "
            "architecture"
        )
    model.load_state_dict(state_dict)
