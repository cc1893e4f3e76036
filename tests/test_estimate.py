"""The fast attack suite (pssr.attacks.sets) and the evaluation time estimate (pssr.evaluation.estimate)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from pssr.attacks import ATTACKS, BUDGETS
from pssr.attacks.sets import SUITES, attack_set, expand_suites, suite_attacks
from pssr.evaluation import parse_attacks
from pssr.evaluation.estimate import (
    Estimate,
    Passes,
    PassTimes,
    attack_passes,
    estimate_evaluation,
    format_seconds,
    measure_pass_times,
)
from pssr.testing import digits_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mlp_data():
    return digits_mlp()


# ------------------------------------------------------------------------------------ the fast suite
def test_fast_suite_builds_at_every_family_budget(mlp_data):
    model, _ = mlp_data
    for family, by_norm in SUITES["fast"].items():
        assert set(by_norm) == set(BUDGETS[family])  # entries for every norm of the family
        for norm, specs in by_norm.items():
            assert {s.threat_model for s in specs} == {"paper", "adaptive"}
            for s in specs:
                eps = BUDGETS[family][norm]
                assert s.name in ATTACKS and not {"eps", "norm"} & set(s.kwargs)
                atk = s.build(model, eps=eps, norm=norm, seed=1)
                assert atk.eps == eps and atk.norm == norm
            # the adaptive views the suite promises: BPDA (APGD), exact gradients, EOT, gradient-free
            names = {s.name for s in specs if s.threat_model == "adaptive"}
            assert {"autoattack-bpda", "pgd-full", "pgd-bpda-eot", "square"} <= names
    assert attack_set("fast", "cifar10", "l2") == SUITES["fast"]["cifar"]["l2"]
    with pytest.raises(ValueError, match="unknown attack set"):
        attack_set("fastest", "mnist")


def test_expand_suites_gives_what_the_harness_parses():
    assert expand_suites("paper,pgd", "linf") == "paper,pgd"  # nothing to expand: unchanged
    items = expand_suites("fast,fgsm", "linf", "digits")
    assert items[-1] == "fgsm" and all(isinstance(i, dict) for i in items[:-1])
    specs = parse_attacks(items, "digits", "linf")
    by_label = {(s.threat_model, s.label): s for s in specs}
    assert by_label[("adaptive", "pgd-bpda-eot")].for_randomized
    assert by_label[("paper", "apgd")].kwargs == by_label[("adaptive", "apgd-bpda")].kwargs  # reusable twin
    assert by_label[("adaptive", "square")].kwargs["n_queries"] < 5000  # fewer than AutoAttack's Square
    # every norm of the suite has its own entries; eps and norm are left to evaluate()
    l2 = suite_attacks("fast", "l2", "mnist")
    assert l2 and all("eps" not in d and "norm" not in d for d in l2)
    with pytest.raises(ValueError, match="unknown attack suite"):
        suite_attacks("slow")


# ---------------------------------------------------------------------------------------- cost model
def test_attack_passes_count_iterations_restarts_samples_and_queries():
    assert attack_passes("pgd", {}, 10) == Passes(40)  # the registered default: 40 steps, 1 restart
    assert attack_passes("pgd", {"steps": 10, "restarts": 3}, 10) == Passes(30)
    assert attack_passes("pgd-bpda-eot", {"steps": 10, "eot_samples": 5}, 10) == Passes(50)
    assert attack_passes("square", {"n_queries": 300}, 10) == Passes(0, 300)
    assert attack_passes("fgsm", {}, 10) == Passes(1)
    # standard AutoAttack on 10 classes: APGD-CE 100, APGD-T 9 x 100, FAB-T 9 x 100, Square 5000
    aa = attack_passes("autoattack", {}, 10)
    assert aa == Passes(100 + 900 + 900, 900 + 5000)
    assert attack_passes("autoattack", {}, 3).grad < aa.grad  # target classes capped at K - 1
    fast = attack_passes(
        "autoattack-bpda", {"version": "custom", "attacks": ["apgd-ce", "apgd-t"], "n_iter": 50}, 10
    )
    assert fast == Passes(5 * 50 + 9 * 50)  # the package's 5 restarts of APGD-CE in "custom"
    assert attack_passes("autoattack-rand", {}, 10) == Passes(2 * 100 * 20)
    assert attack_passes("transfer", {"attack": "pgd", "attack_kwargs": {"steps": 7}}, 10) == Passes(7)


def test_pass_times_scale_with_batches():
    t = PassTimes(grad=2.0, forward=0.5, batch=10)
    assert t.seconds(Passes(3, 4), 20) == pytest.approx(2 * (3 * 2.0 + 4 * 0.5))
    assert t.seconds(Passes(1), 25) == pytest.approx(2 * 2.0 + 0.5 * 2.0)  # the last half batch


def test_measure_pass_times_restores_mode_and_rng(mlp_data):
    model, data = mlp_data
    model.train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    t = measure_pass_times(model, data.test.x[:4], batch_size=32, repeats=2)
    assert torch.equal(torch.rand(3), expected) and model.training
    model.eval()
    assert t.batch == 32 and t.grad > 0 and t.forward > 0
    with pytest.raises(ValueError, match="N, C, H, W"):
        measure_pass_times(model, data.test.x[0], 8)


class _Slow(nn.Module):
    """A model whose passes take a known time: ``delay`` seconds per forward call."""

    def __init__(self, inner: nn.Module, delay: float, randomized: bool = False) -> None:
        super().__init__()
        self.inner, self.delay, self.randomized = inner, delay, randomized

    def forward(self, x):
        import time

        time.sleep(self.delay)
        return self.inner(x)


def test_estimate_follows_the_harness_and_grows_with_the_work(mlp_data):
    model, data = mlp_data
    x = data.test.x[:8]
    times: dict = {}
    full = estimate_evaluation({"a": model}, "paper,adaptive", 64, x, dataset="digits", times=times)
    fast = estimate_evaluation({"a": model}, "fast", 64, x, dataset="digits", times=times)
    assert len(times) == 1  # the model was timed once for both estimates
    assert isinstance(full, Estimate) and 0 < fast.seconds < full.seconds
    # EOT attacks only on randomized models, transfer only with a surrogate: as the harness runs them
    assert not any(
        label in ("pgd-bpda-eot", "autoattack-rand", "transfer-pgd") for _, _, label in full.per_attack
    )
    more = estimate_evaluation(
        {"a": model, "b": model}, "fast", 64, x, dataset="digits", n_eps=2, times=times
    )
    for (_, tm, label), t in fast.per_attack.items():  # each attack runs at both budgets, on both models
        assert more.per_attack[("a", tm, label)] == more.per_attack[("b", tm, label)] == pytest.approx(2 * t)
    assert math.isclose(sum(more.per_model.values()), more.seconds)
    with pytest.raises(ValueError, match="n must be"):
        estimate_evaluation(model, "fast", 0, x, dataset="digits")


def test_estimate_is_the_cost_model_times_measured_passes(mlp_data):
    # With a forward pass that sleeps 20 ms, the pass times and so the estimate are known to within
    # the model's own (sub-millisecond) cost: PGD-10 on 16 examples in one batch = 10 gradient passes
    # + the clean prediction + the success check and the harness's prediction (3 forward passes).
    model, data = mlp_data
    slow = _Slow(model, 0.02)
    est = estimate_evaluation(
        {"s": slow}, [{"name": "pgd", "steps": 10}], 16, data.test.x[:4], dataset="digits"
    )
    assert est.seconds == pytest.approx(13 * 0.02, rel=0.25)
    rnd = _Slow(model, 0.0, randomized=True)
    est = estimate_evaluation({"r": rnd}, "fast", 16, data.test.x[:4], dataset="digits")
    assert ("r", "adaptive", "pgd-bpda-eot") in est.per_attack


def test_format_seconds_and_text():
    assert (
        format_seconds(3.2) == "3 s"
        and format_seconds(150) == "2 min"
        and format_seconds(3 * 3600) == "3.0 h"
    )
    assert Estimate(1980.0, 50, 4).text() == "estimated ~33 min for 50 images x 4 models"


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_quick_runs_the_fast_suite_and_prints_an_estimate(tmp_path, capsys):
    from pssr.cli import main
    from pssr.data import load
    from pssr.train.classifier import train_classifier

    ck = tmp_path / "clf.pt"
    train_classifier("tiny-cnn", load("digits"), epochs=1, batch_size=128, checkpoint=str(ck), progress=False)
    out, res = tmp_path / "rep", tmp_path / "r.json"
    argv = ["evaluate", "--checkpoint", f"none={ck}", "--data", "digits", "--out", str(out), "--no-progress"]
    assert main([*argv, "--quick", "--n", "4", "--no-checks", "--results", str(res)]) == 0
    printed = capsys.readouterr().out
    assert "estimated ~" in printed and "for 4 images x 1 model" in printed
    d = json.loads(res.read_text())
    assert d == json.loads((out / "report.json").read_text())
    assert d["config"]["n"] == 4
    labels = {(a["threat_model"], a["label"]) for a in d["config"]["attacks"]}
    assert {("paper", "apgd"), ("adaptive", "apgd-bpda"), ("adaptive", "square")} <= labels
    # on a plain classifier the adaptive APGD is the paper column's: reused, not run twice
    row = next(r for r in d["results"] if r["attack"] == "apgd-bpda")
    assert row["reused_from"] == "paper/apgd"
    assert main([*argv, "--quick", "--attacks", "pgd"]) == 2
    assert "--quick runs the fast suite" in capsys.readouterr().err
