"""Errors that speak (issue 21 item 8): each bad input a new user tried is a one-line message naming the
problem and the fix, exit status 2 from the CLI, and nothing written; purify reads and checks all its
inputs before writing, warns on colour conversion and refuses images it cannot read by name."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pssr.cli import main
from pssr.defense import PSSR, PSSRConfig
from pssr.defense.files import ColorConversionWarning, ImageFileError, read_image
from pssr.models import create_model

SPEC = {"name": "tiny-cnn", "kwargs": {"num_classes": 10, "in_channels": 1}}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    clf = create_model(SPEC["name"], **SPEC["kwargs"]).eval()
    d = PSSR(
        clf, PSSRConfig(gen_width=8, scorer_width=8, ratio=0.25), image_shape=(1, 8, 8), classifier_spec=SPEC
    )
    return d.save(tmp_path_factory.mktemp("ck") / "pssr.pt")


def _png(path: Path, shape: tuple[int, ...] = (8, 8), mode: str = "L", seed: int = 0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(path)
    return path


def _purify(ckpt: Path, *args: str) -> int:
    return main(["purify", "--checkpoint", str(ckpt), *args])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("pssr purify: error: ") or err.startswith("pssr report: error: "), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------ pssr purify: bad inputs
def test_non_image_file_is_refused_by_name(ckpt, tmp_path, capsys) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert _purify(ckpt, str(bad), "--out", str(tmp_path / "o")) == 2
    err = _one_line_error(capsys)
    assert "notes.png is not an image file" in err and "UnidentifiedImageError" not in err
    assert not (tmp_path / "o").exists()


def test_truncated_image_is_refused_by_name(ckpt, tmp_path, capsys) -> None:
    good = _png(tmp_path / "full.png")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert _purify(ckpt, str(cut), "--out", str(tmp_path / "o")) == 2
    assert "cut.png is truncated or corrupt" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_folder_given_as_an_image(ckpt, tmp_path, capsys) -> None:
    (tmp_path / "imgs").mkdir()
    assert _purify(ckpt, str(tmp_path / "imgs"), "--out", str(tmp_path / "o")) == 2
    err = _one_line_error(capsys)
    assert "imgs is a folder, not an image" in err and "*.png" in err and "IsADirectoryError" not in err


def test_missing_image_file(ckpt, tmp_path, capsys) -> None:
    assert _purify(ckpt, str(tmp_path / "nowhere.png"), "--out", str(tmp_path / "o")) == 2
    assert "nowhere.png: no such image file" in _one_line_error(capsys)


def test_out_naming_an_existing_file(ckpt, tmp_path, capsys) -> None:
    img = _png(tmp_path / "a.png")
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    assert _purify(ckpt, str(img), "--out", str(taken)) == 2
    err = _one_line_error(capsys)
    assert "is a file, not a folder" in err and "FileExistsError" not in err
    assert taken.read_text() == "keep me"


def test_output_that_would_overwrite_an_input(ckpt, tmp_path, capsys) -> None:
    img = _png(tmp_path / "a.png")
    before = img.read_bytes()
    assert _purify(ckpt, str(img), "--out", str(tmp_path)) == 2
    assert "would overwrite an input" in _one_line_error(capsys)
    assert img.read_bytes() == before


def test_two_inputs_writing_the_same_output(ckpt, tmp_path, capsys) -> None:
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    a, b = _png(tmp_path / "x" / "a.png"), _png(tmp_path / "y" / "a.png", seed=1)
    assert _purify(ckpt, str(a), str(b), "--out", str(tmp_path / "o")) == 2
    assert "would both write" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_all_inputs_checked_before_anything_is_written(ckpt, tmp_path, capsys) -> None:
    good = _png(tmp_path / "good.png")
    big = _png(tmp_path / "big.png", shape=(9, 8))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG but not really")
    out = tmp_path / "o"
    assert _purify(ckpt, str(good), str(big), str(junk), "--out", str(out)) == 2
    err = _one_line_error(capsys)
    # every bad file named in one line, the good one not written
    assert (
        "2 problem(s) with the 3 input(s), nothing written" in err and "big.png" in err and "junk.png" in err
    )
    assert not out.exists()


def test_empty_list_of_images_in_the_library(ckpt, tmp_path) -> None:
    from pssr.defense.files import purify_files

    with pytest.raises(ImageFileError, match="no images given"):
        purify_files(ckpt, [], tmp_path / "o")


def test_empty_batch_to_purify_is_an_empty_batch(ckpt) -> None:
    d = PSSR.load(ckpt)
    x = torch.empty(0, 1, 8, 8)
    assert d.purify(x).shape == (0, 1, 8, 8) and d.mask(x).shape == (0, 1, 8, 8)
    assert d(x).shape == (0, 10)
    for mode in ("identity", "mask-constant"):
        assert d.bpda(mode)(x).shape == (0, 10)


# ------------------------------------------------------------------ colour conversion
def test_rgb_image_to_a_gray_defense_warns_naming_file_and_conversion(tmp_path) -> None:
    rgb = _png(tmp_path / "colour.png", shape=(8, 8, 3), mode="RGB")
    with pytest.warns(
        ColorConversionWarning, match=r"colour\.png: RGB image converted to L.*colours converted to gray"
    ):
        x = read_image(rgb, (1, 8, 8))
    ref = np.asarray(Image.open(rgb).convert("L"), dtype=np.float32) / 255
    assert torch.equal(x[0, 0], torch.from_numpy(ref))


def test_rgba_image_warns_about_the_alpha_channel(ckpt, tmp_path, capsys) -> None:
    rgba = _png(tmp_path / "see-through.png", shape=(8, 8, 4), mode="RGBA")
    assert _purify(ckpt, str(rgba), "--out", str(tmp_path / "o")) == 0
    err = capsys.readouterr().err
    assert "pssr purify: warning: " in err and "see-through.png: RGBA image converted to L" in err
    assert "alpha channel dropped" in err and "Traceback" not in err


def test_gray_stored_as_rgb_converts_silently(tmp_path) -> None:
    g = np.random.default_rng(0).integers(0, 256, size=(8, 8), dtype=np.uint8)
    Image.fromarray(np.stack([g, g, g], -1), mode="RGB").save(tmp_path / "g.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is lost: no warning
        x = read_image(tmp_path / "g.png", (1, 8, 8))
    assert torch.equal(x[0, 0], torch.from_numpy(g).float() / 255)


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path) -> None:
    arr = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    x = read_image(tmp_path / "deep.png", (1, 8, 8))
    assert torch.allclose(x[0, 0], torch.from_numpy(arr.astype(np.float32) / 65535), atol=1e-6)


# ------------------------------------------------------------------ checkpoints
def test_foreign_pickle_says_it_is_not_a_pssr_checkpoint(tmp_path, capsys) -> None:
    torch.save({"model": _Foreign()}, tmp_path / "theirs.pt")
    img = _png(tmp_path / "a.png")
    assert (
        main(["purify", "--checkpoint", str(tmp_path / "theirs.pt"), str(img), "--out", str(tmp_path / "o")])
        == 2
    )
    err = _one_line_error(capsys)
    assert "not a pssr checkpoint" in err and "never unpickles code" in err and "untrusted source" in err
    assert "weights_only" not in err and "_Foreign" in err


def test_image_given_as_checkpoint(tmp_path, capsys) -> None:
    img = _png(tmp_path / "a.png")
    assert main(["purify", "--checkpoint", str(img), str(img), "--out", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys)
    assert "a.png is not a pssr checkpoint" in err and "weights_only" not in err


def test_truncated_checkpoint(ckpt, tmp_path, capsys) -> None:
    cut = tmp_path / "cut.pt"
    cut.write_bytes(ckpt.read_bytes()[:1000])
    assert _purify(cut, str(_png(tmp_path / "a.png")), "--out", str(tmp_path / "o")) == 2
    assert "cut.pt is truncated or corrupt" in _one_line_error(capsys)


def test_folder_given_as_checkpoint(ckpt, capsys, tmp_path) -> None:
    assert _purify(ckpt.parent, str(_png(tmp_path / "a.png")), "--out", str(tmp_path / "o")) == 2
    err = _one_line_error(capsys)
    assert "is a folder, not a checkpoint file" in err and "pssr.pt" in err


class _Foreign:
    pass


# ------------------------------------------------------------------ pssr report
def _evaluation(out: Path) -> dict:
    import pssr
    from pssr.testing import digits_mlp

    model, data = digits_mlp()
    rep = pssr.evaluate(
        {"none": model}, data.test, attacks="fgsm", eps=0.1, n=16, progress=False, checks=False
    )
    rep.save(out)
    return json.loads((out / "report.json").read_text())


def test_report_of_a_preset_folder_rerenders_each_norm(tmp_path, capsys) -> None:
    top = tmp_path / "report"  # what `pssr demo` prints: a preset report with a folder per norm
    linf = _evaluation(top / "linf")
    combined = {"preset": "digits", "quick": True, "command": "pssr demo", "dataset": "digits", "eval_n": 16}
    combined.update({"training": {}, "evaluations": {"linf": linf}})
    (top / "report.json").write_text(json.dumps(combined))
    (top / "linf" / "report.md").unlink()
    assert main(["report", str(top)]) == 0
    assert "not a pssr evaluation report" not in capsys.readouterr().err
    assert (top / "linf" / "report.md").is_file()
    assert "preset `digits`" in (top / "report.md").read_text()
    assert json.loads((top / "report.json").read_text())["evaluations"]["linf"]["models"] == linf["models"]


def test_report_of_an_unrelated_folder(tmp_path, capsys) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"hello": 1}))
    assert main(["report", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert "not a pssr evaluation report" in err and "pssr evaluate" in err


# ------------------------------------------------------------------ the CLI's handling of file errors
def test_os_errors_print_as_one_line() -> None:
    from pssr.cli import _message

    assert _message(FileExistsError(17, "File exists", "/x/y")) == "File exists: /x/y"
    assert _message(ValueError("two\n  lines")) == "two lines"


def test_rerender_of_a_preset_folder_names_pssr_report(tmp_path) -> None:
    """evaluation.rerender draws one evaluation; a preset's combined report gets a one-line error naming
    the command that redraws it, not a schema complaint or a KeyError."""
    from pssr.evaluation.report import rerender

    (tmp_path / "report.json").write_text(json.dumps({"preset": "digits", "evaluations": {"linf": {}}}))
    with pytest.raises(ValueError, match=r"report of preset 'digits'.*pssr report") as e:
        rerender(tmp_path)
    assert "\n" not in str(e.value)
