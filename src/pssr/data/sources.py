"""The registered datasets. Each builder returns a :class:`pssr.data.base.Dataset`."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from pssr.data.base import (
    DataError,
    Dataset,
    Split,
    shuffled,
    split_train_val,
    three_way_split,
    to_float_nchw,
)
from pssr.data.download import download
from pssr.data.idx import read_idx
from pssr.registry import Registry

log = logging.getLogger(__name__)

DATASETS: Registry[Dataset] = Registry("dataset")

IDX_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

# Official locations and checksums. MNIST's sha256 sums are the ones published alongside the
# standard mirrors; Fashion-MNIST publishes md5 sums in its README.
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_SUMS = {
    "train-images-idx3-ubyte.gz": "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_SUMS = {
    "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_SUM = "sha256:6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_SUM = "sha256:85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def cache_dir() -> Path:
    """Where extracted archives and decoded arrays are cached (``$PSSR_CACHE`` or ~/.cache/pssr)."""
    return Path(os.environ.get("PSSR_CACHE", Path.home() / ".cache" / "pssr"))


def shared_data_dir(name: str | None = None) -> Path | None:
    """The ``shared/data`` folder beside the project checkout (or in it, or above the working
    directory), when there is one; with ``name``, the first such folder that holds that file (a
    partial copy, e.g. one archive copied into the checkout for a GPU machine, does not hide the rest)."""
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *Path.cwd().parents, *here.parents]:
        cand = parent / "shared" / "data"
        if cand.is_dir() and (name is None or (cand / name).exists()):
            return cand
    return None


# ---------------------------------------------------------------------------------------------
@DATASETS.register("digits")
def digits(val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, **_: object) -> Dataset:
    """scikit-learn's bundled UCI digits (1,797 images, 8x8, values 0..16): no files needed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(d.target.astype(np.int64))
    tr, va, te = three_way_split(x, y, test_fraction, val_fraction, seed)
    return Dataset(
        "digits", tr, va, te, tuple(str(i) for i in range(10)), {"source": "sklearn.datasets.load_digits"}
    )


def _idx_dataset(
    name: str,
    data_dir: Path | None,
    sums: dict[str, str],
    url: str,
    classes: tuple[str, ...],
    val_fraction: float,
    seed: int,
    download_ok: bool,
    fallbacks: tuple[Path, ...] = (),
) -> Dataset:
    candidates = [Path(data_dir)] if data_dir else [*fallbacks, cache_dir() / name]
    root = next((c for c in candidates if all((c / f).is_file() for f in IDX_FILES)), None)
    if root is None:
        if not download_ok:
            where = ", ".join(str(c) for c in candidates)
            raise DataError(
                f"{name}: the four IDX files ({', '.join(IDX_FILES)}) were not found in {where}. Pass "
                f"--data-dir to a folder holding them, or allow download=True to fetch them from {url}"
                + (
                    " (or on Debian: apt-get install dataset-fashion-mnist)"
                    if name == "fashion-mnist"
                    else ""
                )
            )
        root = Path(data_dir) if data_dir else cache_dir() / name
        for f in IDX_FILES:
            download(url + f, root / f, sums[f])
    xtr, ytr, xte, yte = (read_idx(root / f) for f in IDX_FILES)
    for imgs, labels, which in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if imgs.shape[0] != labels.shape[0]:
            raise DataError(
                f"{root}: {which} images ({imgs.shape[0]}) and labels ({labels.shape[0]}) disagree in count"
            )
    x = to_float_nchw(xtr, "NHW")
    y = torch.from_numpy(ytr.astype(np.int64))
    train, val = split_train_val(x, y, val_fraction, seed)
    test = Split(to_float_nchw(xte, "NHW"), torch.from_numpy(yte.astype(np.int64)))
    return Dataset(name, train, val, test, classes, {"source": str(root)})


@DATASETS.register("mnist")
def mnist(
    data_dir: str | Path | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    download: bool = False,
    **_: object,
) -> Dataset:
    """MNIST from its gzipped IDX files (60k train / 10k test)."""
    return _idx_dataset(
        "mnist",
        Path(data_dir) if data_dir else None,
        MNIST_SUMS,
        MNIST_URL,
        tuple(str(i) for i in range(10)),
        val_fraction,
        seed,
        download,
    )


