"""Tests generated from the model registry: output shape, finite outputs, a gradient for every parameter."""

from __future__ import annotations

import pytest
import torch

from pssr.models import create_model, list_models

# The big research nets take seconds per backward pass on a CPU: their gradient test is marked slow
# (it still runs in CI) and uses a single pair of images.
BIG = {"wrn-28-10", "wrn-34-10", "preact-resnet18"}


def _input_for(name: str) -> tuple[int, int]:
    """(in_channels, size) the model is meant for: gray 28x28 for the small CNNs, RGB 32x32 otherwise."""
    return (1, 28) if name in ("small-cnn", "tiny-cnn") else (3, 32)


def test_registry_lists_the_documented_models():
    expected = {
        "tiny-cnn",
        "small-cnn",
        "resnet20",
        "resnet20-wide",
        "vgg8",
        "preact-resnet18",
        "wrn-28-10",
        "wrn-34-10",
    }
    assert expected <= set(list_models())
    with pytest.raises(ValueError, match="unknown model 'nope'.*small-cnn"):
        create_model("nope")


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_finite(name):
    c, s = _input_for(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, in_channels=c).eval()
    with torch.no_grad():
        out = model(torch.rand(2, c, s, s))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def _grad_check(name: str) -> None:
    c, s = _input_for(name)
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, in_channels=c).train()
    x = torch.rand(2, c, s, s)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 3]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients in {bad[:5]}"
    # the input gradient exists too (attacks need it) and is not identically zero
    x = x.clone().requires_grad_(True)
    model.eval()
    (g,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
    assert g.abs().sum() > 0


@pytest.mark.parametrize("name", [n for n in list_models() if n not in BIG])
def test_every_parameter_gets_a_gradient(name):
    _grad_check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BIG & set(list_models())))
def test_every_parameter_gets_a_gradient_big(name):
    _grad_check(name)


@pytest.mark.parametrize("name", ["tiny-cnn", "resnet20"])
def test_normalization_is_inside_and_inputs_are_pixels(name):
    """The model's first layer normalizes: it carries mean/std buffers and the state dict holds them."""
    c, _ = _input_for(name)
    model = create_model(name, in_channels=c)
    keys = model.state_dict().keys()
    assert any(k.endswith("normalize.mean") for k in keys) and any(k.endswith("normalize.std") for k in keys)


def test_same_seed_same_init():
    torch.manual_seed(3)
    a = create_model("tiny-cnn").state_dict()
    torch.manual_seed(3)
    b = create_model("tiny-cnn").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
