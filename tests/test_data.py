"""Dataset contracts (shapes, dtypes, ranges, split sizes) and clear errors for bad files."""

from __future__ import annotations

import gzip
import os
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import pssr.data as pdata
from pssr.data import DataError, Split
from pssr.data.idx import read_idx
from pssr.data.sources import FASHION_DEBIAN_DIR, IDX_FILES, shared_data_dir


def check_contract(
    d: pdata.Dataset, shape: tuple[int, int, int], sizes: tuple[int, int, int], classes: int
) -> None:
    assert d.image_shape == shape
    assert (len(d.train), len(d.val), len(d.test)) == sizes
    assert d.num_classes == classes == len(d.classes)
    for s in (d.train, d.val, d.test):
        if len(s) == 0:
            continue
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.x.shape[1:] == shape
        assert float(s.x.min()) >= 0.0 and float(s.x.max()) <= 1.0
        assert int(s.y.min()) >= 0 and int(s.y.max()) < classes
    # every class is present in the training split
    assert torch.bincount(d.train.y, minlength=classes).min() > 0


def test_digits_contract_and_seeded_split():
    d = pdata.load("digits")
    check_contract(d, (1, 8, 8), (1258, 180, 359), 10)
    again, other = pdata.load("digits"), pdata.load("digits", seed=1)
    assert torch.equal(d.train.x, again.train.x) and torch.equal(d.test.y, again.test.y)
    assert not torch.equal(d.test.y, other.test.y)
    # no image is in two splits (splits are a partition of the 1,797 images)
    flat = lambda s: {tuple(r) for r in s.x.flatten(1).mul(16).round().int().tolist()}  # noqa: E731
    assert len(flat(d.train)) + len(flat(d.val)) + len(flat(d.test)) >= len(
        flat(d.train) | flat(d.val) | flat(d.test)
    )


def test_shared_data_dir_skips_folders_without_the_file(tmp_path, monkeypatch):
    real = shared_data_dir("mnist-10k.npz")
    if real is None:
        pytest.skip("shared/data/mnist-10k.npz is not present on this machine")
    (tmp_path / "shared" / "data").mkdir(parents=True)  # a partial copy nearer the working directory
    monkeypatch.chdir(tmp_path)
    assert shared_data_dir() == tmp_path / "shared" / "data"
    found = shared_data_dir("mnist-10k.npz")
    assert found != tmp_path / "shared" / "data" and (found / "mnist-10k.npz").is_file()
    assert pdata.load("mnist-10k").test.x.shape == (2000, 1, 28, 28)


def test_mnist_10k_contract():
    base = shared_data_dir("mnist-10k.npz")
    if base is None:
        pytest.skip("shared/data/mnist-10k.npz is not present on this machine")
    d = pdata.load("mnist-10k")
    check_contract(d, (1, 28, 28), (7000, 1000, 2000), 10)


def test_fashion_mnist_contract():
    if not all((FASHION_DEBIAN_DIR / f).is_file() for f in IDX_FILES):
        pytest.skip(
            f"Fashion-MNIST not installed at {FASHION_DEBIAN_DIR} (apt-get install dataset-fashion-mnist)"
        )
    d = pdata.load("fashion-mnist")
    check_contract(d, (1, 28, 28), (60000, 0, 10000), 10)
    assert torch.bincount(d.test.y).tolist() == [1000] * 10


