"""PSSR defense invariants: masks, fills, regenerator, the PSSR module, save/load, BPDA views, CLI purify."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from pssr.defense import (
    PSSR,
    DefenseConfig,
    PSSRConfig,
    PSSRTrainConfig,
    Regenerator,
    apply_fill,
    compose,
    create_scorer,
    list_fills,
    list_scorers,
    threshold_mask,
    topk_mask,
)
from pssr.defense.scoring import attack_share_target
from pssr.models import create_model

SPEC = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}


def _classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(SPEC["name"], **SPEC["kwargs"]).eval()


def _defense(**cfg: object) -> PSSR:
    torch.manual_seed(1)
    # restore_scope "mask" (the default before "full"): most contracts here are about the kept pixels
    kw = {"gen_width": 8, "scorer_width": 8, "ratio": 0.25, "restore_scope": "mask", **cfg}
    return PSSR(_classifier(), PSSRConfig(**kw), image_shape=(1, 8, 8), classifier_spec=SPEC)


def _x(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ surgery
@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.25, 0.5, 0.77, 1.0])
def test_topk_mask_exact_size(ratio: float) -> None:
    s = torch.randn(4, 1, 7, 9)
    m = topk_mask(s, ratio)
    assert m.shape == s.shape and set(m.unique().tolist()) <= {0.0, 1.0}
    assert (m.flatten(1).sum(1) == round(ratio * 63)).all()
    # the removed pixels are the highest-scoring ones
    k = round(ratio * 63)
    if 0 < k < 63:
        removed_min = s.flatten(1).masked_fill(m.flatten(1) == 0, float("inf")).amin(1)
        kept_max = s.flatten(1).masked_fill(m.flatten(1) == 1, float("-inf")).amax(1)
        assert (removed_min >= kept_max).all()


def test_topk_mask_ties_are_deterministic_lower_index_first() -> None:
    s = torch.zeros(2, 1, 4, 4)
    s[1, 0, 3, 3] = 1.0
    m = topk_mask(s, 0.25)  # 4 pixels
    assert m[0].flatten().tolist() == [1.0] * 4 + [0.0] * 12
    assert m[1].flatten().nonzero().flatten().tolist() == [0, 1, 2, 15]
    assert torch.equal(m, topk_mask(s.clone(), 0.25))


def test_threshold_mask_and_bad_scores() -> None:
    s = torch.arange(16.0).view(1, 1, 4, 4)
    m = threshold_mask(s, 0.5)  # normalized > 0.5 <=> value > 7.5
    assert m.flatten().tolist() == [0.0] * 8 + [1.0] * 8
    assert threshold_mask(torch.ones(1, 1, 4, 4), 0.1).sum() == 0  # constant scores remove nothing
    with pytest.raises(ValueError, match="ratio"):
        topk_mask(s, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        topk_mask(torch.full((1, 1, 2, 2), float("nan")), 0.5)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        topk_mask(torch.zeros(1, 2, 4, 4), 0.5)


@pytest.mark.parametrize("fill", list_fills())
def test_fill_keeps_pixels_and_fills_holes(fill: str) -> None:
    x = torch.rand(3, 2, 6, 6)
    m = topk_mask(torch.rand(3, 1, 6, 6), 0.4)
    out = apply_fill(x, m, fill, value=0.5)
    keep = ~m.bool().expand_as(x)
    assert torch.equal(out[keep], x[keep])
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    if fill == "constant":
        assert (out[~keep] == 0.5).all()
    if fill == "mean":
        kept_mean = (x * (1 - m)).sum((2, 3)) / (1 - m).sum((2, 3))
        assert torch.allclose(out[0, :, m[0, 0].bool()][:, 0], kept_mean[0])


# ------------------------------------------------------------------ regeneration
def test_regenerator_range_shape_and_compose_bit_identical() -> None:
    g = Regenerator(3, width=8, depth=2)
    x = torch.rand(2, 3, 10, 14)  # not divisible by 4: padded and cropped
    m = topk_mask(torch.rand(2, 1, 10, 14), 0.3)
    out = g(apply_fill(x, m), m)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    r = compose(x, out, m)
    assert torch.equal(r[~m.bool().expand_as(x)], x[~m.bool().expand_as(x)])
    assert torch.equal(r[m.bool().expand_as(x)], out[m.bool().expand_as(x)])
    gl = Regenerator(3, width=8, depth=1, condition="logits", num_classes=5)
    assert gl(x, m, torch.randn(2, 5)).shape == x.shape
    with pytest.raises(ValueError, match="condition"):
        Regenerator(3, condition="bogus")


# ------------------------------------------------------------------ scorers
@pytest.mark.parametrize("name", ["learned", "gradient", "random"])
def test_scorers_shape_no_grad_on_classifier_and_mode_restored(name: str) -> None:
    clf = _classifier()
    clf.train()
    sc = create_scorer(name, channels=1)
    s = sc(_x(), clf)
    assert s.shape == (5, 1, 8, 8) and torch.isfinite(s).all()
    assert clf.training and all(m.training for m in clf.modules())
    assert all(p.grad is None for p in clf.parameters())
    assert all(p.requires_grad for p in clf.parameters())
    assert set(list_scorers()) >= {"learned", "gradient", "random"}


@pytest.mark.parametrize("kind", ["delta", "delta-grad"])
def test_attack_share_target_is_a_distribution(kind: str) -> None:
    clf = _classifier()
    x = _x()
    xa = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    xa[0] = x[0]  # no attack: uniform share
    t = attack_share_target(kind, x, xa, clf, torch.zeros(5, dtype=torch.long))
    assert t.shape == (5, 1, 8, 8) and (t >= 0).all()
    assert torch.allclose(t.flatten(1).sum(1), torch.ones(5))
    assert torch.allclose(t[0], torch.full_like(t[0], 1 / 64))


# ------------------------------------------------------------------ the PSSR module
@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"scorer": "gradient"},
        {"scorer": "random"},
        {"mask_mode": "threshold"},
        {"fill": "local-mean"},
        {"condition": "logits"},
        {"use_regeneration": False, "fill": "local-mean"},
        {"use_surgery": False},
        {"restore_scope": "full"},
    ],
)
def test_purify_contract(cfg: dict) -> None:
    d = _defense(**cfg)
    d.train()  # caller's mode must come back unchanged, and purification must not depend on it
    for dtype in (torch.float32, torch.float64):
        x = _x().to(dtype)
        p = d.purify(x)
        assert p.shape == x.shape and p.dtype == x.dtype and p.device == x.device
        assert p.min() >= 0 and p.max() <= 1
        m = d.mask(x)
        assert m.shape == (5, 1, 8, 8)
        if d.config.use_surgery and d.config.restore_scope == "full":
            keep = ~m.bool().expand_as(x)
            assert not torch.equal(p[keep], x[keep])  # G re-renders the kept pixels too
            assert torch.equal(p, d.generator(apply_fill(x.float(), m, d.config.fill), m).to(dtype))
        elif d.config.use_surgery:
            keep = ~m.bool().expand_as(x)
            assert torch.equal(p[keep], x[keep])  # kept pixels bit-identical
            if d.config.mask_mode == "topk":
                assert (m.flatten(1).sum(1) == round(0.25 * 64)).all()
        else:
            assert m.sum() == 0 and not torch.equal(p, x)  # regeneration only rewrites the image
        assert torch.equal(p, d.purify(x))  # deterministic
    assert d.training and d.classifier.training and all(m.training for m in d.modules())
    assert d(_x()).shape == (5, 10)


def test_surgery_only_uses_the_fill() -> None:
    d = _defense(use_regeneration=False, fill="constant", fill_value=0.25)
    assert d.generator is None
    x = _x()
    p, m = d.purify(x), d.mask(x)
    assert (p[m.bool()] == 0.25).all()


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(1, 8, 8), r"\(N, C, H, W\)"),
        (torch.rand(2, 3, 8, 8), "channels"),
        (torch.rand(2, 1, 9, 8), "channels and size"),
        ((torch.rand(2, 1, 8, 8) * 255).to(torch.uint8), "float"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        (torch.rand(2, 1, 8, 8) + 1.0, r"\[0, 1\]"),
        (-torch.rand(2, 1, 8, 8), r"\[0, 1\]"),
        ([[0.5]], "torch.Tensor"),
    ],
)
def test_bad_inputs_raise_value_error(bad: object, match: str) -> None:
    d = _defense()
    with pytest.raises(ValueError, match=match):
        d.purify(bad)
    with pytest.raises(ValueError):
        d(bad)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="ratio"):
        PSSRConfig(ratio=1.5)
    with pytest.raises(ValueError, match="scorer"):
        PSSRConfig(scorer="oracle")
    with pytest.raises(ValueError, match="both be false"):
        PSSRConfig(use_surgery=False, use_regeneration=False)
    with pytest.raises(ValueError, match="w_rdrop"):
        PSSRConfig(w_rdrop=-1.0)
    assert PSSRConfig(eps=0.1, pgd_steps=10).alpha == pytest.approx(0.025)


@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"scorer": "gradient", "condition": "logits"},
        {"use_regeneration": False},
        {"restore_scope": "full"},
    ],
)
def test_save_load_equal_outputs_weights_only(tmp_path, cfg: dict) -> None:
    d = _defense(**cfg).eval()
    with torch.no_grad():  # make G's weights non-default so that loading is really tested
        for p in d.parameters():
            p.add_(0.01 * torch.randn_like(p))
    d.metrics = {"note": "test"}
    path = d.save(tmp_path / "pssr.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "pssr.defense.PSSR" and raw["config"]["ratio"] == 0.25
    d2 = PSSR.load(path)
    x = _x(7, seed=3)
    assert torch.equal(d.purify(x), d2.purify(x))
    assert torch.equal(d(x), d2(x))
    assert d2.config == d.config and d2.metrics == {"note": "test"}


def test_save_without_classifier_spec_needs_the_classifier_to_load(tmp_path) -> None:
    # issue 21: a PSSR around a model pssr cannot rebuild saves its weights; loading asks for the model
    d = PSSR(_classifier(), PSSRConfig(gen_width=8, scorer_width=8), image_shape=(1, 8, 8))
    path = d.save(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="classifier=model"):
        PSSR.load(path)
    x = _x()
    assert torch.equal(PSSR.load(path, classifier=_classifier(seed=5))(x), d(x))


@pytest.mark.parametrize("mode", ["identity", "mask-constant"])
def test_bpda_forward_equal_and_nonzero_input_gradients(mode: str) -> None:
    d = _defense().eval()
    x = _x()
    view = d.bpda(mode)
    with torch.no_grad():
        assert torch.equal(view(x), d(x))
    xi = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(view(xi), torch.arange(5))
    (g,) = torch.autograd.grad(loss, xi)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    if mode == "mask-constant":  # the same as autograd through the plain forward (mask is piecewise constant)
        xj = x.clone().requires_grad_(True)
        (g2,) = torch.autograd.grad(nn.functional.cross_entropy(d(xj), torch.arange(5)), xj)
        assert torch.allclose(g, g2)
    with pytest.raises(ValueError, match="bpda mode"):
        d.bpda("exact")


# ------------------------------------------------------------------ CLI purify
def test_cli_purify_png_and_figure(tmp_path) -> None:
    from PIL import Image

    from pssr.cli import main

    ck = _defense().save(tmp_path / "pssr.pt")
    Image.fromarray((torch.rand(8, 8) * 255).to(torch.uint8).numpy(), mode="L").save(tmp_path / "a.png")
    Image.fromarray((torch.rand(9, 8) * 255).to(torch.uint8).numpy(), mode="L").save(tmp_path / "big.png")
    assert (
        main(
            [
                "purify",
                "--checkpoint",
                str(ck),
                str(tmp_path / "a.png"),
                "--out",
                str(tmp_path / "o"),
                "--figure",
            ]
        )
        == 0
    )
    out = Image.open(tmp_path / "o" / "a.png")
    assert out.size == (8, 8) and out.mode == "L"
    assert (tmp_path / "o" / "a-figure.png").stat().st_size > 1000
    # kept pixels survive the PNG round trip exactly
    x = torch.from_numpy(np.array(Image.open(tmp_path / "a.png"))).float().view(1, 1, 8, 8) / 255
    y = torch.from_numpy(np.array(out)).float().view(1, 1, 8, 8) / 255
    keep = PSSR.load(ck).mask(x) == 0
    assert torch.equal(x[keep], y[keep])
    assert (
        main(["purify", "--checkpoint", str(ck), str(tmp_path / "big.png"), "--out", str(tmp_path / "o")])
        == 2
    )


def test_config_round_trip_through_dataclass() -> None:
    from pssr.config import asdict, build

    cfg = PSSRConfig(ratio=0.1, scorer="gradient", epochs=3)
    assert build(PSSRConfig, asdict(cfg)) == cfg
    assert dataclasses.replace(cfg, ratio=0.2).ratio == 0.2


def test_recipe_splits_into_defense_and_training_configs() -> None:
    # issue 20: what purify needs apart from how the defense was trained
    recipe = PSSRConfig(ratio=0.2, scorer="gradient", epochs=3, lr=0.01, eps=0.1)
    assert isinstance(recipe.defense, DefenseConfig) and not isinstance(recipe.defense, PSSRConfig)
    assert recipe.defense.ratio == 0.2 and not hasattr(recipe.defense, "lr")
    assert isinstance(recipe.training, PSSRTrainConfig) and recipe.training.epochs == 3
    assert not hasattr(recipe.training, "ratio")
    assert PSSRConfig.from_parts(recipe.defense, recipe.training) == recipe
    fields = {f.name for f in dataclasses.fields(PSSRConfig)}
    parts = [{f.name for f in dataclasses.fields(c)} for c in (DefenseConfig, PSSRTrainConfig)]
    assert parts[0] | parts[1] == fields and not parts[0] & parts[1]
    with pytest.raises(ValueError, match="DefenseConfig.ratio"):
        DefenseConfig(ratio=2.0)
    with pytest.raises(ValueError, match="PSSRTrainConfig.lr"):
        PSSRTrainConfig(lr=0.0)


def test_checkpoint_keeps_the_defense_config_and_its_training_apart(tmp_path) -> None:
    d = _defense(epochs=3, lr=0.01)
    assert isinstance(d.config, DefenseConfig) and d.training_config.epochs == 3
    raw = torch.load(d.save(tmp_path / "pssr.pt"), weights_only=True)
    assert "lr" not in raw["config"] and raw["training"]["lr"] == 0.01 and raw["format_version"] == 2
    d2 = PSSR.load(tmp_path / "pssr.pt")
    assert d2.config == d.config and d2.training_config == d.training_config
    # a format-1 checkpoint (one flat config) still loads, split the same way
    old = d.state()
    old["format_version"], old["config"] = 1, {**old["config"], **old.pop("training")}
    torch.save(old, tmp_path / "v1.pt")
    d1 = PSSR.load(tmp_path / "v1.pt")
    assert d1.config == d.config and d1.training_config == d.training_config
    x = _x(5, seed=2)
    with torch.no_grad():
        assert torch.equal(d1(x), d(x))
    # a defense built from a DefenseConfig alone records no training
    bare = PSSR(_classifier(), d.config, image_shape=(1, 8, 8), classifier_spec=SPEC)
    assert bare.training_config is None
    assert torch.load(bare.save(tmp_path / "b.pt"), weights_only=True)["training"] is None
    assert PSSR.load(tmp_path / "b.pt").training_config is None


def test_with_config_builds_a_new_defense_around_the_same_modules() -> None:
    d = _defense().eval()
    before = d.config
    d2 = d.with_config(ratio=0.5)
    assert d.config == before and d2.config.ratio == 0.5 and d2 is not d  # never mutated
    assert d2.generator is d.generator and d2.scorer is d.scorer and d2.classifier is d.classifier
    assert d2.training_config == d.training_config and not d2.training
    x = _x(4, seed=1)
    assert int(d2.mask(x).sum()) == 4 * round(0.5 * 64) and int(d.mask(x).sum()) == 4 * round(0.25 * 64)
    with pytest.raises(ValueError, match="gen_width"):
        d.with_config(gen_width=16)
    with pytest.raises(ValueError, match="unknown"):
        d.with_config(lr=0.1)
    with pytest.raises(ValueError, match="ratio"):
        d.with_config(ratio=1.5)


def test_purification_does_not_depend_on_the_batch() -> None:
    # The random scorer's map is fixed, so its purification is exactly batch-independent. Learned
    # and gradient scores come from convolutions whose float rounding may differ with the batch
    # size (oneDNN picks kernels per shape, with 2 threads): a near-tie may then flip a pixel of
    # the top-k mask, so for those we require identical masks up to a few such flips and equal
    # outputs wherever the masks agree.
    for scorer in ("learned", "gradient", "random"):
        d = _defense(scorer=scorer).eval()
        x = _x(6)
        full = d.purify(x)
        one = d.purify(x[3:4])
        if scorer == "random":
            assert torch.equal(one, full[3:4])
            assert torch.equal(d.purify(x.flip(0)), full.flip(0))
            continue
        m_full, m_one = d.mask(x)[3:4], d.mask(x[3:4])
        same = (m_full == m_one).expand_as(one)
        assert same.float().mean() >= 0.97, scorer
        torch.testing.assert_close(one[same], full[3:4][same], rtol=0, atol=1e-5, msg=scorer)
