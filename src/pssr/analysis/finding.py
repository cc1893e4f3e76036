"""PSSR's key finding, measured: does putting back a few *salient* pixels break an adversarial example?

PSSR (Fu, Zhou, Ma, Zhang, "Invariance-powered Trustworthy Defense via Remove Then Restore", arXiv
2402.00304) rests on one observation: in an adversarial example a few salient pixels dominate the
attack, and the trivial rest can be left in place. :func:`run_finding` measures it for a classifier:

1. draw ``n`` test images at random (seeded) from the whole split (slow attacks, AutoAttack, run on
   the first ``n_slow`` of the same draw, a seeded subset of the same images);
2. attack the classifier with the project's attacks at the dataset's budgets (the ``paper`` set of
   :mod:`pssr.attacks.sets`);
3. for each ranking of :mod:`pssr.analysis.pixels` (salient, salient-grad, trivial, random) and each
   Pixel Surgery scorer (ranking by its score of ``x_adv``), put back the clean value of the first
   fraction ``k`` of the pixels, for ``k`` on a grid from 0 to 1, and record whether the classifier is
   still fooled. The success rate at ``k`` is the share of the clean-correct images still fooled;
   ``k_half`` is where it first falls to half of its value at ``k = 0``;
4. for each scorer, its agreement with the oracle salient set at the removal ratio
   (:func:`pssr.analysis.pixels.scorer_agreement`), on the images the attack fooled.

Threat model: the examples are made on the undefended classifier (white-box on it), as in PSSR's
gray-box protocol; the restoration is an *oracle* (it knows the clean image), so the curves bound
what any remove-then-restore defense could gain from a perfect restoration of the chosen pixels.

Outputs (``out``): ``records.jsonl.gz`` (one record per image and attack) first, then
``report.json``; ``report.md`` and ``curves.png`` are rendered from the JSON
(:mod:`pssr.analysis.render`). Adversarial examples are cached in ``cache_dir`` (keyed by the attack,
the images, the seed and the classifier's weights) so that a rerun only redoes what changed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import math
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pssr.analysis.pixels import (
    RANKINGS,
    delta_magnitude,
    fooled_curve,
    halving_k,
    restore_order,
    scorer_agreement,
)
from pssr.attacks import margin_loss
from pssr.attacks.base import NORMS
from pssr.attacks.sets import attack_set
from pssr.attacks.spec import AttackSpec
from pssr.data import Split
from pssr.defaults import budget
from pssr.utils import (
    atomic_write_bytes,
    atomic_write_json,
    eval_mode,
    load_checkpoint,
    model_device,
    run_metadata,
    save_checkpoint,
)

log = logging.getLogger(__name__)

FORMAT = "pssr.finding"
FORMAT_VERSION = 1
# Dense at small k, where the paper's "a few pixels" claim lives.
DEFAULT_GRID = (
    0.0,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
)
DEFAULT_ATTACKS = ("pgd", "cw-linf", "autoattack", "ddn-l2")
DEFAULT_RANKINGS = ("salient", "salient-grad", "trivial", "random")
SLOW_ATTACKS = frozenset({"autoattack"})  # run on the first n_slow images of the draw
AGREEMENT_METRICS = (
    "precision",
    "recall",
    "tie_precision",
    "chance_tie_precision",
    "mass_recall",
    "spearman",
)


@dataclasses.dataclass(frozen=True)
class FindingConfig:
    """What :func:`run_finding` measures. Saved in the report."""

    dataset: str  # name in pssr.data (selects the attack budgets)
    n: int = 500  # test images, a seeded random draw from the whole test split
    n_slow: int = 100  # images for SLOW_ATTACKS (the first n_slow of the same draw)
    attacks: tuple[str, ...] = DEFAULT_ATTACKS  # labels of the "paper" attack set
    rankings: tuple[str, ...] = DEFAULT_RANKINGS  # names in pssr.analysis.pixels.RANKINGS
    grid: tuple[float, ...] = DEFAULT_GRID  # fractions k of the H*W pixels put back, increasing, in [0, 1]
    ratio: float = 0.1  # scorers' removal ratio for the agreement metrics
    seed: int = 0  # image draw, attack seeds, random rankings and tie-breaks
    batch_size: int = 256

    def __post_init__(self) -> None:
        specs = {s.label for s in attack_set("paper", self.dataset)}  # also validates the dataset
        bad = [a for a in self.attacks if a not in specs]
        if not self.attacks or bad:
            raise ValueError(
                f"FindingConfig.attacks: unknown {bad or 'none given'}; choose from {sorted(specs)}"
            )
        bad = [r for r in self.rankings if r not in RANKINGS]
        if not self.rankings or bad:
            raise ValueError(
                f"FindingConfig.rankings: unknown {bad or 'none given'}; choose from {RANKINGS.list()}"
            )
        g = list(self.grid)
        if len(g) < 2 or any(not (0.0 <= k <= 1.0) for k in g) or g != sorted(set(g)) or g[0] != 0.0:
            raise ValueError(
                f"FindingConfig.grid={self.grid!r}: need strictly increasing fractions in [0, 1] starting at 0"
            )
        for name in ("n", "n_slow", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"FindingConfig.{name}={getattr(self, name)!r}: need an int >= 1")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"FindingConfig.seed={self.seed!r}: need an int >= 0")
        if not (isinstance(self.ratio, (int, float)) and 0.0 < self.ratio < 1.0):
            raise ValueError(f"FindingConfig.ratio={self.ratio!r}: need a fraction in (0, 1)")


def sample_indices(n_total: int, n: int, seed: int) -> Tensor:
    """The first ``n`` of a seeded permutation of ``range(n_total)`` (a prefix is a smaller draw)."""
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[: min(n, n_total)]


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 (16 hex digits) of a module's state dict: names, shapes and values."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _generator(seed: int, *names: str) -> torch.Generator:
    """A generator seeded from ``seed`` and names, stable across processes (crc32, not hash())."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32("/".join(names).encode()))


