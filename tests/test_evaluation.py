"""The evaluation harness: invariants of the numbers, checks that catch masking, resume, reports, CLI."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pssr.data
from pssr.attacks.base import ATTACKS, Attack
from pssr.evaluation import CheckConfig, Report, evaluate, parse_attacks, render_markdown, rerender
from pssr.evaluation import runner as runner_mod  # the harness's runner: where attacks are created
from pssr.evaluation import state as state_mod
from pssr.testing import accuracy, digits_mlp

# ------------------------------------------------------------------------------------------------
# Tiny attacks, defined here so that these tests depend only on the Attack base interface.
# ------------------------------------------------------------------------------------------------


def _view(model: nn.Module, bpda: bool) -> nn.Module:
    fn = getattr(model, "bpda", None)
    return fn() if bpda and callable(fn) else model


class _TPGD(Attack):
    """Linf/L2 PGD with a seeded random start, CE loss; ``bpda`` takes gradients through model.bpda()."""

    name = "t-pgd"
    bpda = False

    def __init__(self, model, eps, norm="linf", seed=0, steps=10, random_start=True):
        super().__init__(model, eps, norm, seed)
        self.steps, self.random_start = steps, random_start

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        g = self.generator(x.device)
        grad_model = _view(self.model, self.bpda)
        x_adv = x.clone()
        if self.random_start:
            x_adv = (x + (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * self.eps).clamp(0, 1)
        alpha = 2.5 * self.eps / self.steps
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = F.cross_entropy(grad_model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            if self.norm == "linf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x_adv = _project(x_adv.detach() + alpha * step, x, self.eps, self.norm)
        return x_adv

    def config(self):
        return {**super().config(), "steps": self.steps}


class _TPGDBPDA(_TPGD):
    name = "t-pgd-bpda"
    bpda = True


class _TFGSM(Attack):
    name = "t-fgsm"

    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(self.model(x), y), x)
        return x.detach() + self.eps * grad.sign()


class _TRandomSearch(Attack):
    """Gradient-free: random Linf vertices, keep a proposal when the margin drops (a crude Square)."""

    name = "t-search"
    gradient_free = True

    def __init__(self, model, eps, norm="linf", seed=0, iters=60):
        super().__init__(model, eps, norm, seed)
        self.iters = iters

    @torch.no_grad()
    def perturb(self, x: Tensor, y: Tensor) -> Tensor:
        g = self.generator(x.device)

        def margin(xa: Tensor) -> Tensor:
            z = self.model(xa)
            zy = z.gather(1, y[:, None]).squeeze(1)
            return zy - z.scatter(1, y[:, None], float("-inf")).amax(1)

        sign = torch.randint(0, 2, x.shape, generator=g, device=x.device).float() * 2 - 1
        best = (x + self.eps * sign).clamp(0, 1)
        best_m = margin(best)
        for _ in range(self.iters):
            flip = torch.rand(x.shape, generator=g, device=x.device) < 0.1
            sign = torch.where(flip, -sign, sign)
            cand = (x + self.eps * sign).clamp(0, 1)
            m = margin(cand)
            better = m < best_m
            best = torch.where(better.view(-1, 1, 1, 1), cand, best)
            best_m = torch.where(better, m, best_m)
            sign = torch.where(better.view(-1, 1, 1, 1), sign, torch.where(flip, -sign, sign))
        return best


def _project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    d = x_adv - x
    if norm == "linf":
        d = d.clamp(-eps, eps)
    else:
        d = d * (eps / d.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
    return (x + d).clamp(0, 1)


for _cls in (_TPGD, _TPGDBPDA, _TFGSM, _TRandomSearch):
    if _cls.name not in ATTACKS:
        ATTACKS.register(_cls.name)(_cls)

CHECKS = CheckConfig(n=48, large_eps_attacks=("t-pgd", "t-pgd-bpda"))


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# Tiny models on the embedded digits data
# ------------------------------------------------------------------------------------------------


class Quantize(nn.Module):
    """A gradient-masking 'defense': 2-level quantization, zero input gradient; BPDA view available."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def purify(self, x: Tensor) -> Tensor:
        return (x.detach() > 0.5).float()

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.purify(x) + 0 * x)

    def bpda(self) -> nn.Module:
        parent = self

        class View(nn.Module):
            def forward(self, x: Tensor) -> Tensor:
                return parent.classifier(x + (parent.purify(x) - x).detach())

        return View()