@DATASETS.register("fashion-mnist")
def fashion_mnist(
    data_dir: str | Path | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    download: bool = False,
    **_: object,
) -> Dataset:
    """Fashion-MNIST from gzipped IDX files; Debian's dataset-fashion-mnist package is found automatically."""
    return _idx_dataset(
        "fashion-mnist",
        Path(data_dir) if data_dir else None,
        FASHION_SUMS,
        FASHION_URL,
        FASHION_CLASSES,
        val_fraction,
        seed,
        download,
        fallbacks=(FASHION_DEBIAN_DIR,),
    )


# ---------------------------------------------------------------------------------------------
def _unpickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"missing CIFAR batch file {path}")
    try:
        with open(path, "rb") as f:
            # The official CIFAR batches are pickles of dicts of numpy arrays and lists; only
            # load them from the verified archive or a folder the user trusts.
            return pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(
            f"{path} is truncated or not a CIFAR python batch ({e}); fetch the archive again"
        ) from e


def _cifar_root(
    name: str, data_dir: Path | None, folder: str, url: str, checksum: str, download_ok: bool
) -> Path:
    bases = [Path(data_dir)] if data_dir else [cache_dir() / name]
    for b in bases:
        for cand in (b / folder, b):
            if (cand / ("test" if name == "cifar100" else "test_batch")).is_file():
                return cand
        archive = b / url.rsplit("/", 1)[1]
        if archive.is_file():
            return _extract_cifar(archive, checksum, folder)
    if not download_ok:
        raise DataError(
            f"{name}: no '{folder}' folder or archive in {', '.join(map(str, bases))}. Pass --data-dir to a folder "
            f"holding {folder}/ or {url.rsplit('/', 1)[1]}, or allow download=True to fetch {url}"
        )
    archive = download(
        url, (Path(data_dir) if data_dir else cache_dir() / name) / url.rsplit("/", 1)[1], checksum
    )
    return _extract_cifar(archive, checksum, folder)


def _extract_cifar(archive: Path, checksum: str, folder: str) -> Path:
    from pssr.data.download import verify

    verify(archive, checksum)
    dest = archive.parent
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest / folder


