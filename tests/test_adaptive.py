"""Adaptive machinery: BPDA / straight-through, EOT, gradient views, and the adaptive attacks on
defenses that mask gradients (quantization, detach), randomize, or do nothing (identity)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pssr.attacks import (
    EOT,
    PGD,
    BPDAWrapper,
    bpda,
    bpda_view,
    create_attack,
    full_gradient_view,
    straight_through,
)
from pssr.testing import accuracy, digits_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clf_data():
    """A 64-64-10 MLP trained full-batch on the embedded digits (under a second)."""
    return digits_mlp()


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 4) / 4  # 5 grey levels; autograd gives an exactly zero gradient


class QuantizeDefense(nn.Module):
    """``clf(round(4x)/4)``: masks gradients completely, robust to nothing larger than 1/8."""

    def __init__(self, clf: nn.Module) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(_quantize(x))

    def bpda(self) -> nn.Module:
        return nn.Sequential(BPDAWrapper(_quantize), self.clf)


class DetachDefense(nn.Module):
    """``clf(x.detach())``: the graph is cut, the input gradient does not exist."""

    def __init__(self, clf: nn.Module) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(x.detach())

    def bpda(self) -> nn.Module:
        return nn.Sequential(BPDAWrapper(lambda t: t.detach()), self.clf)


class NoiseDefense(nn.Module):
    """``clf(x + sigma * noise)`` with noise from torch's global generator (a randomized defense)."""

    def __init__(self, clf: nn.Module, sigma: float = 0.3) -> None:
        super().__init__()
        self.clf, self.sigma = clf, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(x + self.sigma * torch.randn_like(x))


class IdentityDefense(nn.Module):
    def __init__(self, clf: nn.Module) -> None:
        super().__init__()
        self.clf = clf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf(x)

    def bpda(self) -> nn.Module:
        return nn.Sequential(BPDAWrapper(nn.Identity()), self.clf)


# --------------------------------------------------------------------------------------- BPDA
def test_straight_through_forms_have_real_forward_and_identity_backward():
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    out = straight_through(_quantize)(x)
    assert torch.equal(out, _quantize(x.detach()))
    (g,) = torch.autograd.grad((out * 3).sum(), x)
    assert torch.allclose(g, torch.full_like(x, 3.0))
    (g0,) = torch.autograd.grad(_quantize(x).sum(), x)  # the real gradient is zero
    assert torch.count_nonzero(g0) == 0
    v = straight_through(x, _quantize(x.detach()))
    assert torch.equal(v, _quantize(x.detach()))
    (g2,) = torch.autograd.grad(v.sum(), x)
    assert torch.equal(g2, torch.ones_like(x))
    with pytest.raises(ValueError, match="shape"):
        straight_through(x, x[:1])


def test_straight_through_forward_is_the_output_bit_for_bit():
    """Not ``x + (out - x).detach()``: that rounds where ``out`` is much smaller than ``x``."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 8, 8, generator=g).requires_grad_(True)
    out = torch.rand(64, 1, 8, 8, generator=g) * 1e-3  # (64, 1, 8, 8)
    assert not torch.equal(x.detach() + (out - x.detach()), out)  # the rounding this test would catch
    for v in (
        straight_through(x, out),
        straight_through(lambda t: t * 0 + out)(x),
        bpda(x, lambda t: t * 0 + out),
    ):
        assert torch.equal(v, out)
        (grad,) = torch.autograd.grad(v.sum(), x)
        assert torch.equal(grad, torch.ones_like(x))


@pytest.mark.parametrize("name", ["pssr", "jpeg", "bit-depth", "median", "tvm"])
def test_bpda_views_feed_the_classifier_exactly_the_purified_image(name):
    """A defense's BPDA view runs the same forward pass as the defense, bit for bit: its classifier
    gets ``defense.purify(x)`` itself, so its logits are the defense's."""
    from pssr.defense import PSSR, PSSRConfig
    from pssr.defense.baselines import create_baseline
    from pssr.models import create_model

    torch.manual_seed(1)
    clf = create_model("tiny-cnn", num_classes=10, in_channels=1).eval()
    if name == "pssr":
        cfg = PSSRConfig(gen_width=8, scorer_width=8, ratio=0.25)
        d = PSSR(clf, cfg, image_shape=(1, 8, 8), classifier_spec={"name": "tiny-cnn", "kwargs": {}}).eval()
    else:
        d = create_baseline(name, clf)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    seen: list[torch.Tensor] = []
    hook = clf.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        for run in (d.purify, d, d.bpda()):
            getattr(d, "reseed", lambda _s: None)(5)  # tvm draws a random pixel subset
            with torch.no_grad():
                seen.append(run(x))
    finally:
        hook.remove()
    purified, _, logits, bpda_input, bpda_logits = seen
    assert torch.equal(bpda_input, purified) and torch.equal(bpda_logits, logits)


