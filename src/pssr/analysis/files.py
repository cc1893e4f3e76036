"""The finding from checkpoint files: what ``pssr finding`` calls (data, classifier and scorers loaded here).

The scorers measured are every registered Pixel Surgery scorer of :mod:`pssr.defense.scoring` that
can be built: ``gradient`` and ``random`` always, ``learned`` (and any other trained scorer) from a
PSSR checkpoint, whose removal ratio then becomes the agreement ratio unless one is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pssr.analysis.finding import DEFAULT_ATTACKS, DEFAULT_GRID, DEFAULT_RANKINGS, FindingConfig, run_finding
from pssr.analysis.finding import weights_fingerprint as _fingerprint
from pssr.defense.scoring import SCORERS, create_scorer

log = logging.getLogger(__name__)
DEFAULT_RATIO = 0.1  # without a PSSR checkpoint: the mnist-10k / fashion-mnist configs' removal ratio


def _load_classifier(path: str) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """(classifier, checkpoint dict, info); a PSSR checkpoint gives its classifier."""
    from pssr.experiments.loading import load_model_spec

    _, model, info = load_model_spec(path)
    if info["kind"] == "pssr":
        model = model.classifier
    elif info["kind"] != "classifier":
        raise ValueError(
            f"--checkpoint {path}: need a classifier or PSSR checkpoint, got a {info['kind']} spec"
        )
    return model.eval(), info["checkpoint"], {"path": str(path), "kind": info["kind"]}


def _stored_data(ck: dict[str, Any]) -> dict[str, Any]:
    metrics = ck.get("metrics")
    for d in (ck.get("data"), metrics.get("data") if isinstance(metrics, dict) else None):
        if isinstance(d, dict) and d.get("name"):
            return d
    return {}


def _named(spec: str) -> tuple[str | None, str]:
    """``"NAME=PATH"`` -> (NAME, PATH); a plain path (or one that exists as written) has no name."""
    name, eq, path = spec.partition("=")
    if eq and name and not Path(spec).exists() and all(ch.isalnum() or ch in "-_.()" for ch in name):
        return name.strip().lower(), path
    return None, spec


def _trained_scorer(
    spec: str, classifier: nn.Module
) -> tuple[str, nn.Module, dict[str, Any], float | None] | None:
    """(name, scorer, info, ratio) of a PSSR checkpoint's trained scorer; None if it has none."""
    from pssr.defense.pssr import PSSR

    name, path = _named(spec)
    model = PSSR.load(path)
    cfg = model.config
    ratio = cfg.ratio if cfg.mask_mode == "topk" else None
    if not getattr(model.scorer, "needs_training", False):
        log.warning("%s: its scorer %r is not a trained one; nothing to add", path, cfg.scorer)
        return None
    same = _fingerprint(model.classifier) == _fingerprint(classifier)
    if not same:
        log.warning("the PSSR checkpoint %s protects another classifier than --checkpoint", path)
    tr = model.training_config  # how the scorer was trained (None: not recorded)
    info = {
        "source": f"{path} (training not recorded)"
        if tr is None
        else f"{path} (target {tr.scorer_target}, trained at eps {tr.eps:g}, "
        f"{tr.epochs} epochs, train_subset {tr.train_subset or 'all'})",
        "checkpoint": str(path),
        "scorer_target": None if tr is None else tr.scorer_target,
        "train_eps": None if tr is None else tr.eps,
        "same_classifier": same,
    }
    return name or cfg.scorer, model.scorer, info, ratio


def build_scorers(
    channels: int, classifier: nn.Module, pssr: str | Sequence[str] | None
) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]], float | None]:
    """``(scorers, info, ratio)``: every scorer we can build, trained ones from PSSR checkpoints
    (``[NAME=]PATH``; default name: the config's scorer); ``ratio``: the first checkpoint's."""
    scorers: dict[str, nn.Module] = {}
    info: dict[str, dict[str, Any]] = {}
    ratio = None
    specs = [pssr] if isinstance(pssr, str) else list(pssr or [])
    for spec in specs:
        got = _trained_scorer(spec, classifier)
        if got is None:
            continue
        name, scorer, inf, r = got
        if name in scorers:
            raise ValueError(f"two --pssr scorers are named {name!r}; name them with NAME=PATH")
        scorers[name], info[name] = scorer, inf
        ratio = r if ratio is None else ratio
    for name in SCORERS.list():
        if name in scorers:
            continue
        if getattr(SCORERS.get(name), "needs_training", False):
            log.warning("scorer %r needs a trained PSSR checkpoint (--pssr); not measured", name)
            continue
        scorers[name] = create_scorer(name, channels=channels)
        info[name] = {"source": f"create_scorer({name!r}) with its defaults (untrained)"}
    return scorers, info, ratio


def finding_from_files(
    data: str,
    checkpoint: str,
    out: str | Path,
    *,
    pssr: str | Sequence[str] | None = None,
    n: int = 500,
    n_slow: int = 100,
    attacks: Sequence[str] = DEFAULT_ATTACKS,
    rankings: Sequence[str] = DEFAULT_RANKINGS,
    grid: Sequence[float] = DEFAULT_GRID,
    ratio: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    cache_dir: str | Path | None = None,
    data_dir: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Load the dataset's test split, the classifier and the scorers, and run :func:`run_finding`."""
    from pssr.data import load as load_data
    from pssr.utils import default_device

    classifier, ck, clf_info = _load_classifier(checkpoint)
    stored = _stored_data(ck)
    kw: dict[str, Any] = {}
    if stored.get("name") == data:  # the classifier's own split settings (seed, validation share)
        kw.update({k: stored[k] for k in ("seed", "val_fraction", "data_dir") if stored.get(k) is not None})
    elif stored.get("name"):
        log.warning("--checkpoint was trained on %r, measuring on %r", stored["name"], data)
    if data_dir is not None:
        kw["data_dir"] = data_dir
    ds = load_data(data, **kw)
    dev = torch.device("cpu") if device is None else default_device(device)
    classifier.to(dev)
    scorers, scorer_info, pssr_ratio = build_scorers(ds.image_shape[0], classifier, pssr)
    for s in scorers.values():
        s.to(dev)
    r = ratio if ratio is not None else pssr_ratio if pssr_ratio is not None else DEFAULT_RATIO
    cfg = FindingConfig(
        dataset=data,
        n=n,
        n_slow=n_slow,
        attacks=tuple(attacks),
        rankings=tuple(rankings),
        grid=tuple(float(k) for k in grid),
        ratio=float(r),
        seed=seed,
        batch_size=batch_size,
    )
    return run_finding(
        classifier,
        ds.test,
        cfg,
        out,
        scorers=scorers,
        scorer_info=scorer_info,
        classifier_info={**clf_info, "trained_on": stored.get("name")},
        cache_dir=cache_dir,
    )
