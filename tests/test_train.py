"""Training: augmentation, schedules, accuracy on digits, determinism, checkpoint/resume, CLI, adversarial training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pssr
from pssr.cli import main
from pssr.train.adversarial import AdvTrainConfig, adversarial_train_run, pgd_accuracy, pgd_linf
from pssr.train.augment import AUGMENTATIONS, random_crop, random_flip
from pssr.train.classifier import (
    ClassifierConfig,
    evaluate_accuracy,
    load_classifier,
    train_classifier,
    train_classifier_run,
)
from pssr.train.schedules import lr_at

ROOT = Path(__file__).resolve().parents[1]
# Small, fast settings: tiny-cnn on the embedded 8x8 digits takes ~0.1 s per epoch on one core.
FAST = dict(batch_size=64, lr=0.05, progress=False)


@pytest.fixture(scope="module")
def digits() -> pssr.data.Dataset:
    return pssr.data.load("digits")


@pytest.fixture(scope="module")
def small_digits(digits) -> pssr.data.Dataset:
    """400 training images: enough to exercise the adversarial trainers quickly."""
    import dataclasses

    return dataclasses.replace(digits, train=digits.train.subset(400, seed=0))


pytestmark = pytest.mark.usefixtures("one_thread")


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- augmentation -------------------------------------------------------------------------------
def test_random_crop_is_a_translation_with_zero_fill():
    x = torch.rand(16, 3, 8, 8)
    out = random_crop(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    xp = F.pad(x, (2, 2, 2, 2))
    for i in range(16):
        windows = [xp[i, :, a : a + 8, b : b + 8] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    # different images get different offsets, and the same seed gives the same crops
    assert not all(torch.equal(out[i], x[i]) for i in range(16))
    assert torch.equal(out, random_crop(x, torch.Generator().manual_seed(0), padding=2))
    assert torch.equal(random_crop(x, torch.Generator(), padding=0), x)


def test_random_flip_flips_about_half():
    x = torch.rand(200, 1, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(1))
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    assert bool((same | flipped).all())
    assert 60 < int(flipped.sum()) < 140


def test_every_augmentation_keeps_shape_range_and_device():
    x = torch.rand(5, 3, 32, 32)
    for name in AUGMENTATIONS.list():
        out = AUGMENTATIONS.get(name)(x, torch.Generator().manual_seed(0), 4)
        assert out.shape == x.shape and out.device == x.device
        if "gaussian-" not in name:  # Cohen et al.'s noise is unclipped on purpose (test_denoise.py)
            assert float(out.min()) >= 0 and float(out.max()) <= 1


# --- configs and schedules ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        dict(epochs=0),
        dict(lr=-1.0),
        dict(schedule="linear"),
        dict(augment="mixup"),
        dict(optimizer="lbfgs"),
        dict(label_smoothing=1.0),
    ],
)
def test_config_validation_names_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        ClassifierConfig(**bad)


def test_lr_schedules():
    cfg = ClassifierConfig(lr=0.4, schedule="onecycle", warmup=0.25)
    lrs = [lr_at(cfg, s, 100) for s in range(100)]
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 25
    assert lrs[0] < 0.05 and lrs[-1] < 1e-3
    assert all(a <= b for a, b in zip(lrs[:25], lrs[1:26])) and all(
        a >= b for a, b in zip(lrs[25:], lrs[26:])
    )
    step = ClassifierConfig(lr=1.0, schedule="step")
    assert [lr_at(step, s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    cos = ClassifierConfig(lr=1.0, schedule="cosine", warmup=0.0)
    assert lr_at(cos, 0, 100) == pytest.approx(1.0) and lr_at(cos, 50, 100) == pytest.approx(0.5)


# --- training -----------------------------------------------------------------------------------
def test_tiny_cnn_learns_digits(digits):
    model = train_classifier("tiny-cnn", digits, epochs=10, seed=0, **FAST)
    assert not model.training
    acc = evaluate_accuracy(model, digits.test)
    assert acc > 0.85, acc
    # the untrained net is at chance level, so the accuracy comes from training
    torch.manual_seed(0)
    assert evaluate_accuracy(pssr.create_model("tiny-cnn"), digits.test) < 0.4


def test_same_seed_same_weights_other_seed_differs(digits):
    a = train_classifier("tiny-cnn", digits, epochs=2, seed=5, augment="crop", crop_padding=1, **FAST)
    b = train_classifier("tiny-cnn", digits, epochs=2, seed=5, augment="crop", crop_padding=1, **FAST)
    c = train_classifier("tiny-cnn", digits, epochs=2, seed=6, augment="crop", crop_padding=1, **FAST)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


class _Interrupt(Exception):
    pass


def test_resume_after_interrupt_equals_uninterrupted_run(digits, tmp_path):
    kw = dict(epochs=4, seed=1, augment="crop-flip", crop_padding=1, label_smoothing=0.1, **FAST)
    full = train_classifier_run("tiny-cnn", digits, checkpoint=tmp_path / "full.pt", **kw)

    def stop_after_two(rec: dict) -> None:
        if rec["epoch"] == 2:
            raise _Interrupt

    ck = tmp_path / "cut.pt"
    with pytest.raises(_Interrupt):
        train_classifier_run("tiny-cnn", digits, checkpoint=ck, callbacks=[stop_after_two], **kw)
    assert torch.load(ck, weights_only=True)["epoch"] == 2
    seen: list[int] = []
    resumed = train_classifier_run(
        "tiny-cnn", digits, checkpoint=ck, callbacks=[lambda r: seen.append(r["epoch"])], **kw
    )
    assert seen == [3, 4]  # no epoch lost, none repeated
    assert _same_weights(full.model, resumed.model)
    drop = ("train_seconds", "images_per_second", "epoch_seconds")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    assert full.checkpoint["metrics"]["test_acc"] == resumed.checkpoint["metrics"]["test_acc"]


def test_checkpoint_is_weights_only_and_rebuilds_the_model(digits, tmp_path):
    path = tmp_path / "clf.pt"
    model = train_classifier("tiny-cnn", digits, epochs=2, checkpoint=path, **FAST)
    ck = torch.load(path, weights_only=True)
    for key in (
        "model",
        "state_dict",
        "optimizer",
        "scheduler",
        "rng",
        "epoch",
        "config",
        "history",
        "metrics",
        "metadata",
    ):
        assert key in ck, key
    assert ck["model"]["name"] == "tiny-cnn" and ck["epoch"] == 2 and ck["config"]["epochs"] == 2
    assert 0.0 <= ck["metrics"]["test_acc"] <= 1.0 and len(ck["history"]) == 2
    assert ck["metadata"]["torch_version"] == torch.__version__
    again = load_classifier(path)
    assert not again.training
    x = digits.test.x[:16]
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    # a finished checkpoint is loaded, not retrained
    seen: list[int] = []
    same = train_classifier("tiny-cnn", digits, epochs=2, checkpoint=path, callbacks=[seen.append], **FAST)
    assert seen == [] and _same_weights(model, same)


def test_resume_refuses_a_checkpoint_from_other_settings(digits, tmp_path):
    path = tmp_path / "clf.pt"
    train_classifier("tiny-cnn", digits, epochs=1, checkpoint=path, **FAST)
    with pytest.raises(ValueError, match="differing settings: lr"):
        train_classifier(
            "tiny-cnn", digits, epochs=1, checkpoint=path, batch_size=64, lr=0.01, progress=False
        )
    with pytest.raises(ValueError, match="trained on 'digits'"):
        import dataclasses

        other = dataclasses.replace(digits, train=digits.train.subset(500))
        train_classifier("tiny-cnn", other, epochs=1, checkpoint=path, **FAST)
    # resume=False starts over
    train_classifier(
        "tiny-cnn", digits, epochs=1, checkpoint=path, batch_size=64, lr=0.01, progress=False, resume=False
    )
    assert torch.load(path, weights_only=True)["config"]["lr"] == 0.01


def test_bf16_channels_last_and_custom_module(digits):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 64, 10)
    )
    res = train_classifier_run(net, digits, epochs=2, bf16=True, channels_last=True, **FAST)
    assert res.model is net
    assert all(p.is_contiguous() for p in net.parameters())
    assert res.checkpoint["model"]["name"] is None and res.checkpoint["metrics"]["test_acc"] > 0.5
    assert net(digits.test.x[:4]).dtype == torch.float32


def test_config_object_with_keyword_overrides(digits):
    cfg = ClassifierConfig(model="small-cnn", epochs=1, batch_size=64, lr=0.05)
    res = train_classifier_run("tiny-cnn", digits, cfg, epochs=2, progress=False)
    assert res.checkpoint["config"]["epochs"] == 2 and res.checkpoint["config"]["lr"] == 0.05
    assert res.checkpoint["model"]["name"] == "tiny-cnn" and len(res.history) == 2
    with pytest.raises(ValueError, match="unknown training option"):
        train_classifier("tiny-cnn", digits, nonsense=1)


def test_evaluate_accuracy_restores_mode(digits):
    model = pssr.create_model("tiny-cnn").train()
    evaluate_accuracy(model, digits.test, batch_size=100)
    assert model.training
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_accuracy(model, digits.test, batch_size=0)


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_train_classifier_end_to_end(tmp_path, capsys):
    config = tmp_path / "digits.toml"
    # a section this command does not own must be ignored
    config.write_text((ROOT / "configs" / "digits.toml").read_text() + '\n[pssr]\nscorer = "whatever"\n')
    out = tmp_path / "run"
    summary = tmp_path / "results" / "classifier.json"
    rc = main(
        [
            "train-classifier",
            "--config",
            str(config),
            "--out",
            str(out),
            "--epochs",
            "6",
            "--set",
            "classifier.seed=2",
            "--summary",
            str(summary),
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "test_acc=" in capsys.readouterr().out
    s = json.loads(summary.read_text())
    assert s == json.loads((out / "classifier.json").read_text())
    assert (
        s["epochs"] == 6 and s["seed"] == 2 and s["config"]["epochs"] == 6 and s["metrics"]["test_acc"] > 0.7
    )
    assert (
        s["command"].startswith("pssr train-") and s["images_per_second"] > 0 and "hardware" in s["metadata"]
    )
    assert load_classifier(out / "classifier.pt") is not None


def test_cli_reports_config_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nname = "digits"\n[classifier]\nepoch = 3\n')
    assert main(["train-classifier", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "classifier.epoch" in capsys.readouterr().err


# --- adversarial training -----------------------------------------------------------------------
def test_pgd_linf_stays_in_the_ball_and_raises_the_loss(digits):
    model = train_classifier("tiny-cnn", digits, epochs=3, **FAST)
    x, y = digits.test.x[:64], digits.test.y[:64]
    x_adv = pgd_linf(model, x, y, eps=0.1, alpha=0.025, steps=10, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y) + 0.1
    assert all(p.grad is None for p in model.parameters())
    r = pgd_accuracy(model, digits.test, eps=0.1, steps=5, n=100)
    assert r["robust_acc"] < r["clean_acc"] and r["n"] == 100


@pytest.mark.parametrize("method", ["pgd-at", "trades"])
def test_adversarial_training_runs_and_resumes(small_digits, tmp_path, method):
    kw = dict(method=method, eps=0.1, alpha=0.05, steps=2, epochs=2, eval_steps=3, eval_n=100, seed=0, **FAST)
    a = adversarial_train_run("tiny-cnn", small_digits, checkpoint=tmp_path / "a.pt", **kw)
    m = a.checkpoint["metrics"]
    assert a.checkpoint["kind"] == method and m["pgd3_n"] == 100
    assert 0.0 <= m["pgd3_robust_acc"] <= m["pgd3_clean_acc"] <= 1.0
    b = adversarial_train_run("tiny-cnn", small_digits, checkpoint=tmp_path / "b.pt", **kw)
    assert _same_weights(a.model, b.model)
    assert isinstance(load_classifier(tmp_path / "a.pt"), torch.nn.Module)


def test_adv_config_validation():
    with pytest.raises(ValueError, match="method"):
        AdvTrainConfig(method="fgsm-at")
    with pytest.raises(ValueError, match="eps"):
        AdvTrainConfig(eps=-0.1)  # 0 is allowed: the dataset's budget (pssr.defaults)
    with pytest.raises(ValueError, match="eps"):
        AdvTrainConfig(eps=1.5)
    with pytest.raises(ValueError, match="steps"):
        AdvTrainConfig(steps=0)


def test_cli_train_adversarial(tmp_path):
    config = tmp_path / "adv.toml"
    config.write_text(
        '[data]\nname = "digits"\n[classifier]\nmodel = "tiny-cnn"\n'
        '[adv_train]\nmodel = "tiny-cnn"\nmethod = "trades"\neps = 0.1\nalpha = 0.05\nsteps = 2\n'
        "epochs = 1\nbatch_size = 64\nlr = 0.05\neval_steps = 2\neval_n = 50\n"
    )
    assert (
        main(["train-adversarial", "--config", str(config), "--out", str(tmp_path / "r"), "--no-progress"])
        == 0
    )
    s = json.loads((tmp_path / "r" / "trades.json").read_text())
    assert s["kind"] == "trades" and "pgd2_robust_acc" in s["metrics"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path):
    from pssr.config import build, load_toml
    from pssr.experiments.data import DataConfig

    mapping = load_toml(path)
    build(DataConfig, mapping.get("data"))
    build(ClassifierConfig, mapping.get("classifier"))
    if "adv_train" in mapping:
        build(AdvTrainConfig, mapping["adv_train"])


def test_background_runs_log_heartbeats_with_the_recent_rate(digits, monkeypatch, caplog):
    """Without a progress bar a run logs a heartbeat line (the GPU driver script sizes runs from the
    rate since the previous line, which excludes the warm-up)."""
    import logging

    from pssr.train import loop

    monkeypatch.setattr(loop, "LOG_EVERY_S", 0.0)
    with caplog.at_level(logging.INFO, logger="pssr.train.loop"):
        train_classifier("tiny-cnn", digits, epochs=1, **FAST)
    beats = [r.getMessage() for r in caplog.records if "since the last line" in r.getMessage()]
    assert len(beats) >= 2 and all(" img/s (" in b for b in beats)