class Noisy(nn.Module):
    """A randomized defense with its own seeded stream (``reseed``), to test resume determinism."""

    def __init__(self, classifier: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.classifier, self.sigma = classifier, sigma
        self.gen = torch.Generator().manual_seed(0)

    def reseed(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def purify(self, x: Tensor) -> Tensor:
        noise = torch.randn(x.shape, generator=self.gen) * self.sigma
        return (x + noise.to(x.device)).clamp(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.purify(x))


@pytest.fixture(scope="module")
def digits():
    return pssr.data.load("digits")


@pytest.fixture(scope="module")
def clf(digits):
    model, _ = digits_mlp()  # 64-64-10 MLP, 150 full-batch Adam steps
    acc = accuracy(model, digits.test.x, digits.test.y)
    assert acc > 0.9, acc
    return model


def _res(report: Report, model: str, threat: str, attack: str, eps: float) -> float:
    return report.accuracy(model, attack, threat, eps)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_parse_attacks_names_dicts_threats_and_labels():
    specs = parse_attacks(
        ["t-pgd", "t-pgd@adaptive", {"name": "t-pgd", "steps": 3, "threat_model": "adaptive"}, "t-fgsm"]
    )
    assert [(s.name, s.threat_model, s.label) for s in specs] == [
        ("t-pgd", "paper", "t-pgd"),
        ("t-pgd", "adaptive", "t-pgd"),
        ("t-pgd", "adaptive", "t-pgd#2"),
        ("t-fgsm", "paper", "t-fgsm"),
    ]
    assert dict(specs[2].kwargs) == {"steps": 3}
    assert [s.label for s in parse_attacks("t-fgsm, t-pgd@adaptive")] == ["t-fgsm", "t-pgd"]
    with pytest.raises(ValueError, match="threat_model"):
        parse_attacks("t-pgd@whitebox")
    with pytest.raises(ValueError, match="'name'"):
        parse_attacks([{"steps": 3}])


def test_argument_validation(clf, digits):
    with pytest.raises(ValueError, match="eps"):
        evaluate({"m": clf}, digits.test, attacks="t-fgsm", eps=-0.1, n=8, progress=False)
    with pytest.raises(ValueError, match="norm"):
        evaluate({"m": clf}, digits.test, attacks="t-fgsm", eps=0.1, norm="l1", n=8, progress=False)
    with pytest.raises(ValueError, match="gray_box_source"):
        evaluate(
            {"m": clf},
            digits.test,
            attacks="t-fgsm",
            eps=0.1,
            n=8,
            progress=False,
            gray_box_source={"other": clf},
        )
    with pytest.raises(ValueError, match="non-empty dict"):
        evaluate({}, digits.test, attacks="t-fgsm", eps=0.1)
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate(
            {"m": clf}, digits.test, attacks="no-such-attack", eps=0.1, n=8, progress=False, checks=False
        )


def test_invariants_robust_le_clean_and_worst_le_each_attack(clf, digits):
    noisy = Noisy(clf, sigma=0.05)
    rep = evaluate(
        {"none": clf, "noisy": noisy},
        digits.test,
        attacks=["t-fgsm", "t-pgd", "t-pgd@adaptive", "t-search@adaptive"],
        eps=[0.05, 0.15],
        n=96,
        batch_size=40,
        progress=False,
        checks=CHECKS,
    )
    eps_list = [0.05, 0.15]
    for m in ("none", "noisy"):
        clean = rep.accuracy(m, "clean")
        assert 0.5 < clean <= 1
        for e in eps_list:
            worst_all = _res(rep, m, "all", "worst-case", e)
            for t, attacks in (("paper", ["t-fgsm", "t-pgd"]), ("adaptive", ["t-pgd", "t-search"])):
                worst = _res(rep, m, t, "worst-case", e)
                accs = [_res(rep, m, t, a, e) for a in attacks]
                assert all(a <= clean + 1e-12 for a in accs)
                assert worst <= min(accs) + 1e-12
                assert worst_all <= worst + 1e-12
        # a larger budget never helps the defense under the same deterministic attack on the classifier
        if m == "none":
            assert _res(rep, m, "paper", "t-pgd", 0.15) <= _res(rep, m, "paper", "t-pgd", 0.05) + 1e-12
    # the attacks really bite the undefended classifier
    assert _res(rep, "none", "paper", "t-pgd", 0.15) < rep.accuracy("none", "clean") - 0.3
    # record-level invariants
    clean_ok = {(r["model"], r["index"]): r["correct"] for r in rep.records if r["attack"] == "clean"}
    for r in rep.records:
        if r["correct"]:
            assert clean_ok[(r["model"], r["index"])]
        assert r["pert_norm"] <= r["eps"] + 1e-5
        assert r["correct"] == (r["adv_pred"] == r["label"] and (r["attacked"] or r["attack"] == "clean"))
    # the noisy model's forward is random: flagged
    assert "random_forward" in {f["name"] for f in rep.flags("noisy")}
    assert "random_forward" not in {f["name"] for f in rep.flags("none")}
    # the undefended classifier is its own gray-box source; the noisy defense's is its classifier
    assert rep.models["none"]["gray_box_source"] == "self"
    assert rep.models["noisy"]["gray_box_source"] == "classifier"


def test_gradient_masking_defense_is_flagged_and_broken(clf, digits):
    masked = Quantize(clf)
    rep = evaluate(
        {"none": clf, "masked": masked},
        digits.test,
        attacks=["t-pgd@adaptive", "t-pgd-bpda@adaptive", "t-search@adaptive"],
        eps=0.25,
        n=96,
        batch_size=48,
        progress=False,
        checks=CHECKS,
    )
    names = {f["name"] for f in rep.flags("masked")}
    assert "zero_gradients" in names
    assert "large_eps_not_broken" in names
    assert rep.models["masked"]["checks"]["gradients"]["zero_fraction"] == 1.0
    assert not {"zero_gradients", "large_eps_not_broken"} & {f["name"] for f in rep.flags("none")}
    plain = _res(rep, "masked", "adaptive", "t-pgd", 0.25)
    worst = _res(rep, "masked", "adaptive", "worst-case", 0.25)
    # plain PGD is blind (only its random start can flip a prediction) but BPDA / search are not,
    # so the reported robust accuracy (worst case) is far below what plain PGD suggests
    assert worst <= 0.5 * plain
    assert (
        min(
            _res(rep, "masked", "adaptive", "t-pgd-bpda", 0.25),
            _res(rep, "masked", "adaptive", "t-search", 0.25),
        )
        < plain - 0.2
    )
    md = render_markdown(rep.to_dict())
    assert "masked ⚠" in md and "zero_gradients" in md


def test_gradient_free_and_gap_flags(clf, digits):
    masked = Quantize(clf)
    rep = evaluate(
        {"masked": masked},
        digits.test,
        attacks=["t-pgd", "t-pgd@adaptive", "t-search@adaptive"],
        gray_box_source={"masked": masked},  # 'paper' attacks also blind: both blind PGDs
        eps=0.25,
        n=64,
        batch_size=64,
        progress=False,
        checks=CHECKS,
    )
    names = {f["name"] for f in rep.flags("masked")}
    assert "black_box_beats_white_box" in names
    # paper protocol through the masked model ~ clean accuracy; adaptive (search) much lower
    assert "adaptive_much_lower" in names
    gf = rep.models["masked"]["checks"]["black_box"]
    assert any(v["only_black_box_broken"] > 0 for v in gf.values())


class _Collapsed(nn.Module):
    """A degenerate defense: the classifier of one fixed image, whatever the input (a purifier that
    learned to output a constant)."""

    def __init__(self, classifier: nn.Module, image: Tensor) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("image", image)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.image.expand_as(x) + 0 * x)


def test_a_collapsed_model_is_flagged_not_called_robust(clf, digits):
    collapsed = _Collapsed(clf, digits.test.x[:1].clone())
    rep = evaluate(
        {"none": clf, "collapsed": collapsed},
        digits.test,
        attacks=["t-pgd@adaptive"],
        eps=0.25,
        n=60,
        batch_size=60,
        progress=False,
        checks=CHECKS,
    )
    flags = [f for f in rep.flags("collapsed") if f["name"] == "collapsed_predictions"]
    assert len(flags) == 1 and "100%" in flags[0]["message"]
    share = rep.models["collapsed"]["checks"]["collapse"]["label_share"]
    # its "robust" accuracy is exactly the share of its one class among the labels
    assert math.isclose(_res(rep, "collapsed", "adaptive", "worst-case", 0.25), share)
    assert not [f for f in rep.flags("none") if f["name"] == "collapsed_predictions"]


def test_identity_defense_scores_as_no_defense(clf, digits):
    from pssr.defense.baselines import create_baseline

    ident = create_baseline("identity", clf)
    rep = evaluate(
        {"none": clf, "identity": ident},
        digits.test,
        attacks=["t-fgsm", "t-pgd", "t-pgd@adaptive", "t-search@adaptive"],
        eps=0.1,
        n=64,
        batch_size=32,
        progress=False,
        checks=CHECKS,
    )

    def strip(r):
        return {k: v for k, v in r.items() if k != "model"}

    a = [strip(r) for r in rep.records if r["model"] == "none"]
    b = [strip(r) for r in rep.records if r["model"] == "identity"]
    assert a == b
    # the identity "defense" changes nothing: the inert-defense check says so, and nothing else is flagged
    assert [f["name"] for f in rep.flags("identity")] == ["inert_defense"] and rep.flags("none") == []


def _interrupt_at_attack_save(monkeypatch, k: int):
    """Make the k-th save of an attack unit's chunk raise KeyboardInterrupt right after it is written (an
    interruption between batches); return the original StateStore.save."""
    orig = state_mod.StateStore.save
    saves = []

    def failing_save(self, unit):
        orig(self, unit)
        if unit.key.startswith("attack|"):
            saves.append(unit.key)
            if len(saves) == k:
                raise KeyboardInterrupt(f"injected interruption after attack chunk save {k}")

    monkeypatch.setattr(state_mod.StateStore, "save", failing_save)
    return orig


def test_resume_after_interruption_gives_identical_records(clf, digits, tmp_path, monkeypatch, caplog):
    models = {"none": clf, "noisy": Noisy(clf, sigma=0.05)}
    kw = dict(
        attacks=["t-fgsm", "t-pgd@adaptive"],
        eps=[0.1, 0.2],
        n=50,
        batch_size=16,
        progress=False,
        checks=CHECKS,
        seed=3,
    )
    full = evaluate(models, digits.test, **kw)

    orig = _interrupt_at_attack_save(monkeypatch, 1)
    state_dir = tmp_path / "state"
    with pytest.raises(KeyboardInterrupt):
        evaluate(models, digits.test, state_dir=str(state_dir), **kw)
    monkeypatch.setattr(state_mod.StateStore, "save", orig)
    idx = json.loads((state_dir / "state.json").read_text())
    partial = [k for k, v in idx["units"].items() if k.startswith("attack|") and not v["complete"]]
    assert len(partial) == 1  # one attack unit stopped after its first chunk

    caplog.set_level("INFO", logger="pssr.evaluation.harness")
    caplog.clear()
    resumed = evaluate(models, digits.test, state_dir=str(state_dir), **kw)
    assert resumed.records == full.records
    # a log line per unit computed (long runs go without a progress bar): the partial one says where it resumed
    lines = [r.getMessage() for r in caplog.records if ": accuracy " in r.getMessage()]
    assert [m for m in lines if "(resumed at batch 2)" in m] == [
        m for m in lines if m.startswith(partial[0] + ":")
    ]
    logged = [m.split(": accuracy ")[0] for m in lines]
    done_before = {k for k, v in idx["units"].items() if v["complete"]}
    assert partial[0] in logged and len(logged) == len(set(logged)) and not set(logged) & done_before
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
    assert strip(resumed.results) == strip(full.results)
    # rerunning a finished state recomputes nothing and gives the same records again
    caplog.clear()
    again = evaluate(models, digits.test, state_dir=str(state_dir), **kw)
    assert again.records == full.records
    assert not [r for r in caplog.records if ": accuracy " in r.getMessage()]
    # other settings reuse what they share (checks, clean passes) and compute the rest
    saved = []
    monkeypatch.setattr(
        state_mod.StateStore, "save", lambda self, unit: (saved.append(unit.key), orig(self, unit))
    )
    other = evaluate(models, digits.test, state_dir=str(state_dir), **{**kw, "eps": [0.3]})
    assert saved and all(k.startswith("attack|") and k.endswith("|0.3") for k in saved)
    assert other.records == evaluate(models, digits.test, **{**kw, "eps": [0.3]}).records


def test_report_only_shows_what_an_unfinished_evaluation_saved(clf, digits, tmp_path, monkeypatch):
    models = {"none": clf, "noisy": Noisy(clf, sigma=0.05)}
    kw = dict(
        attacks=["t-fgsm", "t-pgd@adaptive"],
        eps=[0.1],
        n=50,
        batch_size=16,
        progress=False,
        checks=CHECKS,
        seed=3,
    )
    state_dir = tmp_path / "state"
    with pytest.raises(ValueError, match="holds none"):
        evaluate(models, digits.test, state_dir=state_dir, compute=False, **kw)
    orig = _interrupt_at_attack_save(
        monkeypatch, 6
    )  # none: t-fgsm done (4 batches), t-pgd stopped after 2 of 4
    with pytest.raises(KeyboardInterrupt):
        evaluate(models, digits.test, state_dir=state_dir, **kw)
    monkeypatch.setattr(state_mod.StateStore, "save", orig)

    def no_attacks(*a, **k):
        raise AssertionError("report-only mode ran an attack")

    with monkeypatch.context() as m:
        m.setattr(runner_mod, "_create_attack", no_attacks)
        m.setattr(runner_mod.checks_mod, "run_pre_checks", no_attacks)
        rep = evaluate(models, digits.test, state_dir=state_dir, compute=False, **kw)
    assert rep.config["complete"] is False
    assert rep.models["none"]["pending"] == {"adaptive/t-pgd": "2 of 4 batches saved"}
    assert set(rep.models["noisy"]["pending"]) >= {"paper/t-fgsm", "adaptive/t-pgd"}
    full = evaluate(models, digits.test, **kw)
    assert {(r["model"], r["attack"]) for r in rep.records} == {("none", "clean"), ("none", "t-fgsm")}
    assert [r for r in rep.records if r["model"] == "none"] == [
        r for r in full.records if r["model"] == "none" and r["attack"] != "t-pgd"
    ]
    # a worst case over fewer attacks than its threat model's would be an upper bound: left out
    worst = {(r["model"], r["threat_model"]) for r in rep.results if r["attack"] == "worst-case"}
    assert worst == {("none", "paper")}
    md = render_markdown(rep.to_dict())
    assert "Partial report" in md and "pending: adaptive/t-pgd (2 of 4 batches saved)" in md
    # finished, the report-only view is the whole report
    evaluate(models, digits.test, state_dir=state_dir, **kw)
    done = evaluate(models, digits.test, state_dir=state_dir, compute=False, **kw)
    assert done.config["complete"] is True and done.records == full.records
    assert "Partial report" not in render_markdown(done.to_dict())


def test_compute_a_subset_of_models_reports_the_others_from_the_state(clf, digits, tmp_path, monkeypatch):
    models = {"none": clf, "noisy": Noisy(clf, sigma=0.05)}
    kw = dict(
        attacks=["t-fgsm", "t-pgd@adaptive"],
        eps=[0.1],
        n=40,
        batch_size=16,
        progress=False,
        checks=CHECKS,
        seed=3,
    )
    state_dir = tmp_path / "state"
    with pytest.raises(ValueError, match=r"compute names \['nope'\]"):
        evaluate(models, digits.test, state_dir=state_dir, compute=["nope"], **kw)
    for bad in ("noisy", [], [3]):
        with pytest.raises(ValueError, match="non-empty collection of model names"):
            evaluate(models, digits.test, state_dir=state_dir, compute=bad, **kw)
    attacked = []
    orig = runner_mod._create_attack

    def spy(name, model, *a, **k):
        attacked.append(name)
        return orig(name, model, *a, **k)

    monkeypatch.setattr(runner_mod, "_create_attack", spy)
    # a state folder with nothing in it yet: "noisy" alone is computed, "none" is pending
    rep = evaluate(models, digits.test, state_dir=state_dir, compute={"noisy"}, **kw)
    assert set(attacked) == {"t-fgsm", "t-pgd"}  # noisy's units (and its example grid)
    assert rep.config["complete"] is False and "pending" not in rep.models["noisy"]
    assert set(rep.models["none"]["pending"]) == {"checks", "clean", "paper/t-fgsm", "adaptive/t-pgd"}
    full = evaluate(models, digits.test, **kw)
    assert [r for r in rep.records if r["model"] == "noisy"] == [
        r for r in full.records if r["model"] == "noisy"
    ]
    # then the other model: the state is complete, the report is the whole one
    attacked.clear()
    rest = evaluate(models, digits.test, state_dir=state_dir, compute=["none"], **kw)
    assert sorted(attacked) == ["t-fgsm", "t-pgd"]  # none's units alone
    assert rest.config["complete"] is True and rest.records == full.records


@dataclasses.dataclass
class _Level:
    level: float = 0.5


class Threshold(Quantize):
    """Quantize with its threshold in a ``config`` dataclass: a setting the weights do not show."""

    def __init__(self, classifier: nn.Module, level: float) -> None:
        super().__init__(classifier)
        self.config = _Level(level)

    def purify(self, x: Tensor) -> Tensor:
        return (x.detach() > self.config.level).float()


def test_state_is_reused_unit_by_unit_never_across_changed_inputs(clf, digits, tmp_path, monkeypatch):
    kw = dict(
        attacks=["t-fgsm", "t-pgd-bpda@adaptive"],
        eps=[0.1],
        n=40,
        batch_size=20,
        progress=False,
        checks=CHECKS,
    )
    state = str(tmp_path / "state")
    orig = state_mod.StateStore.save
    saved: list[str] = []
    monkeypatch.setattr(
        state_mod.StateStore, "save", lambda self, unit: (saved.append(unit.key), orig(self, unit))
    )

    def run(models):
        saved.clear()
        rep = evaluate(models, digits.test, state_dir=state, **kw)
        computed = {k.split("|")[1] for k in saved}
        assert rep.records == evaluate(models, digits.test, **kw).records  # as a fresh evaluation
        return computed

    assert run({"none": clf}) == {"none"}
    assert run({"none": clf, "q": Threshold(clf, 0.5)}) == {"q"}  # a model added: the other one reused
    assert run({"none": clf, "q": Threshold(clf, 0.3)}) == {"q"}  # same weights, other config: recomputed
    assert run({"none": clf, "q": Threshold(clf, 0.5)}) == set()  # back again: both kept in the folder
    # a version-1 state (units without fingerprints) is resumed only with its own settings ...
    state = str(tmp_path / "v1")
    assert run({"none": clf}) == {"none"}
    idx_path = tmp_path / "v1" / "state.json"
    idx = json.loads(idx_path.read_text())
    idx["version"] = 1
    idx["units"] = {k: {kk: vv for kk, vv in v.items() if kk != "fp"} for k, v in idx["units"].items()}
    idx_path.write_text(json.dumps(idx))
    with pytest.raises(ValueError, match="no fingerprints"):
        evaluate({"none": clf, "q": Threshold(clf, 0.5)}, digits.test, state_dir=state, **kw)
    # ... which stamps its units, after which other settings reuse them
    assert run({"none": clf}) == set()
    assert all(v.get("fp") for v in json.loads(idx_path.read_text())["units"].values())
    assert run({"none": clf, "q": Threshold(clf, 0.5)}) == {"q"}


def test_report_roundtrip_markdown_and_plots(clf, digits, tmp_path):
    rep = evaluate(
        {"none": clf, "masked": Quantize(clf)},
        digits.test,
        attacks=["t-fgsm", "t-pgd-bpda@adaptive"],
        eps=[0.1, 0.2],
        n=40,
        batch_size=40,
        progress=False,
        checks=CHECKS,
        n_examples=4,
    )
    out = rep.save(tmp_path / "report")
    for f in (
        "report.json",
        "records.jsonl",
        "report.md",
        "accuracy_vs_eps.png",
        "examples_masked.png",
        "examples_masked.npz",
    ):
        assert (out / f).is_file(), f
    assert "examples_none.png" not in rep.plots  # no purify method
    d = json.loads((out / "report.json").read_text())
    assert d == json.loads(json.dumps(rep.to_dict()))
    for key in ("schema", "schema_version", "config", "metadata", "models", "results", "plots"):
        assert key in d
    assert d["metadata"]["torch_version"] == torch.__version__
    assert d["config"]["eps"] == [0.1, 0.2] and d["config"]["n"] == 40
    assert set(d["models"]["masked"]["summary"]["worst_case"]) == {"paper", "adaptive", "all"}
    assert len((out / "records.jsonl").read_text().splitlines()) == d["n_records"] == len(rep.records)

    back = Report.load(out)
    assert back.to_dict() == rep.to_dict()
    assert back.records == rep.records
    assert set(back.examples) == {"masked"}

    md = (out / "report.md").read_text()
    assert md == render_markdown(d)
    assert "Paper protocol" in md and "Adaptive" in md and "worst case" in md
    pgd_acc = rep.accuracy("none", "t-pgd-bpda", "adaptive", 0.2)
    assert f"{100 * pgd_acc:.1f}" in md
    (out / "report.md").unlink()
    (out / "accuracy_vs_eps.png").unlink()
    rerender(out)
    assert (out / "report.md").read_text() == md and (out / "accuracy_vs_eps.png").is_file()
    with pytest.raises(FileNotFoundError):
        Report.load(tmp_path / "nowhere")
    # committed results keep gzipped records: pssr report --compress, read back by Report.load
    from pssr.cli import main

    assert main(["report", "--compress", str(out)]) == 0
    assert not (out / "records.jsonl").exists() and (out / "records.jsonl.gz").is_file()
    assert Report.load(out).records == rep.records and "records.jsonl.gz" in (out / "report.md").read_text()


def test_no_checks_and_strict_json(clf, digits, tmp_path):
    rep = evaluate(clf, digits.test, attacks="t-fgsm", eps=0.1, n=10, progress=False, checks=False)
    d = rep.to_dict()
    assert d["models"]["model"]["checks"] is None and d["config"]["checks"] is None
    text = json.dumps(d, allow_nan=False)  # NaN/inf never reach the JSON
    assert "t-fgsm" in text
    assert math.isclose(
        rep.accuracy("model", "clean"), sum(r["correct"] for r in rep.records if r["attack"] == "clean") / 10
    )


def test_cli_evaluate_baseline_spec_and_report(digits, tmp_path, capsys):
    from pssr.cli import main
    from pssr.train.classifier import train_classifier

    ck = tmp_path / "clf.pt"
    train_classifier("tiny-cnn", digits, epochs=1, batch_size=128, checkpoint=str(ck), progress=False, seed=0)
    out = tmp_path / "rep"
    argv = [
        "evaluate",
        "--checkpoint",
        f"none={ck}",
        "--checkpoint",
        f"jpeg:quality=60@{ck}",
        "--data",
        "digits",
        "--attacks",
        "t-fgsm,t-fgsm@adaptive",
        "--eps",
        "0.1,2/10",
        "--n",
        "16",
        "--batch-size",
        "16",
        "--out",
        str(out),
        "--no-checks",
        "--no-progress",
    ]
    assert main(argv) == 0
    d = json.loads((out / "report.json").read_text())
    assert set(d["models"]) == {"none", "jpeg(quality=60)"}
    assert d["config"]["eps"] == [0.1, 0.2]
    assert d["models"]["jpeg(quality=60)"]["gray_box_source"] == "classifier"
    # rerunning the same command resumes from OUT/state and gives the same numbers
    strip = lambda rows: [{k: v for k, v in r.items() if "second" not in k} for r in rows]  # noqa: E731
    first = strip(d["results"])
    assert main(argv) == 0
    assert strip(json.loads((out / "report.json").read_text())["results"]) == first
    # --report-only with a model added: the saved units reported, the new model's pending
    capsys.readouterr()
    assert main([*argv, "--checkpoint", f"bits=bit-depth@{ck}", "--report-only"]) == 0
    d = json.loads((out / "report.json").read_text())
    assert d["config"]["complete"] is False and "clean" in d["models"]["bits"]["pending"]
    assert "partial report" in capsys.readouterr().out
    # --only: the added model computed, the others reported from the state; with --report-only: refused
    assert main([*argv, "--checkpoint", f"bits=bit-depth@{ck}", "--only", "bits"]) == 0
    d = json.loads((out / "report.json").read_text())
    assert d["config"]["complete"] is True and strip(r for r in d["results"] if r["model"] != "bits") == first
    assert main([*argv, "--only", "bits", "--report-only"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main([*argv, "--only", "nope"]) == 2
    assert "compute names ['nope']" in capsys.readouterr().err
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file()
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                f"nope:x=1@{ck}",
                "--data",
                "digits",
                "--eps",
                "0.1",
                "--out",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )


def test_real_attack_sets_expand_and_run_with_dataset_defaults(clf, digits):
    from pssr.attacks import BUDGETS, attack_set
    from pssr.defense.baselines import create_baseline

    specs = parse_attacks("paper,adaptive", "digits")
    want = [(e.label, t) for t in ("paper", "adaptive") for e in attack_set(t, "digits", "linf")]
    assert [(s.label, s.threat_model) for s in specs] == want
    assert all(s.threat_model == "paper" for s in parse_attacks("paper", "digits", norm="l2"))
    assert {s.label for s in parse_attacks("paper", "digits", norm="l2")} == {
        e.label for e in attack_set("paper", "digits", "l2")
    }
    pgd = next(s for s in specs if s.label == "pgd")
    assert (
        pgd.kwargs["steps"]
        == dict(next(e for e in attack_set("paper", "digits") if e.label == "pgd").kwargs)["steps"]
    )
    with pytest.raises(ValueError, match="dataset"):
        parse_attacks("paper", None)

    jpeg = create_baseline("jpeg", clf, quality=50)
    rep = evaluate(
        {"none": clf, "jpeg": jpeg},
        digits,  # a Dataset: test split, digits budgets
        attacks=[
            {"name": "pgd", "steps": 5},
            {"name": "square", "n_queries": 30},
            {"name": "transfer-pgd", "attack_kwargs": {"steps": 5}},
            {"name": "pgd-bpda-eot", "steps": 2, "eot_samples": 2},
        ],
        n=24,
        progress=False,
        checks=False,
    )
    assert rep.config["eps"] == [BUDGETS["digits"]["linf"]] and rep.config["dataset"] == "digits"
    assert set(rep.models["none"]["skipped_attacks"]) == {"adaptive/transfer-pgd", "adaptive/pgd-bpda-eot"}
    assert set(rep.models["jpeg"]["skipped_attacks"]) == {"adaptive/pgd-bpda-eot"}
    row = next(r for r in rep.results if r["model"] == "jpeg" and r["attack"] == "transfer-pgd")
    assert row["black_box"] and row["target"] == "model" and row["config"]["attack_config"]["steps"] == 5
    sq = next(r for r in rep.results if r["model"] == "jpeg" and r["attack"] == "square")
    assert sq["gradient_free"] and sq["threat_model"] == "adaptive" and sq["config"]["n_queries"] == 30
    for m in ("none", "jpeg"):
        assert rep.accuracy(m, "worst-case", "all", 0.1) <= rep.accuracy(m, "pgd", "paper", 0.1)


def test_adaptive_attacks_on_a_plain_model_reuse_their_paper_twins(clf, digits, tmp_path):
    """On a model without a BPDA view that is its own source, AutoAttack-BPDA, AutoAttack with exact
    gradients and full-gradient PGD are the paper column's attacks with the same settings: copied, not rerun."""
    aa = {"version": "custom", "attacks": ["apgd-ce"], "n_iter": 5}
    attacks = [
        {"name": "autoattack", **aa},
        {"name": "autoattack-bpda", "threat_model": "adaptive", **aa},
        {"name": "autoattack", "threat_model": "adaptive", "label": "autoattack-full", **aa},
        {"name": "pgd", "steps": 3},
        {"name": "pgd-full", "steps": 3, "threat_model": "adaptive"},
        {"name": "pgd-full", "steps": 4, "threat_model": "adaptive", "label": "pgd-full-4"},
    ]
    rep = evaluate(
        {"none": clf, "quant": Quantize(clf)},
        digits.test,
        attacks=attacks,
        eps=0.1,
        n=40,
        batch_size=20,
        progress=False,
        checks=False,
        state_dir=tmp_path / "state",
    )
    rows = {(r["model"], r["threat_model"], r["attack"]): r for r in rep.results}
    reused = rows[("none", "adaptive", "autoattack-bpda")]
    assert reused["reused_from"] == "paper/autoattack" and reused["seconds"] == 0.0
    assert reused["accuracy"] == rows[("none", "paper", "autoattack")]["accuracy"]
    # AutoAttack with exact gradients and PGD with pgd's settings are the paper attacks on such a model
    full = rows[("none", "adaptive", "autoattack-full")]
    assert full["reused_from"] == "paper/autoattack" and full["seconds"] == 0.0
    assert rows[("none", "adaptive", "pgd-full")]["reused_from"] == "paper/pgd"
    assert "reused_from" not in rows[("none", "adaptive", "pgd-full-4")]  # other settings: run
    # through a defense whose gray-box source is the classifier, the adaptive attacks are their own runs
    assert not any("reused_from" in rows[("quant", "adaptive", a)] for a in ("autoattack-full", "pgd-full"))
    assert (
        "reused_from" not in rows[("quant", "adaptive", "autoattack-bpda")]
    )  # a BPDA view: a run of its own
    assert rows[("quant", "adaptive", "autoattack-bpda")]["seconds"] > 0

    def of(model, threat, attack):
        return [
            {k: v for k, v in r.items() if k not in ("threat_model", "attack")}
            for r in rep.records
            if r["model"] == model and r["threat_model"] == threat and r["attack"] == attack
        ]

    paper = of("none", "paper", "autoattack")
    assert paper and of("none", "adaptive", "autoattack-bpda") == paper == of(
        "none", "adaptive", "autoattack-full"
    )
    assert of("none", "adaptive", "pgd-full") == of("none", "paper", "pgd")
    assert "records of paper/autoattack" in render_markdown(rep.to_dict())
    again = evaluate(
        {"none": clf, "quant": Quantize(clf)},
        digits.test,
        attacks=attacks,
        eps=0.1,
        n=40,
        batch_size=20,
        progress=False,
        checks=False,
        state_dir=tmp_path / "state",
    )
    assert again.records == rep.records  # resumed from the saved (copied) unit


def test_a_class_sorted_first_n_is_reported(clf, digits, caplog):
    """Evaluating the first n of a split stored class by class covers a class or two: the report says so."""
    from pssr.data import Split

    order = digits.test.y.argsort(stable=True)
    sorted_split = Split(digits.test.x[order], digits.test.y[order])
    caplog.set_level("WARNING", logger="pssr.evaluation.harness")
    rep = evaluate(
        {"none": clf}, sorted_split, attacks=["t-fgsm"], eps=0.1, n=20, progress=False, checks=False
    )
    cov = rep.config["classes"]
    assert cov["in_subset"] == 1 and cov["in_split"] == 10 and cov["missing"] == list(range(1, 10))
    assert any("1 of the split's 10 classes" in r.getMessage() for r in caplog.records)
    assert "1 of 10 classes" in render_markdown(rep.to_dict())
    # a random subset (or the loaders' shuffled splits) covers them
    caplog.clear()
    rep = evaluate(
        {"none": clf},
        sorted_split,
        attacks=["t-fgsm"],
        eps=0.1,
        n=60,
        subset_seed=0,
        progress=False,
        checks=False,
    )
    assert rep.config["classes"]["missing"] == [] and "classes" not in caplog.text
