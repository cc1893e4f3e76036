"""Files in, files out: ``pssr purify`` on image files (:func:`purify_files`).

Every input is checked before anything is written (each file exists, is an image PIL can decode,
has the defense's size, and no two inputs write the same output), so a bad file in a batch is a
one-line error naming it and the output folder is left as it was. Colour conversions that lose
information (colour to gray, a transparent alpha channel dropped, CMYK to RGB) are reported with a
:class:`ColorConversionWarning` naming the file and the conversion.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


class ImageFileError(ValueError):
    """An input image cannot be used; the message names the file and the fix."""


class ColorConversionWarning(UserWarning):
    """An image's colours were changed to fit the defense (the message names file and conversion)."""


# PIL modes holding one gray channel (16-bit ones are scaled, not clipped, to [0, 1])
_GRAY_MODES = ("L", "1")
_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _lossy_changes(im: Any, channels: int) -> list[str]:
    """The information a conversion of PIL image ``im`` to ``channels`` channels loses, in words."""
    changes = []
    rgba = np.asarray(im.convert("RGBA"))
    has_alpha = "A" in im.getbands() or "transparency" in im.info
    if has_alpha and (rgba[..., 3] < 255).any():
        changes.append(f"alpha channel dropped ({int((rgba[..., 3] < 255).sum())} transparent pixels)")
    if im.mode == "CMYK":
        changes.append("CMYK colours converted to RGB")
    if channels == 1 and not ((rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()):
        changes.append("colours converted to gray (L = 0.299 R + 0.587 G + 0.114 B)")
    return changes


def read_image(path: str | Path, image_shape: tuple[int, int, int]) -> Tensor:
    """A PNG/JPEG/... as a (1, C, H, W) float tensor in [0, 1], converted to C channels (gray or RGB).

    Images are never resized: a size other than (H, W) is an :class:`ImageFileError`, as are a missing
    file, a folder and a file PIL cannot decode. A lossy colour conversion warns
    (:class:`ColorConversionWarning`).
    """
    from PIL import Image, UnidentifiedImageError

    c, h, w = image_shape
    if c not in (1, 3):
        raise ImageFileError(f"image files can feed 1- or 3-channel defenses, this one takes C={c}")
    path = Path(path)
    if path.is_dir():
        raise ImageFileError(
            f"{path} is a folder, not an image; pass the image files in it (e.g. {path}/*.png)"
        )
    if not path.is_file():
        raise ImageFileError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not half-way through the batch
            if im.size != (w, h):
                raise ImageFileError(
                    f"{path}: image is {im.size[0]}x{im.size[1]} (WxH) but the defense takes {w}x{h}; resize "
                    "it first (pssr does not resize, to avoid silently changing the input)"
                )
            if c == 1 and im.mode in _GRAY16_MODES:
                arr = np.asarray(im, dtype=np.float32) / 65535.0  # (H, W)
                return torch.from_numpy(np.clip(arr, 0.0, 1.0)).view(1, 1, h, w)
            target = "L" if c == 1 else "RGB"
            if im.mode not in ((*_GRAY_MODES,) if c == 1 else ("RGB",)) and (
                changes := _lossy_changes(im, c)
            ):
                warnings.warn(
                    f"{path}: {im.mode} image converted to {target} for this {c}-channel defense: "
                    + ", ".join(changes),
                    ColorConversionWarning,
                    stacklevel=2,
                )
            data = im.convert(target).tobytes()
    except UnidentifiedImageError as e:
        raise ImageFileError(
            f"{path} is not an image file PIL can read (PNG, JPEG, BMP, ...); remove it"
        ) from e
    except OSError as e:  # truncated or corrupt data, unreadable file
        raise ImageFileError(f"{path} is truncated or corrupt ({e}); replace it") from e
    arr = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return arr.view(h, w, c).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def write_image(path: str | Path, x: Tensor) -> Path:
    """Write a (C, H, W) image in [0, 1] as an 8-bit PNG (atomically)."""
    import io

    from PIL import Image

    from pssr.utils import atomic_write_bytes

    arr = (x.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr, mode="L" if arr.shape[2] == 1 else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def _check_out_dir(out: Path) -> None:
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise ImageFileError(
                    f"--out {out}: {p} is a file, not a folder; give a folder for the purified images "
                    "(it is created when missing)"
                )
            return


def read_images(
    images: Sequence[str | Path], image_shape: tuple[int, int, int], out_dir: str | Path, figure: bool = False
) -> list[Tensor]:
    """Every image read and checked before anything is written: one :class:`ImageFileError` listing
    each unusable file (and outputs that would collide or overwrite an input)."""
    if not images:
        raise ImageFileError("no images given; pass one or more image files")
    out = Path(out_dir)
    _check_out_dir(out)
    problems: list[str] = []
    xs: list[Tensor] = []
    targets: dict[Path, str] = {}
    inputs = {Path(p).resolve() for p in images}
    for p in images:
        try:
            xs.append(read_image(p, image_shape))
        except ImageFileError as e:
            problems.append(str(e))
            continue
        for dst in [out / f"{Path(p).stem}.png"] + ([out / f"{Path(p).stem}-figure.png"] if figure else []):
            if dst.resolve() in inputs:
                problems.append(f"{p}: its output {dst} would overwrite an input; choose another --out")
            elif dst in targets:
                problems.append(f"{p} and {targets[dst]} would both write {dst}; rename one of them")
            targets[dst] = str(p)
    if problems:
        lead = (
            f"{len(problems)} problem(s) with the {len(images)} input(s), nothing written: "
            if len(images) > 1
            else ""
        )
        raise ImageFileError(lead + "; ".join(problems))
    return xs


def purify_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    figure: bool = False,
    device: str | torch.device | None = None,
) -> list[dict[str, Any]]:
    """Purify image files with a saved PSSR; write ``<out>/<stem>.png`` (and ``<stem>-figure.png``).

    All inputs are read and checked first (:func:`read_images`); nothing is written unless every one
    is usable. Returns one record per image: paths and the classifier's prediction before and after
    purification.
    """
    from pssr.defense.pssr import PSSR
    from pssr.utils import default_device

    defense = PSSR.load(checkpoint, device=default_device(device))
    xs = read_images(images, defense.image_shape, out_dir, figure=figure)
    dev = next(defense.parameters()).device
    out = Path(out_dir)
    records = []
    for p, x in zip(images, xs):
        x = x.to(dev)
        with torch.no_grad():
            scores, mask = defense.score(x), defense.mask(x)
            x_p = defense.restore(x, mask)
            before = int(defense.classifier(x).argmax(1))
            after = int(defense.classifier(x_p).argmax(1))
        dst = write_image(out / f"{Path(p).stem}.png", x_p[0])
        rec: dict[str, Any] = {
            "input": str(p),
            "output": str(dst),
            "pred_before": before,
            "pred_after": after,
            "removed_pixels": int(mask.sum()),
        }
        if figure:
            rec["figure"] = str(
                _figure(
                    out / f"{Path(p).stem}-figure.png", x[0], scores[0, 0], mask[0, 0], x_p[0], before, after
                )
            )
        records.append(rec)
    return records


def _figure(
    path: Path, x: Tensor, scores: Tensor, mask: Tensor, x_p: Tensor, before: int, after: int
) -> Path:
    """Side-by-side PNG: input, score map, mask, restored image; predictions in the titles."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pssr.utils import atomic_write_bytes

    def img(t: Tensor) -> Any:
        a = t.detach().cpu().permute(1, 2, 0).numpy()
        return a[:, :, 0] if a.shape[2] == 1 else a

    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
    panels = [
        (img(x), f"input (pred {before})", "gray"),
        (scores.cpu().numpy(), "pixel scores", "magma"),
        (mask.cpu().numpy(), f"mask ({int(mask.sum())} removed)", "gray"),
        (img(x_p), f"restored (pred {after})", "gray"),
    ]
    for ax, (a, title, cmap) in zip(axes, panels):
        ax.imshow(
            a,
            cmap=cmap if a.ndim == 2 else None,
            vmin=None if cmap == "magma" else 0,
            vmax=None if cmap == "magma" else 1,
        )
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
