"""Bring your own model (issue 21 item 5): a PSSR around any nn.Module saves and loads
(``PSSR.load(path, classifier=model)``), a model that expects normalized inputs is wrapped with
``pssr.models.Normalize``, and a model/dataset shape mismatch is a one-line ValueError."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pssr
from pssr.defense import PSSR, PSSRConfig
from pssr.models import Normalize, check_input_shape, create_model

TINY = {"gen_width": 8, "scorer_width": 8, "ratio": 0.25}


class Net(nn.Module):
    """A user's classifier of 8x8 gray images that expects inputs normalized with mean 0.5, std 0.25."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _wrapped(seed: int = 0, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(Normalize(0.5, 0.25), Net(hidden))


def _x(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(3))


# ------------------------------------------------------------------ save / load
def test_pssr_around_a_user_model_saves_and_loads_with_classifier(tmp_path) -> None:
    torch.manual_seed(1)
    d = PSSR(_wrapped(), PSSRConfig(**TINY), image_shape=(1, 8, 8)).eval()
    path = d.save(tmp_path / "mine.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["classifier"]["name"] is None and "Net" in raw["classifier"]["class"]
    fresh = _wrapped(seed=7)  # other weights: loading must replace them by the saved ones
    back = PSSR.load(path, classifier=fresh)
    assert back.classifier is fresh
    x = _x()
    assert torch.equal(back(x), d(x)) and torch.equal(back.purify(x), d.purify(x))


def test_fine_tuned_classifier_weights_travel_in_the_checkpoint(tmp_path) -> None:
    d = PSSR(_wrapped(), PSSRConfig(**TINY), image_shape=(1, 8, 8))
    with torch.no_grad():  # as train_pssr with classifier_lr > 0 would
        d.classifier[1].body[1].weight.add_(0.5)
    back = PSSR.load(d.save(tmp_path / "ft.pt"), classifier=_wrapped())
    assert torch.equal(back.classifier[1].body[1].weight, d.classifier[1].body[1].weight)


def test_loading_a_user_model_checkpoint_without_classifier_says_what_to_pass(tmp_path) -> None:
    path = PSSR(_wrapped(), PSSRConfig(**TINY), image_shape=(1, 8, 8)).save(tmp_path / "mine.pt")
    with pytest.raises(
        ValueError, match=r"mine\.pt: .*model of your own .*PSSR\.load\(path, classifier=model\)"
    ) as e:
        PSSR.load(path)
    assert "\n" not in str(e.value)


def test_classifier_with_other_shapes_is_a_one_line_error(tmp_path) -> None:
    path = PSSR(_wrapped(), PSSRConfig(**TINY), image_shape=(1, 8, 8)).save(tmp_path / "mine.pt")
    with pytest.raises(ValueError, match=r"1\.body\.1\.weight is \(16, 64\) in it, \(32, 64\) saved") as e:
        PSSR.load(path, classifier=_wrapped(hidden=16))
    assert "\n" not in str(e.value)


def test_classifier_with_other_parameter_names_is_a_one_line_error(tmp_path) -> None:
    path = PSSR(_wrapped(), PSSRConfig(**TINY), image_shape=(1, 8, 8)).save(tmp_path / "mine.pt")
    with pytest.raises(ValueError, match=r"does not match the checkpoint's classifier.*missing in it"):
        PSSR.load(path, classifier=Net())  # the Normalize wrapper forgotten


def test_registered_classifier_still_loads_alone_and_with_classifier(tmp_path) -> None:
    spec = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
    torch.manual_seed(0)
    d = PSSR(
        create_model(spec["name"], **spec["kwargs"]).eval(),
        PSSRConfig(**TINY),
        (1, 8, 8),
        classifier_spec=spec,
    )
    path = d.save(tmp_path / "reg.pt")
    x = _x()
    assert torch.equal(PSSR.load(path)(x), d(x))
    assert torch.equal(PSSR.load(path, classifier=create_model("tiny-cnn"))(x), d(x))


def test_cli_purify_of_a_user_model_checkpoint_points_to_the_api(tmp_path, capsys) -> None:
    import numpy as np
    from PIL import Image

    path = PSSR(_wrapped(), PSSRConfig(**TINY), image_shape=(1, 8, 8)).save(tmp_path / "mine.pt")
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "a.png")
    from pssr.cli import main

    rc = main(["purify", "--checkpoint", str(path), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "classifier=model" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ Normalize
def test_normalize_wraps_a_model_that_expects_normalized_inputs() -> None:
    net = Net().eval()
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    x = torch.rand(2, 3, 4, 4)
    norm = Normalize(mean, std)
    ref = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(norm(x), ref)
    assert torch.equal(nn.Sequential(Normalize(0.5, 0.25), net)(_x()), net((_x() - 0.5) / 0.25))
    assert pssr.models.Normalize is Normalize  # the public name


def test_normalize_refuses_a_channel_mismatch_and_bad_std() -> None:
    with pytest.raises(ValueError, match=r"Normalize has 3 channels.*\(1, 1, 4, 4\)"):
        Normalize((0.5, 0.5, 0.5), (0.2, 0.2, 0.2))(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize(0.5, 0.0)
    with pytest.raises(ValueError, match="same length"):
        Normalize((0.5, 0.5), (0.2,))


# ------------------------------------------------------------------ model / dataset shape
def test_check_input_shape_returns_the_number_of_classes_and_restores_modes() -> None:
    m = _wrapped().train()
    assert check_input_shape(m, (1, 8, 8)) == 10
    assert all(mod.training for mod in m.modules())


def test_check_input_shape_flattening_model_on_larger_images() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(1, 28, 28\).*expects 64 input values.*1x8x8") as e:
        check_input_shape(_wrapped(), (1, 28, 28))
    assert "\n" not in str(e.value)


def test_check_input_shape_channel_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\) = \(1, 32, 32\).*3-channel images"):
        check_input_shape(create_model("resnet20", num_classes=10, in_channels=3), (1, 32, 32))


def test_check_input_shape_declared_shape_catches_what_pooling_hides(tmp_path) -> None:
    # a small-cnn pools adaptively, so an 8x8 model runs on 28x28 images and predicts nonsense;
    # loaded from a checkpoint it knows the shape it was trained on
    spec = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
    clf = create_model(spec["name"], **spec["kwargs"]).eval()
    assert check_input_shape(clf, (1, 28, 28)) == 10  # nothing to catch without a declared shape
    d = PSSR.load(PSSR(clf, PSSRConfig(**TINY), (1, 8, 8), classifier_spec=spec).save(tmp_path / "p.pt"))
    for model in (d, d.classifier):
        with pytest.raises(
            ValueError, match=r"takes images of \(C, H, W\) = \(1, 8, 8\) but the dataset's images"
        ):
            check_input_shape(model, (1, 28, 28))


def test_check_input_shape_wants_logits() -> None:
    with pytest.raises(ValueError, match=r"logits of shape \(N, classes\)"):
        check_input_shape(nn.Identity(), (1, 8, 8))


def test_pssr_with_a_model_of_another_image_size_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"image_shape given to PSSR.*\(1, 28, 28\).*64 input values"):
        PSSR(_wrapped(), PSSRConfig(**TINY), image_shape=(1, 28, 28))


def test_readme_snippet_bring_your_own_model(tmp_path) -> None:
    """The snippet proposed for the README, run as written (with a small model and tiny config)."""
    my_model = Net()  # trained on inputs normalized with mean 0.5, std 0.25
    model = nn.Sequential(pssr.models.Normalize(mean=0.5, std=0.25), my_model).eval()
    data = pssr.data.load("digits")
    pssr.models.check_input_shape(model, data.image_shape)  # a ValueError if the model cannot take them
    defense = PSSR(model, PSSRConfig(**TINY), image_shape=data.image_shape)
    defense.save(tmp_path / "my-pssr.pt")
    again = pssr.PSSR.load(
        tmp_path / "my-pssr.pt", classifier=nn.Sequential(pssr.models.Normalize(0.5, 0.25), Net())
    )
    x = data.test.x[:4]
    assert torch.equal(again(x), defense(x))