def test_split_validation_and_subset():
    with pytest.raises(ValueError, match="N, C, H, W"):
        Split(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="float32"):
        Split(torch.zeros(3, 1, 8, 8, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    s = Split(torch.rand(10, 1, 4, 4), torch.arange(10))
    assert len(s.subset(4)) == 4 and torch.equal(s.subset(4).y, torch.arange(4))
    assert torch.equal(s.subset(5, seed=3).y, s.subset(5, seed=3).y)
    with pytest.raises(ValueError, match="positive"):
        s.subset(0)


def test_evaluation_splits_of_a_class_sorted_source_are_in_random_order():
    """A source stored class by class (mnist-10k.npz, an image folder) must not give a first n of one
    class: evaluations take the first n of a split. Train keeps the source's order."""
    from pssr.data.base import shuffled, split_train_val, three_way_split

    y = torch.arange(10).repeat_interleave(100)  # sorted by label
    x = torch.rand(1000, 1, 4, 4)
    train, val, test = three_way_split(x, y, 0.2, 0.1, seed=0)
    assert len(set(test.y[:50].tolist())) >= 8 and len(set(val.y[:50].tolist())) >= 8
    assert torch.equal(train.y, train.y.sort().values)  # position-based hold-outs of training stay valid
    assert sorted(test.y.tolist() + val.y.tolist() + train.y.tolist()) == y.tolist()
    tr2, va2 = split_train_val(x, y, 0.2, seed=1)
    assert len(set(va2.y[:30].tolist())) >= 8 and torch.equal(tr2.y, tr2.y.sort().values)
    sh = shuffled(Split(x, y), seed=3)
    assert len(set(sh.y[:30].tolist())) >= 8 and torch.equal(shuffled(Split(x, y), seed=3).x, sh.x)
    assert sorted(sh.y.tolist()) == y.tolist()


# --- IDX ---------------------------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx_set(folder: Path, n: int = 6) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    content = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(4) % 10).astype(np.uint8),
    }
    for name, arr in content.items():
        (folder / name).write_bytes(gzip.compress(_idx_bytes(arr)))


def test_idx_roundtrip_through_the_mnist_loader(tmp_path):
    _write_idx_set(tmp_path)
    d = pdata.load("mnist", data_dir=tmp_path)
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert torch.equal(d.train.x[:, 0], torch.from_numpy(raw).float() / 255)
    assert d.train.y.tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.parametrize("damage", ["truncated-data", "bad-magic", "truncated-gzip", "count-mismatch"])
def test_corrupt_idx_names_the_file(tmp_path, damage):
    _write_idx_set(tmp_path)
    target = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(target.read_bytes())
    if damage == "truncated-data":
        target.write_bytes(gzip.compress(raw[:-100]))
    elif damage == "bad-magic":
        target.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))
    elif damage == "truncated-gzip":
        target.write_bytes(target.read_bytes()[:40])
    else:  # 5 labels for 6 images
        target = tmp_path / "train-labels-idx1-ubyte.gz"
        target.write_bytes(gzip.compress(_idx_bytes(np.arange(5, dtype=np.uint8))))
    with pytest.raises(DataError) as err:
        pdata.load("fashion-mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value)
    if damage != "count-mismatch":
        assert target.name in str(err.value)


def test_missing_idx_files_explain_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataError, match="were not found in"):
        pdata.load("mnist", data_dir=tmp_path)


# --- npz ---------------------------------------------------------------------------------------
def test_npz_loads_and_corrupt_npz_names_the_file(tmp_path):
    good = tmp_path / "good.npz"
    rng = np.random.default_rng(0)
    np.savez(good, x=rng.integers(0, 256, (50, 6, 6), dtype=np.uint8), y=np.arange(50) % 5)
    d = pdata.load("npz", path=good)
    check_contract(d, (1, 6, 6), (35, 5, 10), 5)

    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a numpy archive at all")
    with pytest.raises(DataError, match="junk.npz"):
        pdata.load("npz", path=junk)
    nokeys = tmp_path / "nokeys.npz"
    np.savez(nokeys, a=np.zeros(3))
    with pytest.raises(DataError, match="nokeys.npz.*'x' and 'y'"):
        pdata.load("npz", path=nokeys)


def test_truncated_npz_names_the_file(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((50, 6, 6), dtype=np.uint8), y=np.arange(50) % 5)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(DataError, match="bad.npz"):
        pdata.load("npz", path=bad)


