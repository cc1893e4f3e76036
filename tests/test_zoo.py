"""The model zoo: every shipped card verifies, loads with weights_only and rebuilds its model; export
and loading round-trip; a corrupted or wrong file is refused; unknown names name the closest ones.
Nothing here downloads: the url path is exercised with file:// URLs and local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pssr import zoo
from pssr.defense import PSSR, PSSRConfig
from pssr.models import create_model
from pssr.train.loop import CHECKPOINT_FORMAT
from pssr.utils import load_checkpoint, save_checkpoint
from pssr.zoo import build, store

SPEC = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}


def _classifier_checkpoint(path: Path, kind: str = "classifier") -> Path:
    """A training checkpoint as pssr's trainer writes it (random weights: the tests check mechanics);
    pssr train-adversarial writes its method ("pgd-at", "trades") as the kind."""
    torch.manual_seed(0)
    model = create_model(SPEC["name"], **SPEC["kwargs"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    opt.step()  # the optimizer holds momentum buffers, which the zoo must drop
    ck = {
        "format": CHECKPOINT_FORMAT,
        "kind": kind,
        "model": {**SPEC, "class": type(model).__name__},
        "state_dict": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": {"torch_cpu": torch.get_rng_state()},
        "epoch": 1,
        "config": {"epochs": 1},
        "data": {"name": "digits", "image_shape": [1, 8, 8], "num_classes": 10},
        "metrics": {"test_acc": 0.1},
    }
    return save_checkpoint(path, ck)


def _pssr_checkpoint(path: Path) -> Path:
    torch.manual_seed(1)
    clf = create_model(SPEC["name"], **SPEC["kwargs"]).eval()
    d = PSSR(clf, PSSRConfig(gen_width=8, scorer_width=8), image_shape=(1, 8, 8), classifier_spec=SPEC)
    d.metrics = {"data": {"name": "digits"}}
    return d.save(path)


@pytest.fixture
def tmp_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty zoo in tmp_path (cards, weights, cache), with the package's zoo untouched."""
    monkeypatch.setattr(store, "CARDS_FILE", tmp_path / "cards.json")
    monkeypatch.setattr(store, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setenv("PSSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(store.MIRROR_ENV, raising=False)
    store.CARDS_FILE.write_text(json.dumps({"schema": store.CARDS_SCHEMA, "models": []}))
    return tmp_path


def _export(src: Path, **kw: object) -> dict:
    return build.export(
        src, made_by=["test"], weights_dir=store.WEIGHTS_DIR, cards_file=store.CARDS_FILE, **kw
    )


# ------------------------------------------------------------------ the shipped zoo


def test_the_bar_model_is_shipped() -> None:
    assert "fashion-mnist/pssr" in zoo.list_models()


def test_cards_are_complete_and_consistent() -> None:
    cards = zoo.cards()
    assert cards, "the zoo ships no models"
    for c in cards:
        assert c["name"] == f"{c['dataset']}/{c['kind']}"
        assert c["file"] == f"{c['dataset']}--{c['kind']}.pt"
        assert c["made_by"] and all(isinstance(s, str) and s for s in c["made_by"])
        acc = c.get("accuracy")
        assert acc is not None, f"{c['name']} has no measured accuracies"
        for k in ("n", "subset_seed", "eps", "clean", "paper_pgd", "adaptive_pgd_full", "attacks"):
            assert k in acc, (c["name"], k)
        assert 0 <= acc["adaptive_pgd_full"] <= acc["clean"] <= 1
        shipped = store.WEIGHTS_DIR / c["file"]
        assert shipped.is_file() or c.get("url"), c["name"]
        if shipped.is_file():
            assert shipped.stat().st_size == c["size_bytes"]


def test_shipped_weights_stay_small() -> None:
    total = sum(p.stat().st_size for p in store.WEIGHTS_DIR.glob("*.pt"))
    assert total < 15 * 2**20
    assert {p.name for p in store.WEIGHTS_DIR.glob("*.pt")} == {
        c["file"] for c in zoo.cards() if (store.WEIGHTS_DIR / c["file"]).is_file()
    }, "a weights file without a card (or the reverse)"


@pytest.mark.parametrize("name", store.list_models())
def test_every_card_verifies_loads_and_predicts(name: str) -> None:
    c = zoo.card(name)
    p = zoo.path(name, download=False)
    assert store.sha256_of(p) == c["sha256"]
    raw = torch.load(p, map_location="cpu", weights_only=True)  # plain tensors and types only
    assert raw["zoo"]["name"] == name
    model = zoo.load(name)
    assert isinstance(model, PSSR) == (c["kind"] == "pssr")
    assert not model.training
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())
    x = torch.rand(3, *c["image_shape"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (3, c["num_classes"]) and torch.isfinite(logits).all()
    if isinstance(model, PSSR):
        xp = model.purify(x)
        assert xp.shape == x.shape and xp.min() >= 0 and xp.max() <= 1


# ------------------------------------------------------------------ export, load, resolve


def test_export_strips_training_state_and_round_trips(tmp_zoo: Path) -> None:
    src = _classifier_checkpoint(tmp_zoo / "clf.pt")
    c = _export(src)
    assert c["name"] == "digits/classifier" and zoo.list_models() == ["digits/classifier"]
    stored = torch.load(store.WEIGHTS_DIR / c["file"], weights_only=True)
    assert "optimizer" not in stored and "rng" not in stored
    assert all(t.dtype == torch.float16 for t in stored["state_dict"].values() if t.is_floating_point())
    assert c["size_bytes"] == (store.WEIGHTS_DIR / c["file"]).stat().st_size
    assert c["size_bytes"] < src.stat().st_size / 2
    ref = load_checkpoint(src)
    orig = create_model(SPEC["name"], **SPEC["kwargs"]).eval()
    orig.load_state_dict(ref["state_dict"])
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        want = orig(x)
        diff = (zoo.load("digits/classifier")(x) - want).abs().max().item()
    scale = want.abs().max().item()
    assert 0 < diff <= 1e-2 * scale  # half precision: close, not equal
    assert 0 < c["fp16_max_logit_change"] <= 1e-2 * scale


@pytest.mark.parametrize("kind", ["pgd-at", "trades"])
def test_adversarially_trained_checkpoints_export_under_their_method(tmp_zoo: Path, kind: str) -> None:
    c = _export(_classifier_checkpoint(tmp_zoo / f"{kind}.pt", kind=kind))
    assert (c["name"], c["kind"]) == (f"digits/{kind}", kind)
    model = zoo.load(f"digits/{kind}")
    assert not isinstance(model, PSSR) and model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_pssr_export_and_resolve_give_an_fp32_checkpoint(tmp_zoo: Path) -> None:
    _export(_pssr_checkpoint(tmp_zoo / "pssr.pt"), classifier="digits/classifier")
    p = zoo.resolve("digits/pssr")
    assert Path(p).is_relative_to(tmp_zoo / "cache" / "zoo")
    ck = load_checkpoint(p)
    floats = [t for t in ck["generator"]["state_dict"].values() if t.is_floating_point()]
    assert floats and all(t.dtype == torch.float32 for t in floats)
    d = PSSR.load(p)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(d(x), zoo.load("digits/pssr")(x))
    mtime = Path(p).stat().st_mtime_ns
    assert zoo.resolve("digits/pssr") == p and Path(p).stat().st_mtime_ns == mtime  # reused
    assert zoo.resolve("runs/x/pssr.pt") == "runs/x/pssr.pt"  # paths pass through


def test_corrupted_copy_is_refused(tmp_zoo: Path) -> None:
    c = _export(_classifier_checkpoint(tmp_zoo / "clf.pt"))
    f = store.WEIGHTS_DIR / c["file"]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match="sha256") as e:
        zoo.load("digits/classifier")
    assert "\n" not in str(e.value) and "reinstall" in str(e.value)


def test_unknown_name_names_the_closest(tmp_zoo: Path) -> None:
    _export(_classifier_checkpoint(tmp_zoo / "clf.pt"))
    for bad in ("digits/clasifier", "Digits/classifer"):
        with pytest.raises(zoo.ZooError, match="did you mean digits/classifier") as e:
            zoo.load(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(zoo.ZooError, match="unknown zoo model"):
        zoo.resolve("digits/clasifier")  # meant as a name: no such file either
    with pytest.raises(zoo.ZooError, match="available: digits/classifier"):
        zoo.card("cifar100/wrn")


def test_url_files_are_fetched_verified_and_cached(tmp_zoo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = _export(_classifier_checkpoint(tmp_zoo / "clf.pt"))
    published = tmp_zoo / "published" / c["file"]
    published.parent.mkdir()
    (store.WEIGHTS_DIR / c["file"]).rename(published)  # not shipped: only at its url
    cards = json.loads(store.CARDS_FILE.read_text())
    cards["models"][0]["url"] = published.as_uri()
    store.CARDS_FILE.write_text(json.dumps(cards))
    with pytest.raises(zoo.ZooError, match="not downloaded yet"):
        zoo.path("digits/classifier", download=False)
    got = zoo.path("digits/classifier")
    assert got == tmp_zoo / "cache" / "zoo" / c["file"] and store.sha256_of(got) == c["sha256"]
    assert isinstance(zoo.load("digits/classifier"), nn.Module)
    # a mirror (here a folder) replaces the url; a file there that is not the card's is refused
    got.unlink()
    mirror = tmp_zoo / "mirror"
    mirror.mkdir()
    (mirror / c["file"]).write_bytes(b"not the model")
    monkeypatch.setenv(store.MIRROR_ENV, str(mirror))
    with pytest.raises(zoo.ZooError, match="sha256"):
        zoo.path("digits/classifier")
    assert not any((tmp_zoo / "cache" / "zoo").iterdir())  # nothing half-fetched left behind


def test_measure_records_the_shipped_files_accuracies(tmp_zoo: Path) -> None:
    c = _export(_classifier_checkpoint(tmp_zoo / "clf.pt"))
    acc = build.measure(
        "digits/classifier", n=12, subset_seed=3, out=tmp_zoo / "eval", cards_file=store.CARDS_FILE
    )
    assert zoo.card("digits/classifier")["accuracy"] == acc
    assert acc["n"] == 12 and acc["subset_seed"] == 3 and acc["eps"] == 0.1
    assert 0 <= acc["adaptive_pgd_full"] <= acc["clean"] <= 1 and acc["paper_pgd"] <= acc["clean"]
    assert [a["steps"] for a in acc["attacks"]] == [40, 100]
    # re-exporting the same weights keeps the measurement; other weights would drop it
    assert (
        _export(tmp_zoo / "clf.pt")["accuracy"] == acc
        and c["sha256"] == zoo.card("digits/classifier")["sha256"]
    )


def test_docs_table_is_rendered_from_the_cards(tmp_path: Path) -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "zoo.md"
    copy = tmp_path / "zoo.md"
    copy.write_text(doc.read_text())
    build.render_doc(copy)
    assert copy.read_text() == doc.read_text(), "docs/zoo.md is stale: python -m pssr.zoo.build render-doc"
    copy.write_text("no block here")
    with pytest.raises(zoo.ZooError, match="zoo:begin"):
        build.render_doc(copy)


# ------------------------------------------------------------------ CLI


def test_cli_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    from pssr.cli import main

    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "kind", "size"]
    assert "fashion-mnist/pssr" in out
    assert main(["zoo", "show", "fashion-mnist/pssr"]) == 0
    assert "verified:" in capsys.readouterr().out
    assert main(["zoo", "show", "fashion-mnist/psr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean fashion-mnist/pssr" in err


def test_purify_with_a_zoo_model_right_after_install(tmp_path, monkeypatch):
    """The issue's bar: `pssr purify --model fashion-mnist/pssr IMG.png` with no training and no --out."""
    import numpy as np
    from PIL import Image

    from pssr.cli import main

    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.full((28, 28), 128, dtype=np.uint8)).save("img.png")
    assert main(["purify", "--model", "fashion-mnist/pssr", "img.png"]) == 0
    assert (tmp_path / "purified" / "img.png").is_file()