def _spec_record(spec: AttackSpec, eps: float, norm: str) -> dict[str, Any]:
    """The attack as the report (and the cache's key) records it: its budget among the kwargs."""
    return {
        "label": spec.label,
        "attack": spec.name,
        "kwargs": {"eps": eps, "norm": norm, **spec.kwargs},
        "for_randomized": spec.for_randomized,
        "needs_surrogate": spec.needs_surrogate,
    }


def make_adversarial(
    spec: AttackSpec,
    classifier: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str,
    seed: int,
    batch_size: int,
    cache: Path | None = None,
    key: Mapping[str, Any] | None = None,
) -> tuple[Tensor, float]:
    """``(x_adv, seconds)``; read from ``cache`` when its stored ``key`` matches, else made and saved."""
    if cache is not None and cache.is_file():
        ck = load_checkpoint(cache)
        if ck.get("key") == dict(key or {}):
            log.info("%s: adversarial examples from %s", spec.label, cache)
            return ck["x_adv"].to(x.device), float(ck["seconds"])
    atk = spec.build(classifier, eps=eps, norm=norm, seed=seed)
    t0 = time.perf_counter()
    x_adv = torch.cat(
        [atk(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )
    seconds = time.perf_counter() - t0
    if cache is not None:
        save_checkpoint(cache, {"key": dict(key or {}), "x_adv": x_adv.detach().cpu(), "seconds": seconds})
    return x_adv, seconds


def _stats(v: Tensor) -> dict[str, Any]:
    v = v[~torch.isnan(v)].double()
    if v.numel() == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 0.0, "n": int(v.numel())}


@torch.no_grad()
def _predict(classifier: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([classifier(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).float()


def _orders(
    cfg: FindingConfig,
    label: str,
    classifier: nn.Module,
    scorers: Mapping[str, nn.Module],
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Restoration orders per ranking ("scorer:NAME" for scorers) and each scorer's raw scores of x_adv."""
    orders, scores = {}, {}
    for r in cfg.rankings:
        gen = _generator(cfg.seed, label, r)
        orders[r] = restore_order(RANKINGS.get(r)(x, x_adv, y, classifier, gen), gen)
    for name, scorer in scorers.items():
        with eval_mode(scorer), torch.no_grad():
            s = torch.cat(
                [scorer(x_adv[i : i + cfg.batch_size], classifier) for i in range(0, len(x), cfg.batch_size)]
            ).float()
        scores[name] = s
        orders[f"scorer:{name}"] = restore_order(s, _generator(cfg.seed, label, "scorer", name))
    return orders, scores


def measure_attack(
    cfg: FindingConfig,
    label: str,
    classifier: nn.Module,
    x: Tensor,
    x_adv: Tensor,
    y: Tensor,
    indices: Tensor,
    scorers: Mapping[str, nn.Module] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Curves, halving points and scorer agreement for one attack's examples: ``(summary, records)``."""
    scorers = dict(scorers or {})
    clean_logits, adv_logits = (
        _predict(classifier, x, cfg.batch_size),
        _predict(classifier, x_adv, cfg.batch_size),
    )
    correct = clean_logits.argmax(1) == y  # (N,)
    fooled = (adv_logits.argmax(1) != y) & correct
    margin = margin_loss(adv_logits, y)  # max other logit - true logit > 0: fooled; how far past the boundary
    orders, scores = _orders(cfg, label, classifier, scorers, x, x_adv, y)
    curves = {
        r: fooled_curve(classifier, x, x_adv, y, o, cfg.grid, cfg.batch_size) & correct[:, None]
        for r, o in orders.items()
    }
    n_ok = int(correct.sum())
    rates = {
        r: [float(c[correct, j].float().mean()) if n_ok else math.nan for j in range(len(cfg.grid))]
        for r, c in curves.items()
    }
    d = delta_magnitude(x, x_adv).flatten(1)  # (N, H*W)
    n_top = max(1, round(0.1 * d.shape[1]))
    top10 = d.sort(1, descending=True).values[:, :n_top].sum(1) / d.sum(1).clamp_min(1e-30)
    agree: dict[str, dict[str, Tensor]] = {}
    for name, s in scores.items():
        agree[name] = scorer_agreement(s, x, x_adv, cfg.ratio, _generator(cfg.seed, label, "agree", name))
    f = fooled.cpu()
    summary = {
        "n": len(x),
        "n_clean_correct": n_ok,
        "n_fooled": int(f.sum()),
        "success_rate": float(f.sum()) / n_ok if n_ok else None,
        "median_margin_fooled": float(margin[fooled].median()) if bool(fooled.any()) else None,
        "delta": {
            "linf_mean": _stats((x_adv - x).flatten(1).abs().amax(1)[fooled].cpu())["mean"],
            "l2_mean": _stats((x_adv - x).flatten(1).norm(dim=1)[fooled].cpu())["mean"],
            "share_pixels_changed": _stats((d > 1e-6).float().mean(1)[fooled].cpu())["mean"],
            "top10pct_mass": _stats(top10[fooled].cpu())["mean"],
        },
        "curves": rates,
        "k_half": {r: (halving_k(cfg.grid, v) if n_ok else None) for r, v in rates.items()},
        "agreement": {name: {m: _stats(a[m][f]) for m in AGREEMENT_METRICS} for name, a in agree.items()},
    }
    records = []
    for i in range(len(x)):
        rec: dict[str, Any] = {
            "attack": label,
            "index": int(indices[i]),
            "label": int(y[i]),
            "clean_pred": int(clean_logits[i].argmax()),
            "adv_pred": int(adv_logits[i].argmax()),
            "clean_correct": bool(correct[i]),
            "fooled": bool(fooled[i]),
            "margin": round(float(margin[i]), 5),
            "linf": round(float((x_adv[i] - x[i]).abs().max()), 6),
            "l2": round(float((x_adv[i] - x[i]).norm()), 6),
            # one character per grid point: 1 = still fooled after restoring that fraction
            "fooled_at_k": {r: "".join("1" if b else "0" for b in c[i].tolist()) for r, c in curves.items()},
        }
        if bool(fooled[i]) and agree:
            rec["agreement"] = {
                name: {
                    m: (None if math.isnan(float(a[m][i])) else round(float(a[m][i]), 5))
                    for m in AGREEMENT_METRICS
                }
                for name, a in agree.items()
            }
        records.append(rec)
    return summary, records


def run_finding(
    classifier: nn.Module,
    split: Split,
    cfg: FindingConfig,
    out: str | Path,
    *,
    scorers: Mapping[str, nn.Module] | None = None,
    scorer_info: Mapping[str, Any] | None = None,
    classifier_info: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Measure the finding (see the module docstring); write ``out`` and return the report dict."""
    from pssr.analysis.render import render

    if not isinstance(cfg, FindingConfig):
        raise ValueError(f"cfg must be a FindingConfig, got {type(cfg).__name__}")
    out = Path(out)
    dev = model_device(classifier)
    classifier.eval()
    specs = {s.label: (s, norm) for norm in NORMS for s in attack_set("paper", cfg.dataset, norm)}
    draw = sample_indices(len(split), cfg.n, cfg.seed)
    fp = weights_fingerprint(classifier)
    report: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "classifier": {**dict(classifier_info or {}), "fingerprint": fp},
        "scorers": dict(scorer_info or {}),
        "test_split_size": len(split),
        "attacks": {},
    }
    all_records: list[dict[str, Any]] = []
    for label in cfg.attacks:
        idx = draw[: cfg.n_slow] if label in SLOW_ATTACKS else draw
        x, y = split.x[idx].to(dev), split.y[idx].to(dev)
        spec, norm = specs[label]
        eps = budget(cfg.dataset, norm)
        record = _spec_record(spec, eps, norm)
        key = {
            "spec": json.dumps(record, sort_keys=True),
            "indices": idx.tolist(),
            "seed": cfg.seed,
            "classifier": fp,
        }
        cache = Path(cache_dir) / f"{label}.pt" if cache_dir is not None else None
        x_adv, secs = make_adversarial(
            spec,
            classifier,
            x,
            y,
            eps=eps,
            norm=norm,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            cache=cache,
            key=key,
        )
        t0 = time.perf_counter()
        summary, records = measure_attack(cfg, label, classifier, x, x_adv, y, idx, scorers)
        summary.update(spec=record, slow_subset=label in SLOW_ATTACKS, attack_seconds=round(secs, 2))
        summary["measure_seconds"] = round(time.perf_counter() - t0, 2)
        report["attacks"][label] = summary
        all_records.extend(records)
        log.info(
            "%s: success %.3f on %d clean-correct images; k_half %s",
            label,
            summary["success_rate"] or 0.0,
            summary["n_clean_correct"],
            summary["k_half"],
        )
    body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in all_records).encode()
    atomic_write_bytes(out / "records.jsonl.gz", gzip.compress(body, mtime=0))
    report["records"] = "records.jsonl.gz"
    report["metadata"] = run_metadata()
    atomic_write_json(out / "report.json", report)
    render(report, out)
    return report


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The per-example records of a finding folder (``records.jsonl.gz``)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def rates_from_records(records: Sequence[Mapping[str, Any]], attack: str, ranking: str) -> list[float]:
    """Success rate per grid point recomputed from the records (equals the report's curve)."""
    rows = [r["fooled_at_k"][ranking] for r in records if r["attack"] == attack and r["clean_correct"]]
    if not rows:
        raise ValueError(f"no clean-correct records for attack {attack!r}")
    return [sum(row[j] == "1" for row in rows) / len(rows) for j in range(len(rows[0]))]