# --- image folders and archives -----------------------------------------------------------------
def _make_png_folder(root: Path) -> dict[str, list[np.ndarray]]:
    from PIL import Image

    rng = np.random.default_rng(1)
    made: dict[str, list[np.ndarray]] = {}
    for split, n in (("train", 5), ("test", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.png")
                made.setdefault(f"{split}/{cls}", []).append(arr)
    return made


def test_image_folder_loads_pngs(tmp_path, monkeypatch):
    monkeypatch.setenv("PSSR_CACHE", str(tmp_path / "cache"))
    made = _make_png_folder(tmp_path / "imgs")
    d = pdata.load("image-folder", root=tmp_path / "imgs", val_fraction=0.0)
    check_contract(d, (3, 8, 8), (10, 0, 4), 2)
    assert d.classes == ("cat", "dog")
    # test split: read in class order then file order, then put in the seeded random order of
    # pssr.data.base.shuffled; PNG is lossless, so pixels match exactly
    from pssr.data.base import shuffled

    expect = np.stack(made["test/cat"] + made["test/dog"])  # (4, 8, 8, 3)
    in_folder_order = Split(
        torch.from_numpy(expect).permute(0, 3, 1, 2).float() / 255, torch.tensor([0, 0, 1, 1])
    )
    want = shuffled(in_folder_order, 0)
    assert torch.equal(d.test.x, want.x) and torch.equal(d.test.y, want.y)
    assert sorted(d.test.y.tolist()) == [0, 0, 1, 1]


def test_image_folder_archive_and_corrupt_archive(tmp_path, monkeypatch):
    import tarfile

    monkeypatch.setenv("PSSR_CACHE", str(tmp_path / "cache"))
    _make_png_folder(tmp_path / "imgs")
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "imgs", arcname="imgs")
    d = pdata.load("image-folder", root=archive, val_fraction=0.0)
    assert (len(d.train), len(d.test)) == (10, 4)

    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="broken.tar.gz"):
        pdata.load("image-folder", root=broken)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x00" * 10 + b"not a tar")
    with pytest.raises(DataError, match="junk.tar.gz"):
        pdata.load("image-folder", root=junk)


def test_archive_extracted_by_several_loaders_at_once(tmp_path, monkeypatch):
    """Ranks of one torchrun load the same archive together: each must get the complete folder, and no
    temporary folder may be left behind (a fixed temporary name once made the second rank crash)."""
    import tarfile
    import threading

    from pssr.data.sources import _extract_archive

    monkeypatch.setenv("PSSR_CACHE", str(tmp_path / "cache"))
    _make_png_folder(tmp_path / "imgs")
    archive = tmp_path / "imgs.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "imgs", arcname="imgs")
    start, roots, errors = threading.Barrier(4), [], []

    def load() -> None:
        start.wait()
        try:
            roots.append(_extract_archive(archive))
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(roots)) == 1
    assert sorted(p.name for p in (roots[0] / "train").iterdir()) == ["cat", "dog"]
    extracted = tmp_path / "cache" / "extracted"
    assert [p.name for p in extracted.iterdir() if p.name.endswith(".tmp")] == []
    # a folder an older version left without its .complete marker is replaced, not trusted
    (dest,) = list(extracted.iterdir())
    (dest / ".complete").unlink()
    (roots[0] / "train" / "cat" / "0.png").unlink()
    root = _extract_archive(archive)
    assert (root / "train" / "cat" / "0.png").is_file() and (dest / ".complete").is_file()
    # folders of killed extractions are swept once untouched for an hour; a recent one (maybe live) stays
    stale, recent = (extracted / f"{dest.name}.{tag}.tmp" for tag in ("old", "new"))
    for p in (stale, recent):
        (p / "imgs").mkdir(parents=True)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert _extract_archive(archive) == root
    assert not stale.exists() and recent.is_dir()


def test_image_folder_undecodable_image_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PSSR_CACHE", str(tmp_path / "cache"))
    _make_png_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "dog" / "9.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="9.png"):
        pdata.load("image-folder", root=tmp_path / "imgs")


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*digits"):
        pdata.load("nope")
