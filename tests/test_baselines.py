"""Input-transformation baselines: shapes, range, registry, gradient masking and its BPDA view."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pssr.defense.baselines import BASELINES, create_baseline, list_baselines

NAMES = ["jpeg", "bit-depth", "median", "tvm", "identity"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread avoids thread start-up and contention costs (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Linear(nn.Module):
    def __init__(self, c: int = 1, h: int = 8, w: int = 8, k: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(c * h * w, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    gray = torch.rand(6, 1, 8, 8, generator=g)
    rgb = torch.rand(4, 3, 16, 16, generator=g)
    return gray, rgb


def test_registry_lists_all_and_rejects_unknown():
    assert set(NAMES) <= set(list_baselines())
    assert len(BASELINES) >= 5
    with pytest.raises(ValueError, match="unknown baseline defense"):
        create_baseline("nope", Linear())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("which", [0, 1])
def test_purify_keeps_shape_dtype_range_and_forward_gives_logits(name, which, images):
    x = images[which]
    clf = Linear(c=x.shape[1], h=x.shape[2], w=x.shape[3])
    d = create_baseline(name, clf)
    p = d.purify(x)
    assert p.shape == x.shape and p.dtype == x.dtype and p.device == x.device
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    assert torch.isfinite(p).all()
    if name == "identity":
        assert torch.equal(p, x)
    else:
        assert not torch.equal(p, x)  # every transform changes random noise images
    logits = d(x)
    assert logits.shape == (x.shape[0], 10)
    assert d.classifier is clf
    if not d.randomized:  # deterministic transforms: forward is classifier(purify(x))
        assert torch.allclose(logits, clf(p))


@pytest.mark.parametrize("name", ["jpeg", "bit-depth", "median", "tvm"])
def test_plain_gradient_is_zero_and_bpda_gradient_is_not(name, images):
    x = images[0]
    y = torch.arange(x.shape[0]) % 10
    d = create_baseline(name, Linear())
    xr = x.clone().requires_grad_(True)
    g_plain, = torch.autograd.grad(F.cross_entropy(d(xr), y), xr)
    assert torch.count_nonzero(g_plain) == 0  # the masking the harness must flag
    view = d.bpda()
    xr = x.clone().requires_grad_(True)
    out = view(xr)
    g_bpda, = torch.autograd.grad(F.cross_entropy(out, y), xr)
    assert (g_bpda.flatten(1).abs().sum(1) > 0).all()
    # same forward as the defense (reseed randomized ones so both passes draw the same mask)
    d.reseed(5)
    a = d(x)
    d.reseed(5)
    assert torch.allclose(view(x), a)


def test_transforms_do_what_they_say():
    x = torch.linspace(0, 1, 64).view(1, 1, 8, 8)
    clf = Linear()
    one_bit = create_baseline("bit-depth", clf, bits=1).purify(x)
    assert set(one_bit.unique().tolist()) <= {0.0, 1.0}
    three = create_baseline("bit-depth", clf, bits=3).purify(x)
    assert len(three.unique()) <= 8
    const = torch.full((2, 3, 8, 8), 0.4)
    assert torch.allclose(create_baseline("median", clf, window=3).purify(const), const)
    spike = torch.zeros(1, 1, 8, 8)
    spike[0, 0, 4, 4] = 1.0
    assert float(create_baseline("median", clf, window=3).purify(spike).max()) == 0.0  # an isolated pixel goes
    smooth = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    hq = create_baseline("jpeg", Linear(3, 16, 16), quality=95).purify(smooth)
    lq = create_baseline("jpeg", Linear(3, 16, 16), quality=10).purify(smooth)
    assert (hq - smooth).abs().mean() < (lq - smooth).abs().mean()


def test_tvm_is_random_but_reproducible_and_leaves_global_numpy_state_alone():
    import numpy as np

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    d = create_baseline("tvm", Linear(), seed=7)
    assert d.randomized
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a, b = d.purify(x), d.purify(x)
    assert np.random.rand() == expected_next  # ART's global-RNG use is sandboxed
    assert not torch.equal(a, b)  # a new pixel mask per call
    d.reseed(7)
    assert torch.equal(d.purify(x), a)
    assert torch.equal(create_baseline("tvm", Linear(), seed=7).purify(x), a)


@pytest.mark.parametrize(("name", "kw", "match"), [
    ("jpeg", {"quality": 0}, "quality"),
    ("jpeg", {"quality": 75.5}, "quality"),
    ("bit-depth", {"bits": 0}, "bits"),
    ("median", {"window": 1}, "window"),
    ("tvm", {"keep": 0.0}, "keep"),
    ("tvm", {"lam": -1.0}, "lam"),
    ("identity", {"seed": -1}, "seed"),
])
def test_invalid_arguments_name_the_argument(name, kw, match):
    with pytest.raises(ValueError, match=match):
        create_baseline(name, Linear(), **kw)
    with pytest.raises(ValueError, match="classifier"):
        create_baseline("jpeg", "not a module")  # type: ignore[arg-type]


def test_identity_baseline_equals_classifier_and_gradients_match():
    clf = Linear()
    d = create_baseline("identity", clf)
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3])
    g1, = torch.autograd.grad(F.cross_entropy(d(x), y), x)
    g2, = torch.autograd.grad(F.cross_entropy(clf(x), y), x)
    assert torch.equal(g1, g2)


def test_bpda_breaks_a_baseline_where_plain_pgd_cannot():
    """End to end with the harness: plain PGD is blind on bit-depth, BPDA is not; checks flag it."""
    import pssr.data
    from pssr.evaluation import CheckConfig, evaluate

    ds = pssr.data.load("digits")
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(clf.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(clf(ds.train.x), ds.train.y).backward()
        opt.step()
    pytest.importorskip("pssr.attacks.adaptive")
    from pssr.attacks import list_attacks

    if not {"pgd-full", "pgd-bpda"} <= set(list_attacks()):
        pytest.skip("the attack registry has no pgd-full / pgd-bpda yet")
    d = create_baseline("bit-depth", clf, bits=2)
    rep = evaluate({"bits2": d}, ds.test, attacks=[{"name": "pgd-full", "steps": 10, "threat_model": "adaptive"},
                                                   {"name": "pgd-bpda", "steps": 10, "threat_model": "adaptive"}],
                   eps=0.2, n=64, progress=False, checks=CheckConfig(n=32, large_eps_kwargs={"random_start": False,
                                                                                              "steps": 10}))
    flags = {f["name"] for f in rep.flags("bits2")}
    assert {"zero_gradients", "large_eps_not_broken"} <= flags
    plain = rep.accuracy("bits2", "pgd-full", "adaptive", 0.2)
    bpda = rep.accuracy("bits2", "pgd-bpda", "adaptive", 0.2)
    assert bpda < plain - 0.2
    assert rep.accuracy("bits2", "worst-case", "adaptive", 0.2) <= bpda