def test_bpda_wrapper_uses_the_surrogate_gradient():
    x = torch.rand(2, 1, 3, 3, requires_grad=True)
    w = BPDAWrapper(_quantize, backward_fn=lambda t: 2 * t)
    out = w(x)
    assert torch.equal(out, _quantize(x.detach()))
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.allclose(g, torch.full_like(x, 2.0))
    # a shape-changing transform needs a surrogate
    with pytest.raises(ValueError, match="backward_fn"):
        bpda(x, lambda t: t.flatten(1), None)
    flat = bpda(x, lambda t: t.flatten(1).round(), lambda t: t.flatten(1))
    assert flat.shape == (2, 9)
    (g,) = torch.autograd.grad(flat.sum(), x)
    assert torch.equal(g, torch.ones_like(x))
    with pytest.raises(ValueError, match="callable"):
        BPDAWrapper(3)  # type: ignore[arg-type]


def test_views(clf_data):
    clf, _ = clf_data
    q = QuantizeDefense(clf)
    view = bpda_view(q)
    assert isinstance(view, nn.Module) and view is not q
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(view(x), q(x))  # same forward
    assert bpda_view(clf) is clf and full_gradient_view(q) is q


def test_bpda_breaks_gradient_masking_while_plain_pgd_fails(clf_data):
    clf, data = clf_data
    x, y = data.test.x[:150], data.test.y[:150]
    q = QuantizeDefense(clf)
    clean = accuracy(q, x, y)
    assert clean > 0.85
    eps = 0.25
    full = accuracy(q, create_attack("pgd-full", q, eps=eps, steps=20)(x, y), y)
    plain = accuracy(q, create_attack("pgd", q, eps=eps, steps=20)(x, y), y)
    via_bpda = accuracy(q, create_attack("pgd-bpda", q, eps=eps, steps=20)(x, y), y)
    square = accuracy(q, create_attack("square", q, eps=eps, n_queries=200)(x, y), y)
    assert full == plain and full > clean - 0.2  # zero gradients: only the random start moves
    assert via_bpda < full - 0.5
    assert square < full - 0.5
    # on the undefended classifier, the BPDA attack equals plain PGD (no bpda() there)
    assert torch.equal(
        create_attack("pgd-bpda", clf, eps=0.1, steps=5)(x, y),
        create_attack("pgd", clf, eps=0.1, steps=5)(x, y),
    )


def test_detached_graph_does_not_crash_and_bpda_breaks_it(clf_data):
    clf, data = clf_data
    x, y = data.test.x[:100], data.test.y[:100]
    d = DetachDefense(clf)
    full = accuracy(d, create_attack("pgd", d, eps=0.2, steps=10, random_start=False)(x, y), y)
    assert full == accuracy(d, x, y)  # no gradient, no start noise: nothing moves
    assert accuracy(d, create_attack("pgd-bpda", d, eps=0.2, steps=10)(x, y), y) < full - 0.5
    for name in ("fgsm", "mifgsm", "ddn"):
        kw = {"norm": "l2", "eps": 1.0} if name == "ddn" else {"eps": 0.2}
        create_attack(name, d, **kw)(x[:8], y[:8])  # runs, finds nothing (or by luck), never raises


def test_success_is_judged_on_the_model_not_the_gradient_view(clf_data):
    clf, data = clf_data
    x, y = data.test.x[:100], data.test.y[:100]

    class Biased(nn.Module):  # predicts class 0 for everything, yet has clf's CE gradients direction
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return clf(t) + torch.tensor([100.0] + [0.0] * 9)

    atk = PGD(clf, eps=0.15, steps=10, random_start=False, grad_model=Biased())
    # if success were judged on the view, every example with y != 0 would "succeed" at x itself
    assert accuracy(clf, atk(x, y), y) < accuracy(clf, x, y) - 0.3


