"""Adversarial training with the epoch chosen on a robust validation split held out of train (issue 18)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import pssr
from pssr.train.adversarial import AdvTrainConfig, adversarial_train_run, passes_per_example
from pssr.train.classifier import load_classifier
from pssr.train.selection import best_record, holdout, selection_paths
from pssr.utils import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# tiny-cnn on 300 of the embedded 8x8 digits: a few tenths of a second per epoch on one core.
# A high learning rate with a constant schedule makes the validation robust accuracy move between
# epochs: here it peaks at epoch 3 of 4, so the selected epoch is not the last one.
KW = dict(
    method="pgd-at",
    eps=0.1,
    alpha=0.05,
    steps=2,
    epochs=4,
    eval_steps=2,
    eval_n=60,
    seed=0,
    batch_size=50,
    lr=0.1,
    schedule="constant",
    progress=False,
)


@pytest.fixture(scope="module")
def small() -> pssr.data.Dataset:
    digits = pssr.data.load("digits")
    return dataclasses.replace(digits, train=digits.train.subset(300, seed=0))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def test_config_rejects_bad_values_in_one_line():
    for kw, name in [({"val_size": -1}, "val_size"), ({"val_steps": 0}, "val_steps")]:
        with pytest.raises(ValueError, match=name) as e:
            AdvTrainConfig(**kw)
        assert "\n" not in str(e.value)


def test_val_size_must_leave_training_images(small, tmp_path):
    for n in (300, 1000):
        with pytest.raises(ValueError, match="val_size") as e:
            adversarial_train_run("tiny-cnn", small, checkpoint=tmp_path / "x.pt", **{**KW, "val_size": n})
        assert "\n" not in str(e.value)


def test_holdout_is_seeded_disjoint_and_from_train(small):
    train, val = holdout(small, 50, seed=3)
    assert len(train.train) == 250 and len(val) == 50
    rows = {tuple(r.flatten().tolist()) for r in small.train.x}
    kept = {tuple(r.flatten().tolist()) for r in train.train.x}
    held = {tuple(r.flatten().tolist()) for r in val.x}
    assert held <= rows and kept <= rows and not (kept & held)
    assert torch.equal(val.x, holdout(small, 50, seed=3)[1].x)
    assert not torch.equal(val.x, holdout(small, 50, seed=4)[1].x)
    assert train.test is small.test  # the test split is untouched


def test_val_size_zero_is_the_plain_run(small, tmp_path):
    a = adversarial_train_run("tiny-cnn", small, checkpoint=tmp_path / "a.pt", **KW)
    b = adversarial_train_run("tiny-cnn", small, checkpoint=tmp_path / "b.pt", **{**KW, "val_size": 0})
    assert _same(a.model.state_dict(), b.model.state_dict())
    assert a.checkpoint["metrics"] == b.checkpoint["metrics"]
    assert "selected_epoch" not in b.checkpoint["metrics"]
    assert not any("val_robust_acc" in h for h in b.history)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]


def test_selection_picks_the_best_validation_epoch(small, tmp_path):
    ck = tmp_path / "pgd-at.pt"
    res = adversarial_train_run("tiny-cnn", small, checkpoint=ck, **{**KW, "val_size": 60})
    hist, m = res.history, res.checkpoint["metrics"]
    assert res.checkpoint["data"]["n_train"] == 240  # the held-out images are not trained on
    assert len(hist) == 4 and all({"val_clean_acc", "val_robust_acc"} <= h.keys() for h in hist)
    accs = [h["val_robust_acc"] for h in hist]
    assert m["selected_epoch"] == 1 + accs.index(max(accs))  # argmax, earliest on ties
    assert m["val_robust_acc"] == max(accs) and m["val_size"] == 60 and m["val_steps"] == 10
    assert m["passes_per_example"] == 3 and m["train_seconds"] > 0 and "pgd2_robust_acc" in m
    last, best = selection_paths(ck)
    saved, best_ck, last_ck = load_checkpoint(ck), load_checkpoint(best), load_checkpoint(last)
    assert _same(saved["state_dict"], res.model.state_dict())
    assert _same(best_ck["state_dict"], res.model.state_dict())
    assert best_ck["epoch"] == m["selected_epoch"] and last_ck["epoch"] == 4
    assert "optimizer" in last_ck and "optimizer" not in saved
    assert [h["val_robust_acc"] for h in last_ck["history"]] == accs  # the last epoch's entry is saved
    # the test metrics are those of the selected weights
    model = load_classifier(ck)
    assert abs(pssr.train.evaluate_accuracy(model, small.test) - m["test_acc"]) < 1e-9
    assert m["selected_epoch"] < 4  # this setting's peak (see KW): the last epoch's weights differ
    assert not _same(last_ck["state_dict"], saved["state_dict"])


def test_selection_survives_an_interrupted_run(small, tmp_path):
    kw = {**KW, "val_size": 60}
    whole = adversarial_train_run("tiny-cnn", small, checkpoint=tmp_path / "whole" / "pgd-at.pt", **kw)

    class Stop(Exception):
        pass

    def stop_after_two(rec):
        if rec["epoch"] == 2:
            raise Stop

    ck = tmp_path / "cut" / "pgd-at.pt"
    with pytest.raises(Stop):
        adversarial_train_run("tiny-cnn", small, checkpoint=ck, callbacks=[stop_after_two], **kw)
    # stopped after the loop's checkpoint of epoch 2, before that record's validation entry was saved
    assert "val_robust_acc" not in load_checkpoint(selection_paths(ck)[0])["history"][-1]
    again = adversarial_train_run("tiny-cnn", small, checkpoint=ck, **kw)
    assert again.checkpoint["metrics"]["selected_epoch"] == whole.checkpoint["metrics"]["selected_epoch"]
    assert [h["val_robust_acc"] for h in again.history] == [h["val_robust_acc"] for h in whole.history]
    assert _same(again.model.state_dict(), whole.model.state_dict())
    # a finished run resumed again changes nothing
    done = adversarial_train_run("tiny-cnn", small, checkpoint=ck, **kw)
    assert done.checkpoint["metrics"] == again.checkpoint["metrics"]


def test_best_record_and_passes():
    hist = [
        {"epoch": 1, "val_robust_acc": 0.2},
        {"epoch": 2, "val_robust_acc": 0.5},
        {"epoch": 3, "val_robust_acc": 0.5},
    ]
    assert best_record(hist)["epoch"] == 2 and best_record([{"epoch": 1}]) is None
    assert passes_per_example(AdvTrainConfig(method="trades", steps=10)) == {
        "passes_per_example": 12,
        "forward_passes_per_example": 13,
    }
