"""pssr.train.denoise: PSSR's regenerator as a Gaussian denoiser; the gaussian-<sigma> augmentation."""

from __future__ import annotations

import pytest
import torch

from pssr.certify import DenoisedClassifier, load_base_model
from pssr.defense.pssr import PSSR
from pssr.train.augment import AUGMENTATIONS, augment, gaussian_sigma
from pssr.train.denoise import DenoiseConfig, train_denoiser

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(epochs=2, batch_size=64, gen_width=8, gen_depth=1, train_subset=256, val_size=100, sigma=0.5)


@pytest.fixture(scope="module")
def clf_data():
    from pssr.testing import digits_cnn

    model, data = digits_cnn(epochs=1)
    model.pssr_spec = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
    return model, data


def test_gaussian_augmentation_is_seeded_unclipped_noise():
    assert {"gaussian-0.25", "gaussian-0.5", "gaussian-1.0"} <= set(AUGMENTATIONS.list())
    assert gaussian_sigma("gaussian-0.5") == 0.5 and gaussian_sigma("crop") is None
    x = torch.full((64, 1, 8, 8), 0.5)
    a = augment("gaussian-0.5", x, torch.Generator().manual_seed(0))
    b = augment("gaussian-0.5", x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == x.dtype
    d = a - x
    assert abs(float(d.std()) - 0.5) < 0.03 and abs(float(d.mean())) < 0.03
    assert float(a.min()) < 0 and float(a.max()) > 1  # not clipped


def test_denoiser_trains_saves_and_reloads(tmp_path, clf_data):
    clf, data = clf_data
    defense = train_denoiser(clf, data, DenoiseConfig(**SMALL), out=tmp_path)
    hist = defense.metrics["denoiser"]["history"]
    assert len(hist) == 2 and defense.metrics["denoiser"]["sigma"] == 0.5
    assert hist[-1]["loss_pixel"] < hist[0]["loss_pixel"] or hist[-1]["loss_kl"] < hist[0]["loss_kl"]
    # the denoiser's output is closer to the clean images than the noisy input (MSE sigma^2 = 0.25)
    assert hist[-1]["pixel_mse"] < 0.25
    assert all(p.grad is None or not p.requires_grad for p in clf.parameters())  # classifier untouched
    name, base, info = load_base_model(str(tmp_path / "denoiser.pt"))
    assert isinstance(base, DenoisedClassifier) and info["trained_sigma"] == 0.5 and name == "pssr-denoised"
    x = data.test.x[:16] + 0.5 * torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(base(x), DenoisedClassifier(defense)(x))  # save -> load gives equal outputs
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            defense(x)  # PSSR.forward takes images; the wrapper takes unclipped noisy inputs


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, clf_data, monkeypatch):
    clf, data = clf_data
    cfg = DenoiseConfig(**SMALL)
    full = train_denoiser(clf, data, cfg, out=tmp_path / "a")
    import pssr.train.denoise as dn

    real, calls = dn.validate, []

    def stop_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dn, "validate", stop_second)
    with pytest.raises(KeyboardInterrupt):
        train_denoiser(clf, data, cfg, out=tmp_path / "b")
    monkeypatch.setattr(dn, "validate", real)
    resumed = train_denoiser(clf, data, cfg, out=tmp_path / "b")
    for (k, a), (_, b) in zip(full.generator.state_dict().items(), resumed.generator.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="sigma"):
        train_denoiser(clf, data, DenoiseConfig(**{**SMALL, "sigma": 0.25}), out=tmp_path / "b")


def test_surgery_variant_removes_the_configured_share(tmp_path, clf_data):
    clf, data = clf_data
    cfg = DenoiseConfig(**{**SMALL, "epochs": 1, "use_surgery": True, "ratio": 0.25})
    defense = train_denoiser(clf, data, cfg)
    den = DenoisedClassifier(defense)
    x = data.test.x[:8] + 0.5 * torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    m = den.mask(x)
    assert m.shape == (8, 1, 8, 8) and torch.all(m.flatten(1).sum(1) == 16)  # 25% of 64 pixels
    assert "loss_scorer" in defense.metrics["denoiser"]["history"][0]
    with torch.no_grad():
        assert den(x).shape == (8, 10)


def test_config_errors_are_named():
    with pytest.raises(ValueError, match="sigma"):
        DenoiseConfig(sigma=0.0)
    with pytest.raises(ValueError, match="scorer"):
        DenoiseConfig(scorer="nope")
    with pytest.raises(ValueError, match="PSSR"):
        DenoisedClassifier(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    assert isinstance(DenoiseConfig().defense_config().restore_scope, str)
    assert PSSR  # the wrapper's input type


def test_second_stage_starts_from_the_first(tmp_path, clf_data):
    clf, data = clf_data
    first = train_denoiser(
        clf, data, DenoiseConfig(**{**SMALL, "epochs": 1, "w_kl": 0.0}), out=tmp_path / "a"
    )
    cfg = DenoiseConfig(**{**SMALL, "epochs": 1, "lr": 1e-12, "init": str(tmp_path / "a" / "denoiser.pt")})
    second = train_denoiser(clf, data, cfg)
    for a, b in zip(first.generator.parameters(), second.generator.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match="init"):
        train_denoiser(clf, data, DenoiseConfig(**{**SMALL, "gen_width": 4, "init": cfg.init}))


def test_a_run_extends_or_stops_at_an_epoch_boundary(tmp_path, clf_data):
    """Adam at a constant step size: E epochs are the first E of a longer run, so a state may be taken
    further (or finished where it stands) with another `epochs`; a state past `epochs` is refused."""
    clf, data = clf_data
    two = train_denoiser(clf, data, DenoiseConfig(**SMALL), out=tmp_path / "a")
    train_denoiser(clf, data, DenoiseConfig(**{**SMALL, "epochs": 1}), out=tmp_path / "b")
    longer = train_denoiser(clf, data, DenoiseConfig(**SMALL), out=tmp_path / "b")
    assert len(longer.metrics["denoiser"]["history"]) == 2
    for (k, a), (_, b) in zip(two.generator.state_dict().items(), longer.generator.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="2 epochs in"):
        train_denoiser(clf, data, DenoiseConfig(**{**SMALL, "epochs": 1}), out=tmp_path / "b")


def test_noise_on_top_of_crop_and_flip():
    x = torch.rand(32, 3, 8, 8)
    assert gaussian_sigma("crop-flip-gaussian-0.25") == 0.25
    a = augment("crop-flip-gaussian-0.25", x, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    from pssr.train.augment import gaussian_noise, random_crop, random_flip

    assert torch.equal(a, gaussian_noise(random_flip(random_crop(x, g, 4), g), g, 0.25))