# ----------------------------------------------------------------------------------------- EOT
def test_eot_reduces_gradient_variance_and_is_seeded(clf_data):
    clf, data = clf_data
    x, y = data.test.x[:16], data.test.y[:16]
    noisy = NoiseDefense(clf)

    def grad(k: int, seed: int) -> torch.Tensor:
        xx = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(EOT(noisy, k=k, seed=seed)(xx), y), xx)
        return g

    reference = grad(128, 1000)  # close to the expected gradient
    err1 = torch.stack([(grad(1, s) - reference).pow(2).sum() for s in range(6)]).mean()
    err16 = torch.stack([(grad(16, s) - reference).pow(2).sum() for s in range(6)]).mean()
    assert err16 < err1 / 4
    # seeded: same seed same output; fresh randomness on the next call; the caller's RNG untouched
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    e = EOT(noisy, k=3, seed=5)
    a, b = e(x), e(x)
    assert torch.equal(torch.rand(2), expected)
    assert not torch.equal(a, b)
    e.reset_attack_state()
    assert torch.equal(e(x), a)
    assert torch.equal(EOT(noisy, k=3, seed=5)(x), a)
    p = EOT(noisy, k=3, seed=5, average="prob")(x)
    assert torch.allclose(p.exp().sum(1), torch.ones(16), atol=1e-5)
    for bad in ({"k": 0}, {"average": "median"}, {"seed": -1}):
        with pytest.raises(ValueError):
            EOT(noisy, **bad)


def test_eot_attack_beats_single_sample_attack_on_a_random_defense(clf_data):
    clf, data = clf_data
    x, y = data.test.x[:100], data.test.y[:100]

    class NoisyQuantize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clf = clf

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.clf(_quantize((t + 0.1 * torch.randn_like(t)).clamp(0, 1)))

        def bpda(self) -> nn.Module:
            noisy_quantize = lambda t: _quantize((t + 0.1 * torch.randn_like(t)).clamp(0, 1))  # noqa: E731
            return nn.Sequential(BPDAWrapper(noisy_quantize), self.clf)

    d = NoisyQuantize()
    plain = accuracy(d, create_attack("pgd-full", d, eps=0.2, steps=10)(x, y), y)
    eot = create_attack("pgd-bpda-eot", d, eps=0.2, steps=10, eot_samples=4)
    x_eot = eot(x, y)
    assert torch.equal(x_eot, create_attack("pgd-bpda-eot", d, eps=0.2, steps=10, eot_samples=4)(x, y))
    assert accuracy(d, x_eot, y) < plain - 0.3
    assert eot.config()["eot_samples"] == 4


# ------------------------------------------------------------------------------------ identity
@pytest.mark.parametrize("name", ["pgd", "pgd-full", "pgd-bpda", "square", "fgsm"])
def test_identity_defense_scores_exactly_as_no_defense(name, clf_data):
    clf, data = clf_data
    x, y = data.test.x[:100], data.test.y[:100]
    ident = IdentityDefense(clf)
    kw = {"eps": 0.1, **({"n_queries": 50} if name == "square" else {"steps": 10} if "pgd" in name else {})}
    on_clf = create_attack("pgd" if "pgd" in name else name, clf, **kw)(x, y)
    on_def = create_attack(name, ident, **kw)(x, y)
    assert torch.allclose(on_clf, on_def)
    assert accuracy(clf, on_clf, y) == accuracy(ident, on_def, y)


def test_autoattack_bpda_and_transfer_run_on_a_defense(clf_data):
    clf, data = clf_data
    x, y = data.test.x[:60], data.test.y[:60]
    q = QuantizeDefense(clf)
    aa = create_attack("autoattack-bpda", q, eps=0.25, version="custom", attacks=["apgd-ce"], n_iter=20)
    assert accuracy(q, aa(x, y), y) < accuracy(q, x, y) - 0.5
    # gray-box transfer: crafted on the classifier, applied to the defense
    tr = create_attack("transfer", q, eps=0.25, surrogate=clf, attack="pgd", attack_kwargs={"steps": 10})
    assert accuracy(q, tr(x, y), y) < accuracy(q, x, y) - 0.3
    assert tr.config()["attack_config"]["steps"] == 10
