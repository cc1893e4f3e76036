"""pssr.certify: CERTIFY / PREDICT (Cohen et al. 2019) against exact answers and ART, reports, resume."""

from __future__ import annotations

import json
import math
import os
import socket

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, norm
from torch import nn

from pssr.certify import ABSTAIN, SmoothedClassifier, certify_models, lower_confidence_bound
from pssr.certify.run import read_records
from pssr.data.base import Split

pytestmark = pytest.mark.usefixtures("one_thread")


class Linear2(nn.Module):
    """Two classes, logits ``[0, w.x + b]``: the smoothed probability of class 1 is exactly
    ``Phi((w.x + b) / (sigma |w|))``, so CERTIFY can be checked against the truth."""

    def __init__(self, shape=(1, 4, 4), seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(shape, generator=g), requires_grad=False)
        self.b = nn.Parameter(torch.tensor(-0.3), requires_grad=False)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1) + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x)
        return torch.stack([torch.zeros_like(s), s], 1)

    def p_class1(self, x: torch.Tensor, sigma: float) -> float:
        return float(norm.cdf(float(self.score(x[None])[0]) / (sigma * float(self.w.norm()))))


def _points(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def test_clopper_pearson_matches_an_independent_formula():
    alpha = 0.001
    for k, n in [(1, 10), (50, 100), (990, 1000), (9990, 10_000), (100, 100)]:
        two_sided = binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        assert lower_confidence_bound(k, n, alpha) == pytest.approx(two_sided, rel=1e-9, abs=1e-12)
    assert lower_confidence_bound(0, 10, alpha) == 0.0
    # all n hit: the bound solves p^n = alpha
    assert lower_confidence_bound(1000, 1000, alpha) == pytest.approx(alpha ** (1 / 1000), rel=1e-9)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        lower_confidence_bound(11, 10, alpha)


def test_certify_is_sound_and_tight_on_a_linear_model():
    model, sigma, n = Linear2(), 0.5, 4000
    g = SmoothedClassifier(model, sigma, batch_size=512)
    for i, x in enumerate(_points()):
        p1 = model.p_class1(x, sigma)
        cert = g.certify(x, n0=100, n=n, alpha=0.001, generator=g.generator(i))
        p_top = max(p1, 1 - p1)
        se = math.sqrt(p_top * (1 - p_top) / n)
        if cert.abstained:
            assert p_top < 0.6 and cert.radius == 0.0
            continue
        assert cert.prediction == int(p1 > 0.5)
        assert cert.p_lower <= p_top + 1e-12  # a lower bound (it may fail w.p. alpha; seeded)
        assert p_top - cert.p_lower < 6 * se + 0.01  # and not a loose one
        assert cert.radius == pytest.approx(sigma * norm.ppf(cert.p_lower))
        assert cert.radius <= sigma * norm.ppf(p_top) + 1e-9  # the true radius bounds the certified one


def test_same_seed_same_certificate_and_modes_restored():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.Dropout(0.5))
    model.train()
    g = SmoothedClassifier(model, 0.25, batch_size=64)
    x = _points(1)[0]
    a = g.certify(x, 50, 300, 0.001, g.generator(7))
    b = g.certify(x, 50, 300, 0.001, g.generator(7))
    assert (a.prediction, a.radius, a.count) == (b.prediction, b.radius, b.count)
    assert model.training and model[2].training  # eval for sampling (no dropout), then restored


