"""Other libraries' attacks on pssr defenses: ART through pssr.interop.art_estimator, torchattacks on the module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pssr
from pssr.defense import PSSRConfig
from pssr.defense.baselines import create_baseline
from pssr.interop import GradientSwitch, art_estimator, gradient_view
from pssr.testing import accuracy, digits_cnn
from pssr.train.pssr_train import train_pssr

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 0.1  # the digits L-inf budget (pssr.attacks.BUDGETS)
SPEC = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
# One short epoch (about a second): with restore_scope="mask" the kept 90% of the pixels reach the
# classifier unchanged, so clean accuracy stays near the classifier's without a trained regenerator.
TINY = dict(
    epochs=1,
    train_subset=128,
    val_size=64,
    batch_size=64,
    gen_width=8,
    scorer_width=8,
    pgd_steps=3,
    eps=EPS,
    ratio=0.1,
    restore_scope="mask",
)


@pytest.fixture(scope="module")
def models():
    """tiny-cnn on digits and a PSSR around it trained for one short epoch (seconds)."""
    clf, data = digits_cnn()
    defense = train_pssr(clf, data, PSSRConfig(**TINY), progress=False, classifier_spec=SPEC).eval()
    return clf, defense, data


def _correct(model, data, n=64):
    x, y = data.test.x[:200], data.test.y[:200]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def _art_pgd(est, x, max_iter=20):
    from art.attacks.evasion import ProjectedGradientDescent

    atk = ProjectedGradientDescent(
        est, norm=np.inf, eps=EPS, eps_step=EPS / 5, max_iter=max_iter, num_random_init=0, verbose=False
    )
    return torch.from_numpy(atk.generate(x.numpy().astype(np.float32)))


def test_art_pgd_through_the_estimator_breaks_pssr_within_the_budget(models):
    pytest.importorskip("art", reason="adversarial-robustness-toolbox is not installed")
    _, defense, data = models
    x, y = _correct(defense, data)
    est = art_estimator(defense)
    assert est.pssr_gradient == "exact"  # PSSR is differentiable (the mask held constant)
    assert np.abs(est.loss_gradient(x.numpy(), np.eye(10, dtype=np.float32)[y.numpy()])).sum() > 0
    # predictions are the defense's own
    assert np.array_equal(est.predict(x.numpy()).argmax(1), defense(x).argmax(1).numpy())
    x_adv = _art_pgd(est, x)
    assert (x_adv - x).abs().amax() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    clean, adv = accuracy(defense, x, y), accuracy(defense, x_adv, y)  # judged on the real defense
    assert clean == 1.0 and adv <= clean - 0.3, (clean, adv)


def test_art_estimator_takes_bpda_where_the_exact_gradient_vanishes(models):
    pytest.importorskip("art", reason="adversarial-robustness-toolbox is not installed")
    clf, _, data = models
    jpeg = create_baseline("jpeg", clf, quality=60).eval()
    x, y = _correct(jpeg, data, 48)
    exact = art_estimator(jpeg, input_shape=(1, 8, 8), gradient="exact")
    onehot = np.eye(10, dtype=np.float32)[y.numpy()]
    assert np.all(exact.loss_gradient(x.numpy(), onehot) == 0)  # JPEG masks the gradient entirely
    est = art_estimator(jpeg, input_shape=(1, 8, 8))
    assert est.pssr_gradient == "bpda"
    assert accuracy(jpeg, _art_pgd(exact, x), y) == 1.0  # blind: nothing moves
    x_adv = _art_pgd(est, x)
    assert (x_adv - x).abs().amax() <= EPS + 1e-6
    assert accuracy(jpeg, x_adv, y) <= 0.8  # through BPDA the attack sees the classifier's gradient


def test_gradient_views_for_random_and_deterministic_defenses(models):
    clf, defense, _ = models
    tvm = create_baseline("tvm", clf)
    view = gradient_view(tvm, input_shape=(1, 8, 8), eot_samples=3)
    assert isinstance(view, pssr.attacks.EOT) and view.k == 3
    assert gradient_view(defense, "exact") is defense
    assert gradient_view(defense, "bpda") is not defense
    with pytest.raises(ValueError, match="gradient="):
        gradient_view(defense, "straight")
    with pytest.raises(ValueError, match="bpda"):
        gradient_view(clf, "bpda")
    with pytest.raises(ValueError, match="input_shape"):
        art_estimator(clf)
    sw = GradientSwitch(defense, defense.bpda(), "bpda")
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(sw(x), defense(x))


def test_torchattacks_pgd_runs_on_the_defense_module(models):
    torchattacks = pytest.importorskip(
        "torchattacks",
        reason="torchattacks is not installed (pip install --no-deps torchattacks: its torchvision "
        "requirement is never imported)",
    )
    _, defense, data = models
    x, y = _correct(defense, data)
    x_adv = torchattacks.PGD(defense, eps=EPS, alpha=EPS / 5, steps=20, random_start=False)(x, y)
    assert (x_adv - x).abs().amax() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(defense, x_adv, y) <= 1.0 - 0.3
    # a BPDA view is an nn.Module as well: torchattacks follows its gradients, success judged on the defense
    x_bpda = torchattacks.PGD(gradient_view(defense, "bpda"), eps=EPS, alpha=EPS / 5, steps=20)(x, y)
    assert (x_bpda - x).abs().amax() <= EPS + 1e-6
    assert accuracy(defense, x_bpda, y) < 1.0
