"""pssr.analysis: pixel rankings, oracle restoration, scorer agreement and the `pssr finding` command."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pssr.analysis import FindingConfig, halving_k, read_records, restore_order, run_finding, scorer_agreement
from pssr.analysis.finding import rates_from_records, sample_indices
from pssr.analysis.pixels import RANKINGS, average_ranks, fooled_curve, restore_pixels, spearman_rows

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits_model():
    from pssr.testing import digits_cnn

    return digits_cnn()


def _pair(n: int = 4, c: int = 1, h: int = 6, w: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, c, h, w), generator=g)
    x_adv = (x + 0.2 * (torch.rand((n, c, h, w), generator=g) - 0.5)).clamp(0, 1)
    return x, x_adv


def test_restore_order_is_a_permutation_highest_first_and_breaks_ties_at_random() -> None:
    pri = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    order = restore_order(pri, torch.Generator().manual_seed(1))
    assert torch.equal(order.sort(1).values, torch.arange(16).expand(3, 16))
    flat = pri.flatten(1)
    assert (flat.gather(1, order).diff(dim=1) <= 0).all()  # non-increasing priorities
    const = restore_order(torch.zeros(8, 1, 4, 4), torch.Generator().manual_seed(1))
    assert not torch.equal(const[0], torch.arange(16))  # ties are not broken by position
    assert len({tuple(r.tolist()) for r in const}) > 1  # and differ from image to image
    same = restore_order(torch.zeros(8, 1, 4, 4), torch.Generator().manual_seed(1))
    assert torch.equal(const, same)  # same seed, same order


@pytest.mark.parametrize("k", [0.0, 0.1, 0.37, 1.0])
def test_restore_pixels_puts_back_exactly_round_k_hw_whole_pixels(k: float) -> None:
    x, x_adv = _pair(c=3)
    order = restore_order(torch.rand(4, 1, 6, 5), torch.Generator().manual_seed(0))
    xk = restore_pixels(x, x_adv, order, k)
    clean = (xk == x).all(1)  # (N, H, W): a whole pixel (all channels) back to clean
    adv = (xk == x_adv).all(1)
    assert (clean | adv).all()
    differs = (x != x_adv).any(1)
    assert int((clean & differs).sum(dim=(1, 2)).max()) <= round(k * 30)
    m = round(k * 30)
    restored = torch.zeros(4, 30, dtype=torch.bool).scatter_(1, order[:, :m], True).view(4, 6, 5)
    assert torch.equal(xk, torch.where(restored[:, None], x, x_adv))
    if k == 0.0:
        assert torch.equal(xk, x_adv)
    if k == 1.0:
        assert torch.equal(xk, x)


def test_salient_and_trivial_orders_follow_delta_magnitude() -> None:
    x = torch.zeros(1, 2, 3, 3)
    x_adv = x.clone()
    x_adv[0, 0, 1, 2] = 0.5  # biggest
    x_adv[0, 1, 0, 0] = 0.3
    x_adv[0, 0, 2, 2] = 0.1
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(18, 3))
    y = torch.zeros(1, dtype=torch.long)
    sal = restore_order(RANKINGS.get("salient")(x, x_adv, y, model, g), g)
    assert sal[0, :3].tolist() == [5, 0, 8]
    triv = restore_order(RANKINGS.get("trivial")(x, x_adv, y, model, g), g)
    assert triv[0, -3:].tolist() == [8, 0, 5]  # the largest last
    grad = RANKINGS.get("salient-grad")(x, x_adv, y, model, g)
    assert grad.shape == (1, 1, 3, 3)
    assert (grad.flatten()[[1, 2, 3, 4, 6, 7]] == 0).all()  # no delta, no share of the loss change


def test_float_rounding_of_delta_does_not_order_pixels_moved_by_eps() -> None:
    from pssr.analysis.pixels import delta_magnitude

    x = torch.linspace(0, 0.9, 100).view(1, 1, 10, 10)
    x_adv = x + 0.1  # float32: (x + 0.1) - x takes several values near 0.1
    assert len(set((x_adv - x).flatten().tolist())) > 1
    d = delta_magnitude(x, x_adv)
    assert len(set(d.flatten().tolist())) == 1  # all tied: their order is left to the random tie-break
    agree = scorer_agreement(torch.rand(1, 1, 10, 10), x, x_adv, 0.1, torch.Generator().manual_seed(0))
    assert float(agree["tie_precision"][0]) == 1.0 == float(agree["chance_tie_precision"][0])


def test_halving_k_interpolates_and_says_never() -> None:
    grid = [0.0, 0.1, 0.2, 0.4]
    assert halving_k(grid, [0.8, 0.6, 0.2, 0.0]) == pytest.approx(0.1 + 0.1 * (0.6 - 0.4) / 0.4)
    assert halving_k(grid, [0.8, 0.4, 0.1, 0.0]) == pytest.approx(0.1)
    assert halving_k(grid, [0.8, 0.8, 0.7, 0.5]) is None
    assert halving_k(grid, [0.0, 0.0, 0.0, 0.0]) is None
    with pytest.raises(ValueError, match="same positive length"):
        halving_k(grid, [0.1])


def test_spearman_matches_scipy_with_ties_and_is_nan_for_constant_rows() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(3)
    a = torch.randint(0, 5, (4, 40), generator=g).float()  # many ties
    b = a + torch.randint(0, 3, (4, 40), generator=g).float()
    got = spearman_rows(a, b)
    for i in range(4):
        assert float(got[i]) == pytest.approx(scipy_stats.spearmanr(a[i], b[i]).statistic, abs=1e-9)
    assert torch.equal(
        average_ranks(torch.tensor([[2.0, 1.0, 2.0]])), torch.tensor([[1.5, 0.0, 1.5]]).double()
    )
    assert torch.isnan(spearman_rows(torch.ones(1, 5), torch.rand(1, 5)))[0]


def test_scorer_agreement_of_the_oracle_is_perfect_and_random_near_chance() -> None:
    x, x_adv = _pair(n=64, h=10, w=10)
    d = (x_adv - x).abs().sum(1, keepdim=True)
    g = torch.Generator().manual_seed(0)
    oracle = scorer_agreement(d, x, x_adv, 0.2, g)
    for m in ("precision", "recall", "tie_precision", "mass_recall", "spearman"):
        assert torch.allclose(oracle[m], torch.ones(64).double()), m
    rnd = scorer_agreement(torch.rand(64, 1, 10, 10, generator=g), x, x_adv, 0.2, g)
    assert torch.equal(rnd["precision"], rnd["recall"])  # same-size sets
    assert 0.1 < float(rnd["precision"].mean()) < 0.3  # chance is the ratio, 0.2
    assert abs(float(rnd["spearman"].mean())) < 0.1
    anti = scorer_agreement(-d, x, x_adv, 0.2, g)
    assert float(anti["precision"].max()) == 0.0


def test_fooled_curve_ends_at_clean_errors(digits_model) -> None:
    from pssr.attacks import create_attack

    model, data = digits_model
    x, y = data.test.x[:32], data.test.y[:32]
    x_adv = create_attack("pgd", model, eps=0.2, steps=10)(x, y)
    order = restore_order(torch.rand(32, 1, 8, 8), torch.Generator().manual_seed(0))
    curve = fooled_curve(model, x, x_adv, y, order, [0.0, 0.5, 1.0])
    with torch.no_grad():
        assert torch.equal(curve[:, 0], model(x_adv).argmax(1) != y)
        assert torch.equal(curve[:, 2], model(x).argmax(1) != y)


def test_config_validates_its_fields() -> None:
    with pytest.raises(ValueError, match="attacks"):
        FindingConfig(dataset="digits", attacks=("nope",))
    with pytest.raises(ValueError, match="rankings"):
        FindingConfig(dataset="digits", rankings=("salientest",))
    with pytest.raises(ValueError, match="grid"):
        FindingConfig(dataset="digits", grid=(0.1, 0.5))
    with pytest.raises(ValueError, match="grid"):
        FindingConfig(dataset="digits", grid=(0.0, 0.5, 0.2))
    with pytest.raises(ValueError, match="ratio"):
        FindingConfig(dataset="digits", ratio=0.0)
    with pytest.raises(ValueError, match="no attack budgets"):
        FindingConfig(dataset="imagenet")


def test_sample_is_random_not_the_first_n_and_nested() -> None:
    a, b = sample_indices(1000, 50, 0), sample_indices(1000, 20, 0)
    assert torch.equal(a[:20], b)
    assert not torch.equal(a.sort().values, torch.arange(50))
    assert len(set(a.tolist())) == 50


def test_run_finding_writes_records_first_and_a_report_that_they_reproduce(digits_model, tmp_path) -> None:
    from pssr.defense.scoring import create_scorer

    model, data = digits_model
    cfg = FindingConfig(
        dataset="digits", n=40, n_slow=10, attacks=("pgd", "ddn-l2"), grid=(0.0, 0.05, 0.2, 1.0), ratio=0.2
    )
    scorers = {"gradient": create_scorer("gradient"), "random": create_scorer("random")}
    rep = run_finding(model, data.test, cfg, tmp_path / "out", scorers=scorers, cache_dir=tmp_path / "cache")
    out = tmp_path / "out"
    for f in ("records.jsonl.gz", "report.json", "report.md", "curves.png"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "report.json").read_text())
    assert saved["attacks"]["pgd"]["curves"] == rep["attacks"]["pgd"]["curves"]
    records = read_records(out / "records.jsonl.gz")
    assert len(records) == 80
    idx = sample_indices(len(data.test), 40, 0).tolist()
    assert [r["index"] for r in records if r["attack"] == "pgd"] == idx
    for label, a in rep["attacks"].items():
        assert set(a["curves"]) == {
            "salient",
            "salient-grad",
            "trivial",
            "random",
            "scorer:gradient",
            "scorer:random",
        }
        for r, curve in a["curves"].items():
            assert rates_from_records(records, label, r) == pytest.approx(curve)
            assert curve[0] == pytest.approx(a["success_rate"])
            assert curve[-1] == 0.0  # every pixel clean again: no clean-correct image stays fooled
        assert set(a["agreement"]) == {"gradient", "random"}
        assert a["agreement"]["gradient"]["precision"]["n"] == a["n_fooled"]
    assert "| pgd | salient |" in (out / "report.md").read_text()
    # a rerun reads the cached adversarial examples and gives the same report
    again = run_finding(
        model, data.test, cfg, tmp_path / "out2", scorers=scorers, cache_dir=tmp_path / "cache"
    )
    assert again["attacks"]["pgd"]["curves"] == rep["attacks"]["pgd"]["curves"]
    assert again["attacks"]["ddn-l2"]["agreement"] == rep["attacks"]["ddn-l2"]["agreement"]


def test_cli_finding_with_a_pssr_checkpoint_and_clear_errors(digits_model, tmp_path, capsys) -> None:
    from pssr.cli import main
    from pssr.defense.pssr import PSSR, PSSRConfig
    from pssr.train.classifier import load_classifier, train_classifier

    _, data = digits_model
    ck = tmp_path / "clf.pt"
    train_classifier("tiny-cnn", data, epochs=1, batch_size=128, checkpoint=str(ck), progress=False, seed=0)
    clf = load_classifier(ck)
    pssr = PSSR(clf, PSSRConfig(scorer_width=4, gen_width=4, ratio=0.15), image_shape=(1, 8, 8))
    pssr.save(tmp_path / "pssr.pt")
    cfg2 = PSSRConfig(scorer_width=4, gen_width=4, ratio=0.3, scorer_target="delta")
    PSSR(clf, cfg2, image_shape=(1, 8, 8)).save(tmp_path / "pssr2.pt")
    out = tmp_path / "finding"
    argv = ["finding", "--data", "digits", "--checkpoint", str(ck), "--pssr", str(tmp_path / "pssr.pt")]
    argv += ["--pssr", f"learned-delta={tmp_path / 'pssr2.pt'}"]
    argv += [
        "--n",
        "24",
        "--attacks",
        "pgd",
        "--grid",
        "0,0.1,1",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 0
    assert "pgd: success" in capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["config"]["ratio"] == 0.15  # the first PSSR's removal ratio
    assert set(rep["scorers"]) == {"learned", "learned-delta", "gradient", "random"}
    assert rep["scorers"]["learned-delta"]["scorer_target"] == "delta"
    assert rep["scorers"]["learned"]["same_classifier"] is True
    assert {"scorer:learned", "scorer:learned-delta"} <= set(rep["attacks"]["pgd"]["curves"])
    (out / "report.md").unlink()
    assert main(["finding", "--render-only", "--out", str(out)]) == 0
    assert (out / "report.md").is_file()
    assert (
        main(
            [
                "finding",
                "--data",
                "digits",
                "--checkpoint",
                str(ck),
                "--attacks",
                "pgd,zzz",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "unknown ['zzz']" in capsys.readouterr().err
    assert main(["finding", "--render-only", "--out", str(tmp_path / "none")]) == 2
