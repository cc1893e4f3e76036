"""Input-transformation baselines: shapes, range, registry, gradient masking and its BPDA view."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pssr.defense.baselines import BASELINES, create_baseline, list_baselines

NAMES = ["jpeg", "bit-depth", "median", "tvm", "identity"]


pytestmark = pytest.mark.usefixtures("one_thread")


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
    (g_plain,) = torch.autograd.grad(F.cross_entropy(d(xr), y), xr)
    assert torch.count_nonzero(g_plain) == 0  # the masking the harness must flag
    view = d.bpda()
    xr = x.clone().requires_grad_(True)
    out = view(xr)
    (g_bpda,) = torch.autograd.grad(F.cross_entropy(out, y), xr)
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
    assert (
        float(create_baseline("median", clf, window=3).purify(spike).max()) == 0.0
    )  # an isolated pixel goes
    smooth = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    hq = create_baseline("jpeg", Linear(3, 16, 16), quality=95).purify(smooth)
    lq = create_baseline("jpeg", Linear(3, 16, 16), quality=10).purify(smooth)
    assert (hq - smooth).abs().mean() < (lq - smooth).abs().mean()


@pytest.mark.parametrize("impl", ["torch", "art"])
def test_tvm_is_random_but_reproducible_and_leaves_global_rng_state_alone(impl):
    import numpy as np

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    d = create_baseline("tvm", Linear(), seed=7, impl=impl)
    assert d.randomized and d.config()["impl"] == impl
    np.random.seed(123)
    torch.manual_seed(123)
    expected_np, expected_torch = np.random.rand(), torch.rand(1)
    np.random.seed(123)
    torch.manual_seed(123)
    a, b = d.purify(x), d.purify(x)
    assert np.random.rand() == expected_np  # ART's global-RNG use is sandboxed
    assert torch.equal(torch.rand(1), expected_torch)  # the torch mask has its own generator
    assert not torch.equal(a, b)  # a new pixel mask per call
    d.reseed(7)
    assert torch.equal(d.purify(x), a)
    assert torch.equal(create_baseline("tvm", Linear(), seed=7, impl=impl).purify(x), a)
    assert not torch.equal(create_baseline("tvm", Linear(), seed=8, impl=impl).purify(x), a)


def test_tvm_defaults_per_implementation_and_bpda_of_the_art_one(images):
    from pssr.defense.baselines import TVM_DEFAULTS

    for impl in ("torch", "art"):
        cfg = create_baseline("tvm", Linear(), impl=impl).config()
        assert {k: cfg[k] for k in ("keep", "lam", "norm", "iters")} == TVM_DEFAULTS[impl]
    assert create_baseline("tvm", Linear(), keep=0.8, lam=0.1, norm=1, iters=7).config() == {
        "name": "tvm",
        "impl": "torch",
        "keep": 0.8,
        "lam": 0.1,
        "norm": 1,
        "iters": 7,
        "seed": 0,
    }
    x = images[0]
    view = create_baseline("tvm", Linear(), impl="art").bpda()
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(view(xr), torch.arange(len(x)) % 10), xr)
    assert (g.flatten(1).abs().sum(1) > 0).all()


# ----------------------------------------------------------------------------- the torch TV solver
def _tv_energy(z, x, m, lam, norm):
    """(N,) the objective tv_minimize documents: sum m (z - x)^2 + lam * TV_norm(z)."""
    from pssr.defense.tv import total_variation

    return (m * (z - x) ** 2).flatten(1).sum(1) + lam * total_variation(z, norm)


def test_total_variation_of_known_images():
    from pssr.defense.tv import total_variation

    const = torch.full((2, 3, 5, 5), 0.3)
    assert torch.equal(total_variation(const, 1), torch.zeros(2))
    step = torch.zeros(1, 1, 4, 6)
    step[..., 3:] = 1.0  # one vertical edge of height 4
    assert total_variation(step, 1).item() == pytest.approx(4.0)
    assert total_variation(step, 2).item() == pytest.approx(4.0)
    diag = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).view(1, 1, 2, 2)  # top-left pixel: dx = dy = 1
    assert total_variation(diag, 1).item() == pytest.approx(2.0)
    assert total_variation(diag, 2).item() == pytest.approx(2**0.5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("norm", [1, 2])
def test_tv_minimize_keeps_shape_dtype_and_range(dtype, norm):
    from pssr.defense.tv import tv_minimize, tvm_keep_mask

    g = torch.Generator().manual_seed(3)
    x = (torch.rand(5, 3, 12, 10, generator=g) * 1.4 - 0.2).clamp(0, 1).to(dtype)
    m = tvm_keep_mask(5, 12, 10, 0.4, generator=g)
    z = tv_minimize(x, m, lam=0.5, norm=norm, iters=30)
    assert z.shape == x.shape and z.dtype == dtype
    assert float(z.min()) >= 0.0 and float(z.max()) <= 1.0 and torch.isfinite(z.float()).all()
    assert m.shape == (5, 1, 12, 10) and set(m.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("norm", [1, 2])
def test_tv_minimize_with_all_pixels_kept_and_small_lam_stays_within_2_lam_of_the_input(norm):
    # At the minimum, 2 (z - x) = lam * div p with |p| <= 1, and |div p| <= 4 (norm 1) or 2 sqrt(2) + ... <= 4:
    # so |z - x| <= 2 lam at every pixel. Random noise is the worst case for TV.
    from pssr.defense.tv import tv_minimize

    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    lam = 0.005
    z = tv_minimize(x, torch.ones(4, 1, 16, 16), lam=lam, norm=norm)
    assert float((z - x).abs().max()) <= 2 * lam + 1e-4
    assert float((z - x).abs().max()) > 0  # and it did move (noise has TV to lose)


def test_tv_minimize_denoises_a_noisy_image():
    from pssr.defense.tv import total_variation, tv_minimize

    g = torch.Generator().manual_seed(5)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 28), torch.linspace(0, 1, 28), indexing="ij")
    clean = ((xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.1).float().expand(3, 1, 28, 28) * 0.8 + 0.1  # discs
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    for keep in (1.0, 0.5):
        m = (torch.rand(3, 1, 28, 28, generator=g) < keep).float()
        z = tv_minimize(noisy, m, lam=0.1, norm=2)
        assert (total_variation(z) < 0.5 * total_variation(noisy)).all()
        if keep == 1.0:  # plain TV denoising (ROF) also gets closer to the clean image
            assert float((z - clean).pow(2).mean()) < 0.5 * float((noisy - clean).pow(2).mean())


def test_tv_minimize_ignores_dropped_pixels_and_approaches_the_minimum():
    from pssr.defense.baselines import TVM_DEFAULTS
    from pssr.defense.tv import tv_minimize, tvm_keep_mask

    g = torch.Generator().manual_seed(6)
    x = torch.rand(6, 1, 28, 28, generator=g)
    m = tvm_keep_mask(6, 28, 28, 0.5, generator=g)
    lam, iters = TVM_DEFAULTS["torch"]["lam"], TVM_DEFAULTS["torch"]["iters"]
    for norm in (1, 2):
        z = tv_minimize(x, m, lam, norm)
        other = torch.where(m > 0, x, torch.rand(x.shape, generator=g))  # new values at dropped pixels only
        assert torch.equal(tv_minimize(other, m, lam, norm), z)  # Guo et al.: reconstructed from kept pixels
        e = _tv_energy(z, x, m, lam, norm)
        e_long = _tv_energy(tv_minimize(x, m, lam, norm, iters=20 * iters), x, m, lam, norm)
        assert (e <= 1.05 * e_long).all()  # the default iteration count is near the minimum
        assert (e < _tv_energy(x, x, m, lam, norm)).all()
        assert (e_long <= e + 1e-4).all()  # more iterations do not make it worse


def test_tv_minimize_matches_art_total_var_min_on_the_same_problem_and_digits():
    """ART's TotalVarMin (run to convergence) and tv_minimize solve the same problem on digits.

    With norm=1 both use anisotropic TV; ART's fidelity is the unsquared norm r = ||m (z - x)||_2, ours
    its square, so the two share minimizers when lam_ours = 2 * lam_art * r (compare the optimality
    conditions). Per image we take r from ART's solution and check (a) ours is at least as good a
    minimizer of our objective as ART's and about as good of ART's, (b) both cut the total variation
    of clean digits to the same level and (c) a classifier trained on clean digits gives the same
    labels on both.
    """
    import numpy as np

    import pssr.data
    from pssr.defense.tv import total_variation, tv_minimize, tvm_keep_mask

    art_tvm = pytest.importorskip("art.defences.preprocessor").TotalVarMin
    ds = pssr.data.load("digits")
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(clf.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(clf(ds.train.x), ds.train.y).backward()
        opt.step()
    n, lam_art = 32, 0.1
    x, y = ds.test.x[:n], ds.test.y[:n]
    m = tvm_keep_mask(n, 8, 8, 0.5, generator=torch.Generator().manual_seed(0))
    art = art_tvm(prob=0.5, norm=1, lamb=lam_art, max_iter=200, clip_values=(0.0, 1.0))
    # ART's per-image solver with our mask (its __call__ would draw its own), NHWC, then ART's clip.
    z_art = (
        torch.stack(
            [
                torch.from_numpy(
                    np.clip(
                        art._minimize(x[i].permute(1, 2, 0).double().numpy(), m[i].permute(1, 2, 0).numpy()),
                        0,
                        1,
                    )
                )
                for i in range(n)
            ]
        )
        .permute(0, 3, 1, 2)
        .float()
    )
    r = (m * (z_art - x) ** 2).flatten(1).sum(1).sqrt()  # (N,)
    lam = 2 * lam_art * r
    # 1000 iterations: near convergence on every image (at 300 one of the first 32 test digits was
    # still 0.002 above ART's energy)
    z = torch.cat(
        [tv_minimize(x[i : i + 1], m[i : i + 1], float(lam[i]), norm=1, iters=1000) for i in range(n)]
    )

    e_ours, e_art = _tv_energy(z, x, m, lam, 1), _tv_energy(z_art, x, m, lam, 1)
    assert (e_ours <= e_art + 1e-3).all()
    assert float(e_art.mean()) <= 1.02 * float(e_ours.mean())  # ART converged to the same minimum

    def art_objective(zz):
        return (m * (zz - x) ** 2).flatten(1).sum(1).sqrt() + lam_art * total_variation(zz, 1)

    assert float(art_objective(z).mean()) <= 1.01 * float(art_objective(z_art).mean())
    tv_x, tv_ours, tv_art = (float(total_variation(t, 1).mean()) for t in (x, z, z_art))
    assert tv_ours < 0.7 * tv_x and tv_art < 0.7 * tv_x
    assert abs(tv_ours - tv_art) < 0.1 * tv_art
    with torch.no_grad():
        p_ours, p_art = clf(z).argmax(1), clf(z_art).argmax(1)
    assert float((p_ours == p_art).float().mean()) >= 0.75
    assert abs(float((p_ours == y).float().mean()) - float((p_art == y).float().mean())) <= 0.1


@pytest.mark.parametrize(
    ("name", "kw", "match"),
    [
        ("jpeg", {"quality": 0}, "quality"),
        ("jpeg", {"quality": 75.5}, "quality"),
        ("bit-depth", {"bits": 0}, "bits"),
        ("median", {"window": 1}, "window"),
        ("tvm", {"keep": 0.0}, "keep"),
        ("tvm", {"keep": 1.5}, "keep"),
        ("tvm", {"lam": -1.0}, "lam"),
        ("tvm", {"lam": float("nan")}, "lam"),
        ("tvm", {"norm": 3}, "norm"),
        ("tvm", {"iters": 0}, "iters"),
        ("tvm", {"impl": "scipy"}, "impl"),
        ("identity", {"seed": -1}, "seed"),
    ],
)
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
    (g1,) = torch.autograd.grad(F.cross_entropy(d(x), y), x)
    (g2,) = torch.autograd.grad(F.cross_entropy(clf(x), y), x)
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
    rep = evaluate(
        {"bits2": d},
        ds.test,
        attacks=[
            {"name": "pgd-full", "steps": 10, "threat_model": "adaptive"},
            {"name": "pgd-bpda", "steps": 10, "threat_model": "adaptive"},
        ],
        eps=0.2,
        n=64,
        progress=False,
        checks=CheckConfig(n=32, large_eps_kwargs={"random_start": False, "steps": 10}),
    )
    flags = {f["name"] for f in rep.flags("bits2")}
    assert {"zero_gradients", "large_eps_not_broken"} <= flags
    plain = rep.accuracy("bits2", "pgd-full", "adaptive", 0.2)
    bpda = rep.accuracy("bits2", "pgd-bpda", "adaptive", 0.2)
    assert bpda < plain - 0.2
    assert rep.accuracy("bits2", "worst-case", "adaptive", 0.2) <= bpda


def test_tv_minimize_rejects_bad_input_with_the_argument_named():
    from pssr.defense.tv import total_variation, tv_minimize, tvm_keep_mask

    x = torch.rand(2, 3, 8, 8)
    ones = torch.ones(2, 1, 8, 8)
    with pytest.raises(ValueError, match="keep_mask"):
        tv_minimize(x, torch.ones(2, 2, 8, 8), 0.1)
    with pytest.raises(ValueError, match="keep_mask"):
        tv_minimize(x, torch.ones(2, 1, 8, 7), 0.1)
    with pytest.raises(ValueError, match="keep_mask"):
        tv_minimize(x, 0.5 * ones, 0.1)
    with pytest.raises(ValueError, match="lam"):
        tv_minimize(x, ones, -0.1)
    with pytest.raises(ValueError, match="norm"):
        tv_minimize(x, ones, 0.1, norm=0)
    with pytest.raises(ValueError, match="iters"):
        tv_minimize(x, ones, 0.1, iters=0)
    with pytest.raises(ValueError, match="x must be"):
        tv_minimize(x[0], ones, 0.1)
    with pytest.raises(ValueError, match="x must be"):
        total_variation(torch.ones(2, 3, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="keep"):
        tvm_keep_mask(2, 8, 8, 0.0)
    with pytest.raises(ValueError, match="h must be"):
        tvm_keep_mask(2, 0, 8, 0.5)
    assert torch.equal(tv_minimize(x, ones, 0.0), x)  # lam = 0 with every pixel kept: nothing to change
