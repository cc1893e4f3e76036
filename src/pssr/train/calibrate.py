"""Choose PSSR's inference-time removal ratio on its validation split.

The removal ratio (``PSSRConfig.ratio``, the share of pixels Pixel Surgery removes) is fixed while
training, but the scorer and the regenerator work for any ratio, and the ratio trades clean accuracy
(every removed pixel of a clean image is a pixel the regenerator has to guess) against the share of
the attack that is cut out. :func:`calibrate_ratio` measures that trade-off on the images PSSR
held out of its own training (the validation split of :func:`pssr.train.pssr_data.split_examples`, the
same seed and size) and picks a ratio by a rule fixed in advance, so the test split never takes
part in the choice:

* gray-box (the paper's protocol): Linf PGD on the bare classifier, made once, then purified with
  each candidate ratio;
* the chosen ratio has the highest gray-box accuracy among those whose clean accuracy is at most
  ``max_clean_drop`` below the bare classifier's on the same images (ties: the smaller clean drop,
  then the larger ratio); when no ratio meets the bound, the one with the highest clean accuracy,
  with ``constraint_met = False``.

What it does not measure: adaptive attacks (they see the whole defense and, on every model we
trained, get through at every ratio); run the harness (``pssr evaluate``) on the calibrated
checkpoint. The classifier's validation accuracy is measured on images it may have trained on
(PSSR's validation split comes out of the training split when the dataset has no validation split),
so the clean-drop bound is optimistic there; the test-split evaluation says what it is.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from pssr.defense.pssr import PSSR
from pssr.train.adversarial_cache import pgd
from pssr.train.pssr_data import accuracy, split_examples

log = logging.getLogger(__name__)


def graybox_examples(
    classifier: torch.nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    alpha: float | None = None,
    seed: int = 0,
    batch_size: int = 250,
) -> Tensor:
    """Linf PGD (random start, ``steps`` iterations of ``alpha``, default ``2.5 * eps / steps``) on the
    bare classifier, batch by batch with a generator seeded by ``seed`` and the batch index."""
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    dev = next(classifier.parameters()).device
    parts = []
    for b, i in enumerate(range(0, len(x), batch_size)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + b)
        parts.append(
            pgd(
                classifier,
                x[i : i + batch_size].to(dev),
                y[i : i + batch_size].to(dev),
                eps,
                alpha,
                steps,
                generator=g,
            ).cpu()
        )
    return torch.cat(parts) if parts else x.clone()


def _check_ratios(ratios: Sequence[float]) -> list[float]:
    if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence) or len(ratios) == 0:
        raise ValueError(f"ratios must be a non-empty sequence of numbers in [0, 1], got {ratios!r}")
    out = []
    for r in ratios:
        if (
            isinstance(r, bool)
            or not isinstance(r, (int, float))
            or not math.isfinite(r)
            or not 0.0 <= r <= 1.0
        ):
            raise ValueError(f"every ratio must be a number in [0, 1], got {r!r}")
        out.append(float(r))
    if len(set(out)) != len(out):
        raise ValueError(f"ratios has duplicates: {ratios!r}")
    return out


def _check_has_ratio(defense: PSSR) -> None:
    if not isinstance(defense, PSSR):
        raise TypeError(f"defense must be a pssr.PSSR, got {type(defense).__name__}")
    if not defense.config.use_surgery:
        raise ValueError(
            "this PSSR removes no pixels (use_surgery=False, regeneration only): there is no ratio to calibrate"
        )
    if defense.config.mask_mode != "topk":
        raise ValueError(
            f"a removal ratio needs mask_mode='topk'; this PSSR uses {defense.config.mask_mode!r}"
        )


def choose(
    rows: list[dict[str, Any]], clf_clean: float, max_clean_drop: float
) -> tuple[dict[str, Any], bool]:
    """The rule of the module docstring: (chosen row, whether it meets the clean-drop bound)."""
    ok = [r for r in rows if clf_clean - r["clean_acc"] <= max_clean_drop + 1e-12]
    if ok:
        return max(ok, key=lambda r: (r["graybox_acc"], r["clean_acc"], r["ratio"])), True
    return max(rows, key=lambda r: (r["clean_acc"], r["graybox_acc"], r["ratio"])), False


def calibrate_ratio(
    defense: PSSR,
    data: Any,
    ratios: Sequence[float],
    *,
    max_clean_drop: float = 0.03,
    eps: float | None = None,
    steps: int = 20,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Measure clean and gray-box accuracy of ``defense`` on its validation split for each ratio.

    ``data``: the dataset PSSR was trained on (``pssr.data.load(...)``), from which the validation
    split is rebuilt with the seed and ``val_size`` of ``defense.training_config`` (how it was
    trained). ``max_clean_drop``: a fraction (0.03 = 3 points). ``eps`` defaults to the dataset's
    budget (:func:`pssr.defaults.budget`; the training budget when the dataset is unknown). A choice
    that leaves the defense inert (nothing removed and nothing rewritten, or gray-box accuracy no
    better than the bare classifier's) is logged as a warning and marked ``"defends": false``.
    Returns a JSON-ready dict with one row per ratio, the classifier's accuracies and the ``chosen``
    ratio. Each ratio is measured on its own defense (:func:`with_ratio`); ``defense`` is not changed.
    """
    _check_has_ratio(defense)
    cfg, trained = defense.config, defense.training_config
    if trained is None:
        raise ValueError(
            "this PSSR records no training config (seed, val_size), so the images it held out of "
            "training are unknown; calibrate a checkpoint written by pssr train-pssr / train_pssr"
        )
    ratios = _check_ratios(ratios)
    if not (isinstance(max_clean_drop, (int, float)) and 0.0 <= max_clean_drop <= 1.0):
        raise ValueError(
            f"max_clean_drop must be a fraction in [0, 1] (0.03 = 3 points), got {max_clean_drop!r}"
        )
    if eps is None:  # the dataset's budget (the evaluation's), else the one PSSR trained at
        from pssr.defaults import dataset_name, resolve_eps

        name = dataset_name(data, getattr(data, "train", None), defense)
        eps = resolve_eps(None, name) if name else trained.eps
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    _, _, xv, yv = split_examples(data, trained)
    if len(xv) == 0:
        raise ValueError("the validation split is empty (pssr.val_size = 0?): nothing to calibrate on")
    clf = defense.classifier
    xa = graybox_examples(
        clf, xv, yv, float(eps), steps, seed=seed, batch_size=batch_size
    )  # pgd: eval, frozen
    with torch.no_grad():  # accuracy puts each model in eval mode and restores it
        clf_clean = accuracy(clf, xv, yv, batch_size)
        clf_adv = accuracy(clf, xa, yv, batch_size)
        rows = []
        for r in ratios:
            at_r = with_ratio(defense, r)
            row = {
                "ratio": r,
                "removed_pixels": round(r * defense.image_shape[1] * defense.image_shape[2]),
                "clean_acc": accuracy(at_r, xv, yv, batch_size),
                "graybox_acc": accuracy(at_r, xa, yv, batch_size),
            }
            rows.append(row)
            log.info(
                "ratio %.4g: clean %.4f, gray-box PGD-%d %.4f", r, row["clean_acc"], steps, row["graybox_acc"]
            )
    best, met = choose(rows, clf_clean, max_clean_drop)
    inert = best["ratio"] == 0 and cfg.use_surgery and cfg.restore_scope == "mask"
    if inert or best["graybox_acc"] <= clf_adv:
        log.warning(
            "calibration chose ratio %g: %s (gray-box accuracy %.3f, the bare classifier's %.3f); this "
            "defense does not defend: train it with restore_scope='full' or a fine-tuned classifier",
            best["ratio"],
            "nothing is removed and the regenerator writes nothing back" if inert else "no better than none",
            best["graybox_acc"],
            clf_adv,
        )
    return {
        "defends": not inert and best["graybox_acc"] > clf_adv,
        "split": "validation (held out of PSSR training)",
        "n": len(xv),
        "eps": float(eps),
        "steps": steps,
        "seed": seed,
        "trained_ratio": cfg.ratio,
        "max_clean_drop": max_clean_drop,
        "classifier_clean_acc": clf_clean,
        "classifier_graybox_acc": clf_adv,
        "rows": rows,
        "chosen": best["ratio"],
        "constraint_met": met,
        "rule": "highest gray-box accuracy among ratios with clean drop <= max_clean_drop "
        "(ties: smaller drop, then larger ratio); else the highest clean accuracy",
    }


def with_ratio(defense: PSSR, ratio: float) -> PSSR:
    """A new defense removing ``ratio`` of the pixels, around ``defense``'s trained modules (shared);
    ``defense`` itself is not changed (:meth:`pssr.PSSR.with_config`)."""
    _check_has_ratio(defense)
    (r,) = _check_ratios([ratio])
    return defense.with_config(ratio=r)
