"""One source of truth for each dataset's budget and PSSR settings (pssr.defaults)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import pssr
from pssr.attacks.sets import BUDGETS, DATASET_FAMILIES
from pssr.config import build, load_toml
from pssr.defaults import budget, dataset_name, pssr_config, resolved
from pssr.defense import PSSR, PSSRConfig
from pssr.testing import digits_cnn

ROOT = Path(__file__).resolve().parents[1]
PSSR_CONFIGS = sorted((ROOT / "configs").glob("pssr-*.toml"))


def test_budget_reads_the_attack_budgets_for_every_known_dataset():
    for name, fam in DATASET_FAMILIES.items():
        for norm, eps in BUDGETS[fam].items():
            assert budget(name, norm) == eps
    with pytest.raises(ValueError, match="pass eps"):
        budget(None)
    with pytest.raises(ValueError, match="no attack budgets"):
        budget("imagenet")


@pytest.mark.parametrize("path", PSSR_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_name_no_budget_and_agree_with_the_defaults(path):
    mapping = load_toml(path)
    for section in ("pssr", "adv_train"):
        assert "eps" not in (mapping.get(section) or {}), f"{path.name} [{section}] spells out a budget"
    name = mapping["data"]["name"]
    cfg = resolved(build(PSSRConfig, mapping["pssr"], prefix="pssr."), name)
    assert cfg.eps == budget(name)
    default = pssr_config(name)
    if "finetune" not in path.name and "faithful" not in path.name:  # these remove more, on the mask only
        for key in ("ratio", "restore_scope", "fill", "gen_width", "scorer_width"):
            assert getattr(cfg, key) == getattr(default, key), (path.name, key)


def test_dataset_configs_adv_train_budget_comes_from_the_dataset():
    from pssr.train.adversarial import AdvTrainConfig

    for path in sorted((ROOT / "configs").glob("*.toml")):
        mapping = load_toml(path)
        if "adv_train" in mapping:
            cfg = build(AdvTrainConfig, mapping["adv_train"], prefix="adv_train.")
            assert resolved(cfg, mapping["data"]["name"]).eps == budget(mapping["data"]["name"]), path.name


def test_splits_carry_their_dataset_name():
    data = pssr.data.load("digits")
    assert data.test.dataset == data.train.dataset == data.val.dataset == "digits"
    assert data.test.subset(10, seed=3).dataset == "digits"
    assert dataset_name(data.test) == "digits" and dataset_name(torch.nn.Identity()) is None


def test_train_pssr_without_config_uses_the_dataset_settings():
    clf, data = digits_cnn()
    defense = pssr.train_pssr(clf, data, epochs=1, train_subset=64, val_size=32, progress=False)
    assert defense.training_config.eps == budget("digits")  # not PSSRConfig's own 0 nor the old 0.3
    assert defense.config.restore_scope == "full" and defense.config.ratio == 0.1
    explicit = pssr.train_pssr(
        clf, data, PSSRConfig(eps=0.05, epochs=1, train_subset=64, val_size=32), progress=False
    )
    assert explicit.training_config.eps == 0.05


def test_evaluate_takes_the_budget_from_a_split():
    clf, data = digits_cnn()
    report = pssr.evaluate({"none": clf}, data.test, attacks="fgsm", n=16, progress=False, checks=False)
    assert report.config["dataset"] == "digits"
    assert report.config["eps"] == [budget("digits")]


def test_an_inert_defense_is_flagged(caplog):
    clf, data = digits_cnn()
    # restore_scope "mask" with ratio 0: nothing is removed, nothing rewritten
    inert = PSSR(clf, PSSRConfig(ratio=0.0, restore_scope="mask", scorer="random"), image_shape=(1, 8, 8))
    with caplog.at_level(logging.WARNING):
        report = pssr.evaluate({"pssr": inert}, data.test, attacks="fgsm", n=32, progress=False)
    names = [f["name"] for f in report.models["pssr"]["flags"]]
    assert "inert_defense" in names
    assert "inert_defense" in caplog.text


def test_evaluate_refuses_images_of_another_shape_than_the_model_trained_on():
    data = pssr.data.load("digits")
    clf = pssr.train_classifier("tiny-cnn", data, epochs=1, progress=False)
    assert clf.image_shape == (1, 8, 8)  # adaptive pooling would run it on 28x28 images silently
    other = pssr.data.Split(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64), "mnist-10k")
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(1, 28, 28\)"):
        pssr.evaluate({"c": clf}, other, attacks="fgsm", progress=False)


def test_train_pssr_saves_a_defense_around_a_user_model(tmp_path):
    clf, data = digits_cnn()
    user = torch.nn.Sequential(torch.nn.Identity(), clf)  # no registry name: a user's own module
    pssr.train_pssr(user, data, epochs=1, train_subset=64, val_size=32, progress=False, out_dir=tmp_path)
    assert (tmp_path / "pssr.pt").is_file()
    back = PSSR.load(
        tmp_path / "pssr.pt", classifier=torch.nn.Sequential(torch.nn.Identity(), digits_cnn()[0])
    )
    x = data.test.x[:4]
    with torch.no_grad():
        assert back(x).shape == (4, 10)


def test_evaluate_refuses_an_empty_split_in_one_line():
    clf, data = digits_cnn()
    empty = pssr.data.Split(data.test.x[:0], data.test.y[:0], "digits")
    with pytest.raises(ValueError, match="empty"):
        pssr.evaluate({"c": clf}, empty, attacks="fgsm")


def test_robust_mode_is_named_in_the_api_and_the_configs():
    from pssr.defaults import MODES

    cfg = pssr_config("fashion-mnist", mode="robust")
    assert (cfg.adv_mode, cfg.adv_target) == ("online", "pipeline") and cfg.classifier_lr > 0
    assert pssr_config("fashion-mnist").adv_mode == "cache"
    with pytest.raises(ValueError, match="modes: paper, robust, faithful"):
        pssr_config("digits", mode="robus")
    robust = sorted((ROOT / "configs").glob("pssr-*-robust.toml"))
    assert {p.name for p in robust} >= {"pssr-fashion-mnist-robust.toml", "pssr-cifar10-jpeg-robust.toml"}
    for path in robust:
        cfg = build(PSSRConfig, load_toml(path)["pssr"], prefix="pssr.")
        for key, value in MODES["robust"].items():
            assert getattr(cfg, key) == value, (path.name, key)


def test_faithful_mode_is_named_in_the_api_and_its_config():
    from pssr.defaults import MODES

    cfg = pssr_config("fashion-mnist", mode="faithful")
    assert cfg.restore_scope == "mask" and cfg.classifier_lr > 0 and cfg.rdrop_drop > 0
    assert cfg.eps == budget("fashion-mnist")  # one budget for training and evaluation
    for path in sorted((ROOT / "configs").glob("pssr-*-faithful.toml")):
        file_cfg = build(PSSRConfig, load_toml(path)["pssr"], prefix="pssr.")
        for key, value in MODES["faithful"].items():
            if key != "classifier_lr":  # the fine-tuning lr is the family's (pssr.defaults._MODE_FAMILY)
                assert getattr(file_cfg, key) == value, (path.name, key)
        dataset = load_toml(path)["data"]["name"]
        assert file_cfg.classifier_lr == pssr_config(dataset, mode="faithful").classifier_lr, path.name
    assert (
        pssr_config("cifar10-jpeg", mode="faithful").classifier_lr < cfg.classifier_lr
    )  # ResNet-20: smaller step
