"""PSSR training: losses, determinism, exact resume, the config/CLI run, and a real robustness gain on digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pssr
from pssr.defense import PSSR, PSSRConfig
from pssr.experiments.quick_eval import quick_eval
from pssr.train import losses
from pssr.train.adversarial_cache import pgd
from pssr.train.pssr_train import STATE_FILE, train_pssr

SPEC = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}
TINY = dict(
    epochs=2,
    train_subset=192,
    val_size=64,
    batch_size=64,
    gen_width=8,
    scorer_width=8,
    pgd_steps=3,
    eps=0.3,
    ratio=0.25,
)


@pytest.fixture(scope="module")
def digits():
    return pssr.data.load("digits")


@pytest.fixture(scope="module")
def classifier(digits, tmp_path_factory) -> tuple[nn.Module, str]:
    """A tiny-cnn trained on digits (about 3 s), saved as a train-classifier checkpoint."""
    from pssr.train.classifier import train_classifier

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    clf = train_classifier(
        "tiny-cnn",
        digits,
        epochs=15,
        batch_size=64,
        lr=0.05,
        weight_decay=5e-4,
        schedule="onecycle",
        augment="none",
        seed=0,
        progress=False,
        checkpoint=path,
    )
    for p in clf.parameters():
        p.grad = None
    return clf.eval(), str(path)


def _weights(d: PSSR) -> list[torch.Tensor]:
    return [p.detach().clone() for p in d.parameters()]


# ------------------------------------------------------------------ losses
def test_losses_basic_properties() -> None:
    a = torch.randn(4, 10)
    assert losses.symmetric_kl(a, a).abs() < 1e-6 and losses.symmetric_kl(a, a + torch.randn(4, 10)) > 0
    assert losses.kl_to_target(a, a).abs() < 1e-6
    t = torch.softmax(torch.randn(2, 16), 1).view(2, 1, 4, 4)
    best = losses.scorer_ce(t.log(), t)  # minimized when the softmax of the scores equals the target
    assert best < losses.scorer_ce(torch.zeros_like(t), t) and best < losses.scorer_ce(-t.log(), t)
    assert losses.entropy(t) == pytest.approx(float(best), abs=1e-5)  # the floor is reached at the target
    flat = torch.full((1, 1, 4, 4), 1 / 16)
    assert losses.entropy(flat) == pytest.approx(float(torch.log(torch.tensor(16.0))), abs=1e-5)
    x, r = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    m = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert losses.pixel_l1(r, x) == pytest.approx(0.25) and losses.pixel_l1(r, x, m) == pytest.approx(0.5)


def test_private_pgd_stays_in_ball_and_fools(classifier, digits) -> None:
    clf, _ = classifier
    x, y = digits.test.x[:64], digits.test.y[:64]
    xa = pgd(clf, x, y, eps=0.3, alpha=0.075, steps=10, generator=torch.Generator().manual_seed(0))
    assert (xa - x).abs().max() <= 0.3 + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        assert (clf(xa).argmax(1) == y).float().mean() < (clf(x).argmax(1) == y).float().mean()
    assert all(p.grad is None for p in clf.parameters()) and not clf.training


def test_rdrop_drops_are_exact_seeded_and_shard_independent() -> None:
    d = losses.random_drops(6, (8, 8), 0.25, seed=3)
    assert d.shape == (2, 6, 1, 8, 8) and set(d.unique().tolist()) <= {0.0, 1.0}
    assert (d.flatten(2).sum(2) == 16).all()  # exactly round(0.25 * 64) per image and pass
    assert not torch.equal(d[0], d[1])  # the two passes drop different pixels
    assert torch.equal(d, losses.random_drops(6, (8, 8), 0.25, seed=3))
    cfg = PSSRConfig(**{**TINY, "rdrop_drop": 0.25})
    whole = losses.rdrop_drops(cfg, 6, (8, 8), epoch=1, batch=2, rows=range(0, 6))
    halves = [
        losses.rdrop_drops(cfg, 6, (8, 8), epoch=1, batch=2, rows=r) for r in (range(0, 3), range(3, 6))
    ]
    assert torch.equal(whole, torch.cat(halves, 1))  # each example's drops do not depend on the shard
    assert losses.rdrop_drops(PSSRConfig(**TINY), 6, (8, 8), 1, 2, range(0, 6)) is None
    with pytest.raises(ValueError, match="rdrop_drop"):
        PSSRConfig(rdrop_drop=1.0)
    with pytest.raises(ValueError, match="rdrop_drop"):
        PSSRConfig(rdrop_drop=0.1, use_surgery=False)


def test_two_pass_rdrop_trains_and_changes_the_result(classifier, digits) -> None:
    # R-Drop proper: two random-drop passes of the adversarial input; inference stays deterministic
    clf, _ = classifier
    cfg = {**TINY, "epochs": 1, "train_subset": 64}
    plain = train_pssr(clf, digits, PSSRConfig(**cfg), progress=False, classifier_spec=SPEC)
    two = train_pssr(clf, digits, PSSRConfig(**cfg, rdrop_drop=0.1), progress=False, classifier_spec=SPEC)
    again = train_pssr(clf, digits, PSSRConfig(**cfg, rdrop_drop=0.1), progress=False, classifier_spec=SPEC)
    h = two.metrics["history"][0]
    assert h["loss_rdrop_passes"] > 0 and "loss_rdrop_passes" not in plain.metrics["history"][0]
    assert all(torch.equal(p, q) for p, q in zip(_weights(two), _weights(again)))  # seeded
    assert not all(torch.equal(p, q) for p, q in zip(_weights(two), _weights(plain)))
    x = digits.test.x[:8]
    with torch.no_grad():
        assert torch.equal(two(x), two(x)) and torch.equal(two.mask(x), two.mask(x))
        assert int(two.mask(x).sum()) == 8 * round(0.25 * 64)  # the random drops are training-only
    assert two.training_config.rdrop_drop == 0.1


# ------------------------------------------------------------------ determinism and resume
def test_same_seed_same_result(classifier, digits) -> None:
    clf, _ = classifier
    a = train_pssr(clf, digits, PSSRConfig(**{**TINY, "epochs": 1}), progress=False, classifier_spec=SPEC)
    b = train_pssr(clf, digits, PSSRConfig(**{**TINY, "epochs": 1}), progress=False, classifier_spec=SPEC)
    assert all(torch.equal(p, q) for p, q in zip(_weights(a), _weights(b)))
    c = train_pssr(
        clf, digits, PSSRConfig(**{**TINY, "epochs": 1, "seed": 1}), progress=False, classifier_spec=SPEC
    )
    assert not all(torch.equal(p, q) for p, q in zip(_weights(a), _weights(c)))
    assert all(p.requires_grad for p in clf.parameters()) and all(p.grad is None for p in clf.parameters())
    h = a.metrics["history"][0]  # the learned scorer's loss is logged with its floor (target entropy)
    assert 0 < h["loss_scorer_floor"] <= h["loss_scorer"]


def test_resume_after_interrupt_equals_uninterrupted(classifier, digits, tmp_path) -> None:
    clf, _ = classifier
    cfg = PSSRConfig(**TINY)
    full = train_pssr(clf, digits, cfg, out_dir=tmp_path / "full", progress=False, classifier_spec=SPEC)

    def stop(epoch: int, rec: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_pssr(
            clf,
            digits,
            cfg,
            out_dir=tmp_path / "cut",
            progress=False,
            classifier_spec=SPEC,
            on_epoch_end=stop,
        )
    assert (tmp_path / "cut" / STATE_FILE).is_file() and not (tmp_path / "cut" / "pssr.pt").exists()
    resumed = train_pssr(clf, digits, cfg, out_dir=tmp_path / "cut", progress=False, classifier_spec=SPEC)
    assert all(torch.equal(p, q) for p, q in zip(_weights(full), _weights(resumed)))
    assert [h["epoch"] for h in resumed.metrics["history"]] == [1, 2]
    assert full.metrics["history"][1]["val_graybox_acc"] == resumed.metrics["history"][1]["val_graybox_acc"]
    # a different config in the same folder is refused, not silently mixed
    with pytest.raises(ValueError, match="different config"):
        train_pssr(
            clf,
            digits,
            PSSRConfig(**{**TINY, "ratio": 0.5}),
            out_dir=tmp_path / "cut",
            progress=False,
            classifier_spec=SPEC,
        )
    loaded = PSSR.load(tmp_path / "cut" / "pssr.pt")
    x = digits.test.x[:16]
    assert torch.equal(loaded(x), resumed(x))


@pytest.mark.parametrize(
    "cfg",
    [
        {"scorer": "gradient"},
        {"use_surgery": False},
        {"use_regeneration": False},
        {"w_rdrop": 0.0, "adv_mode": "online", "fgsm_fraction": 0.5},
        {"w_semantic_feat": 1.0, "feature_layer": "features", "condition": "logits"},
    ],
)
def test_ablation_switches_train(classifier, digits, cfg: dict) -> None:
    clf, _ = classifier
    d = train_pssr(
        clf,
        digits,
        PSSRConfig(**{**TINY, "epochs": 1, "train_subset": 64, **cfg}),
        progress=False,
        classifier_spec=SPEC,
    )
    x = digits.test.x[:8]
    p = d.purify(x)
    assert p.shape == x.shape and 0 <= p.min() and p.max() <= 1
    assert len(d.metrics["history"]) == 1


def test_classifier_finetuning_trains_a_copy_saves_it_and_resumes(classifier, digits, tmp_path) -> None:
    clf, _ = classifier
    before = [p.detach().clone() for p in clf.parameters()]
    cfg = PSSRConfig(**{**TINY, "classifier_lr": 1e-3, "adv_mode": "online"})
    full = train_pssr(clf, digits, cfg, out_dir=tmp_path / "full", progress=False, classifier_spec=SPEC)
    # the caller's classifier is untouched; the defense's own copy moved
    assert all(torch.equal(p, q) for p, q in zip(before, clf.parameters()))
    assert full.classifier is not clf
    assert not all(torch.equal(p, q) for p, q in zip(before, full.classifier.parameters()))
    assert full.metrics["classifier_finetuned"] and "val_transfer_acc" in full.metrics["history"][-1]

    def stop(epoch: int, rec: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_pssr(
            clf,
            digits,
            cfg,
            out_dir=tmp_path / "cut",
            progress=False,
            classifier_spec=SPEC,
            on_epoch_end=stop,
        )
    resumed = train_pssr(clf, digits, cfg, out_dir=tmp_path / "cut", progress=False, classifier_spec=SPEC)
    assert all(torch.equal(p, q) for p, q in zip(_weights(full), _weights(resumed)))
    loaded = PSSR.load(tmp_path / "cut" / "pssr.pt")  # the fine-tuned classifier travels in the checkpoint
    x = digits.test.x[:16]
    assert torch.equal(loaded(x), resumed(x)) and not torch.equal(loaded.classifier(x), clf(x))


def test_pipeline_attack_training_runs_and_is_validated(classifier, digits) -> None:
    clf, _ = classifier
    with pytest.raises(ValueError, match="adv_target"):
        PSSRConfig(adv_target="pipeline", adv_mode="cache")
    with pytest.raises(ValueError, match="classifier_lr"):
        PSSRConfig(classifier_lr=-1.0)
    d = train_pssr(
        clf,
        digits,
        PSSRConfig(
            **{
                **TINY,
                "epochs": 1,
                "train_subset": 64,
                "adv_mode": "online",
                "adv_target": "pipeline",
                "classifier_lr": 1e-3,
            }
        ),
        progress=False,
        classifier_spec=SPEC,
    )
    assert len(d.metrics["history"]) == 1 and all(p.grad is None for p in clf.parameters())


def test_cli_train_pssr_writes_checkpoint_and_results(classifier, tmp_path, capsys) -> None:
    from pssr.cli import main

    _, clf_path = classifier
    cfg = tmp_path / "pssr-test.toml"
    cfg.write_text(
        f'[data]\nname = "digits"\n[pssr]\nepochs = 1\ntrain_subset = 64\nval_size = 32\ngen_width = 8\n'
        f'scorer_width = 8\npgd_steps = 2\n[run]\nclassifier = "{clf_path}"\neval_n = 40\neval_steps = 3\n'
        f"adaptive_n = 20\n"
    )
    res = tmp_path / "res.json"
    assert (
        main(
            [
                "train-pssr",
                "--config",
                str(cfg),
                "--out",
                str(tmp_path / "o"),
                "--results",
                str(res),
                "--set",
                "pssr.ratio=0.1",
                "--no-progress",
            ]
        )
        == 0
    )
    import json

    s = json.loads(res.read_text())
    assert s["config"]["pssr"]["ratio"] == 0.1 and s["test"]["n"] == 40 and s["test"]["adaptive_n"] == 20
    assert PSSR.load(tmp_path / "o" / "pssr.pt").config.ratio == 0.1
    # the checkpoint records its dataset, so evaluating it alone needs no --data
    from pssr.experiments.loading import checkpoint_data, load_models

    assert checkpoint_data(load_models([str(tmp_path / "o" / "pssr.pt")])[1])["name"] == "digits"
    assert main(["train-pssr", "--config", str(cfg), "--set", "run.classifier=''"]) == 2  # clear error
    # no adaptive attack asked for: the summary line says so instead of failing on the missing keys
    args = [
        "train-pssr",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "o"),
        "--results",
        str(res),
        "--set",
        "pssr.ratio=0.1",
        "--set",
        "run.adaptive_n=0",
        "--no-progress",
    ]
    assert main([*args, "--no-resume"]) == 0
    assert "no adaptive attack" in capsys.readouterr().out
    assert json.loads(res.read_text())["test"]["adaptive_n"] == 0
    # a finished run with the same training settings is reused as it is (no training, no evaluation),
    # even when the evaluation settings differ; another training setting is refused, not mixed in
    ck = tmp_path / "o" / "pssr.pt"
    before = (ck.stat().st_mtime_ns, ck.read_bytes())
    res.unlink()
    assert main([*args[:-3], "--set", "run.eval_n=10", "--no-progress"]) == 0
    assert (ck.stat().st_mtime_ns, ck.read_bytes()) == before
    assert json.loads(res.read_text())["test"]["n"] == 40  # the stored evaluation, with its own settings
    assert main([*args, "--set", "pssr.ratio=0.2"]) == 2


# ------------------------------------------------------------------ the real thing
@pytest.mark.slow
def test_training_improves_graybox_pgd_accuracy_on_digits(classifier, digits) -> None:
    """Gray-box protocol (PGD-20 at Linf 0.3 on the classifier, then purified) on the whole digits test
    set: a short PSSR training must lift robust accuracy well above the undefended classifier's (about 0)
    while keeping a usable clean accuracy. About 30 s on one free core."""
    clf, _ = classifier
    cfg = PSSRConfig(
        eps=0.3,
        ratio=0.3,
        epochs=20,
        batch_size=64,
        pgd_steps=5,
        gen_width=16,
        scorer_width=8,
        lr=3e-3,
        seed=0,
    )
    d = train_pssr(clf, digits, cfg, progress=False, classifier_spec=SPEC)
    r = quick_eval(d, digits.test.x, digits.test.y, eps=0.3, steps=20, adaptive_n=0)
    assert r["clf_pgd_acc"] < 0.1, r
    assert r["pssr_graybox_pgd_acc"] > r["clf_pgd_acc"] + 0.25, r
    assert r["pssr_clean_acc"] > 0.6, r


def test_pssr_training_logs_heartbeats_without_a_progress_bar(
    classifier, digits, monkeypatch, caplog
) -> None:
    import logging

    from pssr.train import loop

    monkeypatch.setattr(loop, "LOG_EVERY_S", 0.0)
    clf, _ = classifier
    with caplog.at_level(logging.INFO, logger="pssr.train.pssr_train"):
        train_pssr(clf, digits, PSSRConfig(**{**TINY, "epochs": 1}), progress=False, classifier_spec=SPEC)
    beats = [r.getMessage() for r in caplog.records if "since the last line" in r.getMessage()]
    assert len(beats) >= 2 and beats[0].startswith("pssr epoch 1/1: batch 1/")