class CoinFlip(nn.Module):
    """The class is the sign of the noise at one pixel: p = 1/2 for both classes at x = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1)[:, 0]
        return torch.stack([s, -s], 1)


def test_abstains_when_classes_tie():
    g = SmoothedClassifier(CoinFlip(), 1.0, batch_size=500)
    x = torch.zeros(1, 4, 4)
    cert = g.certify(x, 100, 2000, 0.001, g.generator(0))
    assert cert.prediction == ABSTAIN and cert.abstained and cert.radius == 0.0 and cert.p_lower < 0.5
    assert g.predict(x, 2000, 0.001, g.generator(0)) == ABSTAIN


def test_predict_returns_the_smoothed_class():
    model, sigma = Linear2(), 0.25
    g = SmoothedClassifier(model, sigma)
    x = _points(8)
    p = [model.p_class1(xi, sigma) for xi in x]
    i = int(np.argmax([abs(q - 0.5) for q in p]))  # the most confident point
    assert g.predict(x[i], 1000, 0.001, g.generator(0)) == int(p[i] > 0.5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sigma"):
        SmoothedClassifier(Linear2(), 0.0)
    with pytest.raises(ValueError, match="base"):
        SmoothedClassifier("model", 0.5)  # type: ignore[arg-type]
    g = SmoothedClassifier(Linear2(), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        g.certify(_points(1)[0], 10, 10, 0.7, g.generator(0))
    with pytest.raises(ValueError, match="one image"):
        g.sample_counts(_points(2), 10, g.generator(0))


def _art_certify(model: nn.Module, x: np.ndarray, sigma: float, n0: int, n: int, alpha: float, monkeypatch):
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    rs = PyTorchRandomizedSmoothing(
        model=model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=2,
        sample_size=n0,
        scale=sigma,
        alpha=alpha,
        device_type="cpu",
    )
    try:
        import statsmodels  # noqa: F401  (ART's own Clopper-Pearson bound)
    except ImportError:
        # ART computes the bound with statsmodels, which pssr does not install: the same two-sided
        # exact interval at level 1 - 2 alpha from scipy's binomtest, not from our beta-quantile code.
        def lcb(self, k: int, total: int) -> float:
            return binomtest(int(k), int(total)).proportion_ci(1 - 2 * self.alpha, method="exact").low

        monkeypatch.setattr(type(rs), "_lower_confidence_bound", lcb)
    np.random.seed(0)
    return rs.certify(x, n=n, batch_size=1000)


def test_agrees_with_art_within_sampling_error(monkeypatch):
    model, sigma, n0, n, alpha = Linear2(), 0.5, 100, 2000, 0.001
    x = _points(8)
    art_pred, art_rad = _art_certify(model, x.numpy(), sigma, n0, n, alpha, monkeypatch)
    g = SmoothedClassifier(model, sigma, batch_size=1000)
    for i in range(len(x)):
        ours = g.certify(x[i], n0, n, alpha, g.generator(i))
        p_top = max(model.p_class1(x[i], sigma), 1 - model.p_class1(x[i], sigma))
        tol = 6 * math.sqrt(p_top * (1 - p_top) / n) + 2e-3
        # both lower bounds are within sampling error of each other (and of the truth)
        p_art = float(norm.cdf(art_rad[i] / sigma)) if art_pred[i] != -1 else None
        if ours.abstained or p_art is None:
            assert p_top < 0.6  # only a near-tie may abstain in one and not the other
            continue
        assert int(art_pred[i]) == ours.prediction
        assert abs(ours.p_lower - p_art) < tol


# ------------------------------------------------------------------------------------- the runner
def _split(n: int = 12) -> Split:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 4, 4, generator=g)
    model = Linear2()
    y = (model.score(x) > 0).long()
    y[:2] = 1 - y[:2]  # two wrong labels: certified accuracy below 100%
    return Split(x, y)


def _run(tmp_path, **kw):
    args = dict(n0=20, n=200, alpha=0.01, num_examples=8, subset_seed=0, batch_size=64, out=tmp_path / "c")
    args.update(kw)
    return certify_models({"lin": Linear2()}, _split(), [0.25, 0.5], dataset="toy", progress=False, **args)


def test_report_files_and_invariants(tmp_path):
    rep = _run(tmp_path)
    out = tmp_path / "c"
    for f in ("report.json", "report.md", "certify.png", "records.jsonl.gz"):
        assert (out / f).is_file()
    assert json.loads((out / "report.json").read_text())["units"].keys() == rep["units"].keys()
    assert set(rep["units"]) == {"lin@sigma=0.25", "lin@sigma=0.5"}
    for u in rep["units"].values():
        assert u["complete"] and u["n_examples"] == 8
        accs = [v["accuracy"] for v in u["certified_accuracy"].values()]
        assert all(a >= b for a, b in zip(accs, accs[1:]))  # non-increasing in the radius
        lo, hi = u["certified_accuracy"]["0"]["ci95"]
        assert lo <= accs[0] <= hi
    recs = read_records(out / "state" / "lin@sigma=0.5.jsonl")
    assert len({r["index"] for r in recs}) == 8
    assert all(r["correct"] == (r["prediction"] == r["label"]) for r in recs)
    assert all((r["prediction"] == ABSTAIN) == r["abstained"] for r in recs)
    assert "| lin | 0.5 | 8 |" in (out / "report.md").read_text()


class _StopAfter(nn.Module):
    def __init__(self, inner: nn.Module, calls: int) -> None:
        super().__init__()
        self.inner, self.left = inner, calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return self.inner(x)


def test_interrupted_run_resumes_to_the_same_records(tmp_path):
    full = _run(tmp_path / "a")
    base = Linear2()
    with pytest.raises(KeyboardInterrupt):
        # 64-sample batches: 1 (n0) + 4 (n) forwards per example; stop inside the 4th example
        certify_models(
            {"lin": _StopAfter(base, 17)}, _split(), 0.5, n0=20, n=200, alpha=0.01, num_examples=8,
            batch_size=64, out=tmp_path / "b" / "c", progress=False, dataset="toy",
        )  # fmt: skip
    assert len(read_records(tmp_path / "b" / "c" / "state" / "lin@sigma=0.5.jsonl")) == 3
    rep = certify_models(
        {"lin": base}, _split(), [0.25, 0.5], n0=20, n=200, alpha=0.01, num_examples=8, batch_size=64,
        out=tmp_path / "b" / "c", progress=False, dataset="toy",
    )  # fmt: skip
    a = read_records(tmp_path / "a" / "c" / "state" / "lin@sigma=0.5.jsonl")
    b = read_records(tmp_path / "b" / "c" / "state" / "lin@sigma=0.5.jsonl")
    strip = lambda rs: sorted((r["index"], r["prediction"], r["radius"], r["count"]) for r in rs)  # noqa: E731
    assert strip(a) == strip(b)
    assert (
        rep["units"]["lin@sigma=0.5"]["certified_accuracy"]
        == full["units"]["lin@sigma=0.5"]["certified_accuracy"]
    )


def test_torn_last_line_is_dropped_and_settings_are_checked(tmp_path):
    _run(tmp_path)
    path = tmp_path / "c" / "state" / "lin@sigma=0.5.jsonl"
    with open(path, "a") as f:
        f.write('{"index": 99, "lab')
    assert len(read_records(path)) == 8
    _run(tmp_path)  # appends nothing new and still reads
    with pytest.raises(ValueError, match="other settings"):
        _run(tmp_path, n=300)
    rep = _run(tmp_path, n=300, fresh=True)
    assert rep["settings"]["n"] == 300


def test_a_larger_subset_keeps_the_examples_done(tmp_path):
    small = _run(tmp_path, num_examples=4)
    path = tmp_path / "c" / "state" / "lin@sigma=0.5.jsonl"
    first = read_records(path)
    big = _run(tmp_path, num_examples=8)
    recs = read_records(path)
    assert len(recs) == 8 and recs[:4] == first  # 4 new records appended, the 4 done reused
    assert small["settings"]["num_examples"] == 4 and big["units"]["lin@sigma=0.5"]["n_examples"] == 8
    again = _run(tmp_path, num_examples=4)  # a smaller subset reports on its own examples
    assert (
        again["units"]["lin@sigma=0.5"]["certified_accuracy"]
        == small["units"]["lin@sigma=0.5"]["certified_accuracy"]
    )


def test_changed_model_is_certified_again(tmp_path):
    _run(tmp_path)
    other = Linear2(seed=5)
    rep = certify_models(
        {"lin": other}, _split(), 0.5, n0=20, n=200, alpha=0.01, num_examples=8, batch_size=64,
        out=tmp_path / "c", progress=False, dataset="toy",
    )  # fmt: skip
    assert rep["units"]["lin@sigma=0.5"]["n_examples"] == 8


def test_from_report_continues_a_saved_report_and_joins_new_models(tmp_path):
    _run(tmp_path / "a", num_examples=4)  # a saved report, e.g. one committed half done
    saved = read_records(tmp_path / "a" / "c" / "state" / "lin@sigma=0.5.jsonl")
    rep = _run(tmp_path / "b", num_examples=8, from_report=tmp_path / "a" / "c")
    recs = read_records(tmp_path / "b" / "c" / "state" / "lin@sigma=0.5.jsonl")
    assert recs[:4] == saved and len(recs) == 8  # copied (seconds included), then the 4 missing computed
    _run(tmp_path / "full")
    strip = lambda rs: sorted((r["index"], r["prediction"], r["radius"]) for r in rs)  # noqa: E731
    assert strip(recs) == strip(read_records(tmp_path / "full" / "c" / "state" / "lin@sigma=0.5.jsonl"))
    assert rep["units"]["lin@sigma=0.5"]["complete"]
    # a new model joins the saved report's units without computing them again
    other = certify_models(
        {"lin2": Linear2(seed=5)}, _split(), 0.5, n0=20, n=200, alpha=0.01, num_examples=8, batch_size=64,
        out=tmp_path / "d", progress=False, dataset="toy", from_report=tmp_path / "b" / "c",
    )  # fmt: skip
    assert set(other["units"]) == {"lin@sigma=0.25", "lin@sigma=0.5", "lin2@sigma=0.5"}
    assert (
        other["units"]["lin@sigma=0.5"]["certified_accuracy"]
        == rep["units"]["lin@sigma=0.5"]["certified_accuracy"]
    )
    with pytest.raises(ValueError, match="n 200 there, 300 here"):
        _run(tmp_path / "e", n=300, from_report=tmp_path / "a" / "c")
    with pytest.raises(ValueError, match="no report.json"):
        _run(tmp_path / "e", from_report=tmp_path / "nowhere")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from pssr import distributed as D

    torch.set_num_threads(1)
    D.init_distributed(torch.device("cpu"))
    try:
        certify_models(
            {"lin": Linear2()}, _split(), 0.5, n0=20, n=200, alpha=0.01, num_examples=7, batch_size=64,
            out=out, progress=False, dataset="toy",
        )  # fmt: skip
    finally:
        D.cleanup(sync=True)


@pytest.mark.dist
def test_two_gloo_ranks_give_the_records_of_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dist_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    one = certify_models(
        {"lin": Linear2()}, _split(), 0.5, n0=20, n=200, alpha=0.01, num_examples=7, batch_size=64,
        out=tmp_path / "one", progress=False, dataset="toy",
    )  # fmt: skip
    strip = lambda p: sorted(  # noqa: E731
        (r["index"], r["prediction"], r["radius"]) for r in read_records(p / "state" / "lin@sigma=0.5.jsonl")
    )
    assert strip(tmp_path / "two") == strip(tmp_path / "one")
    assert one["units"]["lin@sigma=0.5"]["n_examples"] == 7


def test_cli_certifies_a_checkpoint_and_names_a_missing_sigma(tmp_path, capsys):
    from pssr.cli import main
    from pssr.models.specs import model_spec
    from pssr.testing import digits_cnn
    from pssr.utils import save_checkpoint

    model, data = digits_cnn(epochs=1)
    ck = {
        "model": model_spec(model, "tiny-cnn", {"num_classes": 10, "in_channels": 1}),
        "state_dict": model.state_dict(),
        "config": {"augment": "gaussian-0.25"},
        "data": {"name": "digits"},
    }
    save_checkpoint(tmp_path / "clf.pt", ck)
    save_checkpoint(tmp_path / "bare.pt", {**ck, "config": {"augment": "none"}})
    out = tmp_path / "rep"
    args = ["certify", "--model", f"g={tmp_path / 'clf.pt'}", "--num", "3", "--n0", "10", "--n", "50",
            "--batch-size", "60", "--out", str(out), "--no-progress", "--channels-last"]  # fmt: skip
    assert main(args) == 0
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["units"]) == ["g@sigma=0.25"] and rep["units"]["g@sigma=0.25"]["n_examples"] == 3
    assert rep["settings"]["dataset"] == "digits"
    assert main(["certify", "--model", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "x")]) == 2
    assert "--sigma" in capsys.readouterr().err