@DATASETS.register("cifar10")
def cifar10(
    data_dir: str | Path | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    download: bool = False,
    **_: object,
) -> Dataset:
    """CIFAR-10 from the official python pickle batches (folder or verified archive)."""
    root = _cifar_root(
        "cifar10",
        Path(data_dir) if data_dir else None,
        "cifar-10-batches-py",
        CIFAR10_URL,
        CIFAR10_SUM,
        download,
    )
    parts = [_unpickle(root / f"data_batch_{i}") for i in range(1, 6)]
    test = _unpickle(root / "test_batch")
    meta = _unpickle(root / "batches.meta")
    classes = tuple(c.decode() for c in meta[b"label_names"])

    def arr(batches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        y = np.concatenate([np.asarray(b[b"labels"]) for b in batches]).astype(np.int64)
        return to_float_nchw(x, "NCHW"), torch.from_numpy(y)

    train, val = split_train_val(*arr(parts), val_fraction, seed)
    return Dataset("cifar10", train, val, Split(*arr([test])), classes, {"source": str(root)})


@DATASETS.register("cifar100")
def cifar100(
    data_dir: str | Path | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    download: bool = False,
    **_: object,
) -> Dataset:
    """CIFAR-100 (fine labels) from the official python pickle batches."""
    root = _cifar_root(
        "cifar100",
        Path(data_dir) if data_dir else None,
        "cifar-100-python",
        CIFAR100_URL,
        CIFAR100_SUM,
        download,
    )
    tr, te, meta = _unpickle(root / "train"), _unpickle(root / "test"), _unpickle(root / "meta")

    def arr(b: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            to_float_nchw(b[b"data"].reshape(-1, 3, 32, 32), "NCHW"),
            torch.from_numpy(np.asarray(b[b"fine_labels"], dtype=np.int64)),
        )

    train, val = split_train_val(*arr(tr), val_fraction, seed)
    classes = tuple(c.decode() for c in meta[b"fine_label_names"])
    return Dataset("cifar100", train, val, Split(*arr(te)), classes, {"source": str(root)})


# ---------------------------------------------------------------------------------------------
STALE_EXTRACTION_SECONDS = 3600.0


def _sweep_stale_extractions(dest: Path) -> None:
    """Remove ``dest``'s per-process extraction folders left by killed processes: those untouched for
    an hour (a live extraction writes into its folder; a CIFAR archive takes seconds)."""
    import shutil

    now = time.time()
    for p in dest.parent.glob(f"{dest.name}.*.tmp"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > STALE_EXTRACTION_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass  # removed by another process meanwhile


def _extract_archive(archive: Path) -> Path:
    """Extract a .tar.gz/.tgz/.tar image archive once into the cache; return the extracted folder."""
    st = archive.stat()
    key = hashlib.sha256(f"{archive.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    dest = cache_dir() / "extracted" / f"{archive.name.split('.')[0]}-{key}"
    if not (dest / ".complete").is_file():
        import shutil
        import tempfile

        # Each process extracts into its own folder and moves it into place complete: several ranks of
        # one torchrun (or two runs) may load the same archive at once; the first to finish wins.
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", suffix=".tmp", dir=dest.parent))
        log.info("extracting %s into %s (once)", archive, dest)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            (tmp / ".complete").write_text("ok\n")
        except (tarfile.TarError, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{archive} is truncated or not a tar archive ({e}); fetch it again") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if dest.exists() and not (dest / ".complete").is_file():
            shutil.rmtree(dest, ignore_errors=True)  # left half-written by an older version
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / ".complete").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    _sweep_stale_extractions(dest)
    # An archive usually wraps everything in one top folder: descend until train/ and test/ appear.
    root = dest
    for _ in range(3):
        if (root / "train").is_dir():
            break
        subs = [p for p in root.iterdir() if p.is_dir()]
        if len(subs) != 1:
            break
        root = subs[0]
    return root


def _read_class_folders(
    split_dir: Path, classes: tuple[str, ...] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    found = tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir()))
    if not found:
        raise DataError(f"{split_dir} has no class sub-folders; expected {split_dir}/<class>/*.png|jpg")
    classes = classes or found
    unknown = set(found) - set(classes)
    if unknown:
        raise DataError(f"{split_dir} has class folders {sorted(unknown)} that the train split lacks")
    images, labels, shape = [], [], None
    for label, cls in enumerate(classes):
        cdir = split_dir / cls
        if not cdir.is_dir():
            continue
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB" if im.mode not in ("L", "1", "I;16") else "L"))
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"cannot decode image {f} ({e}); remove or replace it") from e
            if shape is None:
                shape = arr.shape
            elif arr.shape != shape:
                raise DataError(
                    f"image {f} has shape {arr.shape}, others in the folder have {shape}; resize them to one size"
                )
            images.append(arr)
            labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {split_dir}")
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


@DATASETS.register("image-folder")
def image_folder(
    root: str | Path | None = None,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    **_: object,
) -> Dataset:
    """Images in ``root/{train,test}/<class>/*.{png,jpg}`` (a folder or a .tar.gz of one).

    Decoded arrays are cached next to the extracted archive, so a second load takes a second.
    """
    root = Path(root or data_dir or "")
    if not str(root) or not root.exists():
        raise DataError(
            f"image-folder: root {str(root)!r} does not exist; pass root=<folder or .tar.gz with train/ and test/>"
        )
    if root.is_file():
        root = _extract_archive(root)
    for s in ("train", "test"):
        if not (root / s).is_dir():
            raise DataError(
                f"image-folder: {root} has no '{s}' folder; expected {root}/{{train,test}}/<class>/*.png|jpg"
            )
    cache = root / ".pssr-decoded.npz"
    if root.is_relative_to(cache_dir()) and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        xtr, ytr, xte, yte, classes = z["xtr"], z["ytr"], z["xte"], z["yte"], tuple(z["classes"].tolist())
    else:
        xtr, ytr, classes = _read_class_folders(root / "train", None)
        xte, yte, _ = _read_class_folders(root / "test", classes)
        if root.is_relative_to(cache_dir()):
            buf = io.BytesIO()
            np.savez(buf, xtr=xtr, ytr=ytr, xte=xte, yte=yte, classes=np.asarray(classes))
            from pssr.utils.io import atomic_write_bytes

            atomic_write_bytes(cache, buf.getvalue())
    layout = "NHW" if xtr.ndim == 3 else "NHWC"
    train, val = split_train_val(to_float_nchw(xtr, layout), torch.from_numpy(ytr), val_fraction, seed)
    # class folders are read one after the other: the test split comes in a seeded random order
    test = shuffled(Split(to_float_nchw(xte, layout), torch.from_numpy(yte)), seed)
    return Dataset(root.name, train, val, test, classes, {"source": str(root)})


@DATASETS.register("cifar10-jpeg")
def cifar10_jpeg(
    data_dir: str | Path | None = None, val_fraction: float = 0.0, seed: int = 0, **kw: object
) -> Dataset:
    """The CIFAR-10 JPEG archive (``shared/data/cifar10-jpeg.tar.gz``) read through ``image-folder``."""
    path = Path(data_dir) if data_dir else None
    if path is None or path.is_dir() and not (path / "train").is_dir():
        base = path or shared_data_dir("cifar10-jpeg.tar.gz")
        path = base / "cifar10-jpeg.tar.gz" if base else None
    if path is None or not path.exists():
        raise DataError(
            "cifar10-jpeg: archive not found; pass --data-dir to cifar10-jpeg.tar.gz or its folder"
        )
    d = image_folder(root=path, val_fraction=val_fraction, seed=seed)
    return Dataset("cifar10-jpeg", d.train, d.val, d.test, d.classes, d.info)


@DATASETS.register("npz")
def npz(
    path: str | Path | None = None,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "npz",
    **_: object,
) -> Dataset:
    """Arrays ``x`` (uint8 (N,H,W) / (N,H,W,C), or float in [0,1]) and ``y`` in an .npz; seeded split.

    When the file also holds ``x_test``/``y_test`` those form the test split.
    """
    path = Path(path or data_dir or "")
    if not path.is_file():
        raise DataError(f"npz: file {str(path)!r} not found; pass path=<file.npz with arrays x and y>")
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is truncated or not an .npz file ({e})") from e
    if not {"x", "y"} <= keys:
        raise DataError(f"{path} must hold arrays 'x' and 'y', found {sorted(keys)}")

    def conv(x: np.ndarray) -> torch.Tensor:
        if x.dtype == np.uint8:
            return to_float_nchw(x, "NHW" if x.ndim == 3 else "NHWC")
        t = torch.from_numpy(np.asarray(x, dtype=np.float32))
        t = t.unsqueeze(1) if t.ndim == 3 else t
        if t.min() < 0 or t.max() > 1:
            raise DataError(f"{path}: float images must lie in [0, 1]")
        return t

    try:
        x, y = conv(z["x"]), torch.from_numpy(z["y"].astype(np.int64))
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path} is truncated or corrupt ({e})") from e
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x has {x.shape[0]} images but y has {y.shape[0]} labels")
    if {"x_test", "y_test"} <= keys:
        train, val = split_train_val(x, y, val_fraction, seed)
        test = Split(conv(z["x_test"]), torch.from_numpy(z["y_test"].astype(np.int64)))
    else:
        train, val, test = three_way_split(x, y, test_fraction, val_fraction, seed)
    n_cls = int(max(y.max(), test.y.max())) + 1
    return Dataset(name, train, val, test, tuple(str(i) for i in range(n_cls)), {"source": str(path)})


@DATASETS.register("mnist-10k")
def mnist_10k(
    data_dir: str | Path | None = None, val_fraction: float = 0.1, seed: int = 0, **_: object
) -> Dataset:
    """The 10,000 real MNIST digits of ``shared/data/mnist-10k.npz`` with a seeded 70/10/20 split."""
    path = Path(data_dir) if data_dir else None
    if path is None or path.is_dir():
        base = path or shared_data_dir("mnist-10k.npz")
        path = base / "mnist-10k.npz" if base else None
    if path is None or not path.is_file():
        raise DataError("mnist-10k: mnist-10k.npz not found; pass --data-dir to the file or its folder")
    return npz(path=path, val_fraction=val_fraction, test_fraction=0.2, seed=seed, name="mnist-10k")
