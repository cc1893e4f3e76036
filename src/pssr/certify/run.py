"""Certify a dataset: several base models and noise levels, per-example records, resume, torchrun shards.

    report = certify_models({"bare": clf, "pssr-denoised": DenoisedClassifier(defense)}, data.test,
                            sigmas=0.5, n0=100, n=10_000, alpha=0.001, num_examples=500, out="runs/cert")

A *unit* is one (model, sigma) pair, keyed ``NAME@sigma=S``. The examples are ``num_examples`` test
images drawn at random with ``subset_seed`` from the whole split (sorted by index). Every example's
noise comes from its own generator seeded from ``(seed, index)``: the same draws for every model and
on any number of ranks (common random numbers make the models' rows a paired comparison), so a
record does not depend on how the work was split or resumed.

State (``out/state``): ``settings.json`` (what every unit shares: data, examples, n0, n, alpha,
seed), ``units.json`` (each unit's model fingerprint and description) and one ``<unit>.jsonl`` of
records per unit, appended as examples finish (one ``write`` of whole lines; a torn last line from
a killed process is dropped on reading). Rerunning resumes; a unit whose model changed is computed
again. ``from_report`` starts from a saved report folder (``report.json`` + ``records.jsonl.gz``, e.g.
one committed under ``results/``): its units with the same settings are copied into the state, so a
new model joins that paired comparison and an unfinished report is continued on another machine.
Several calls with different models or sigmas on the same ``out`` fill one report, and a larger
``num_examples`` (same ``subset_seed``) keeps the examples already done: the first ``k`` of the
seeded permutation are the subset of size ``k``.

Under ``torchrun`` the examples still to do are dealt out in rounds, one per rank, like the chunks
of ``pssr evaluate`` (:mod:`pssr.evaluation.harness`); the records are gathered in order and rank 0
alone writes. Record keys: index, label, prediction, guess, radius, p_lower, count, correct,
abstained, seconds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pssr import distributed as D
from pssr.certify.core import SmoothedClassifier, check_alpha, check_sigma
from pssr.data.base import Split
from pssr.evaluation.common import data_fingerprint, derived_seed, model_fingerprint
from pssr.utils import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["certify_models", "read_records", "select_examples", "unit_key"]

SigmaSpec = float | Sequence[float] | Mapping[str, float | Sequence[float]]


def unit_key(name: str, sigma: float) -> str:
    return f"{name}@sigma={sigma:g}"


def _file_of(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=@()\-]", "_", key) + ".jsonl"


def select_examples(n_total: int, num: int | None, subset_seed: int) -> list[int]:
    """``num`` indices of ``range(n_total)`` drawn with ``subset_seed`` (all of them for None), sorted."""
    if num is None or num >= n_total:
        return list(range(n_total))
    g = torch.Generator().manual_seed(int(subset_seed))
    return sorted(torch.randperm(n_total, generator=g)[:num].tolist())


def _units(models: Mapping[str, nn.Module], sigmas: SigmaSpec) -> list[tuple[str, float]]:
    if isinstance(sigmas, Mapping):
        unknown = sorted(set(sigmas) - set(models))
        if unknown:
            raise ValueError(f"sigmas names models that are not given: {unknown}")
        missing = sorted(set(models) - set(sigmas))
        if missing:
            raise ValueError(f"no sigma for model(s) {missing}; give one for every model")
        per = {k: v for k, v in sigmas.items()}
    else:
        per = {k: sigmas for k in models}
    out = []
    for name in models:
        v = per[name]
        for s in [v] if isinstance(v, (int, float)) else list(v):
            out.append((name, check_sigma(s)))
    if not out:
        raise ValueError("no (model, sigma) pair to certify")
    return out


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of one unit file; a torn (unparseable) last line is dropped."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError as e:
            if i == len(lines) - 1:
                log.warning("%s: dropping a torn last line (an interrupted write)", path)
                continue
            raise ValueError(
                f"{path}: line {i + 1} is not JSON; delete the file to compute the unit again"
            ) from e
    return out


def _append(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append whole lines with one ``write`` (O_APPEND), then fsync; a torn line is dropped on reading."""
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        # a torn previous line would swallow this one: start on a fresh line if needed
        if os.fstat(fd).st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _report_units(src: Path, settings: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[dict]]]:
    """``{unit key: (unit info, records)}`` of the saved report folder ``src``, whose settings must be
    ``settings``."""
    import gzip

    report, records = src / "report.json", src / "records.jsonl.gz"
    if not report.is_file() or not records.is_file():
        raise ValueError(
            f"{src} has no report.json and records.jsonl.gz; give the folder of a pssr certify report"
        )
    try:
        rep = json.loads(report.read_text())
        lines = gzip.decompress(records.read_bytes()).decode().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError) as e:
        raise ValueError(f"{src}: unreadable report ({e}); give the folder of a pssr certify report") from e
    if not isinstance(rep, dict) or rep.get("kind") != "pssr.certify":
        raise ValueError(f"{report} is not a pssr certify report")
    saved = rep.get("settings", {})
    diff = [k for k in settings if saved.get(k) != settings[k]]
    if diff:
        what = ", ".join(f"{k} {saved.get(k)!r} there, {settings[k]!r} here" for k in diff)
        raise ValueError(
            f"{src} was certified with other settings ({what}); match them or drop --from-report"
        )
    fields = ("name", "sigma", "fingerprint", "batch_size", "model")
    out: dict[str, tuple[dict[str, Any], list[dict]]] = {}
    for key, u in rep.get("units", {}).items():
        info = {f: u[f] for f in fields if f in u}
        out[key] = (info, [{k: v for k, v in r.items() if k != "unit"} for r in rows if r.get("unit") == key])
    return out


class _State:
    """The ``out/state`` folder, touched by rank 0 only."""

    def __init__(
        self, root: Path, settings: dict[str, Any], fresh: bool, from_report: Path | None = None
    ) -> None:
        self.root = root
        saved = _read_json(root / "settings.json")
        if fresh and root.exists():
            if saved is None:
                raise ValueError(f"{root} is not a certify state folder; not deleting it")
            for p in root.iterdir():
                p.unlink()
            saved = None
        if saved is not None and saved != settings:
            diff = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
            raise ValueError(
                f"{root} holds a certification with other settings ({', '.join(diff)}); use another --out "
                "or --fresh to discard it"
            )
        imported = _report_units(from_report, settings) if from_report is not None else {}
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / "settings.json", settings)
        self.units: dict[str, Any] = _read_json(root / "units.json") or {}
        fresh_units = {k: v for k, v in imported.items() if k not in self.units}
        for key, (info, records) in fresh_units.items():  # units already in the state are kept
            atomic_write_text(root / _file_of(key), "".join(json.dumps(r) + "\n" for r in records))
            self.units[key] = info
        if fresh_units:
            atomic_write_json(root / "units.json", self.units)
            log.info("%s: %d unit(s) imported from %s", root, len(fresh_units), from_report)

    def open_unit(self, key: str, info: dict[str, Any]) -> list[dict[str, Any]]:
        path = self.root / _file_of(key)
        old = self.units.get(key)
        if old is not None and old.get("fingerprint") != info["fingerprint"]:
            log.warning("%s: the model changed since its records were written; computing it again", key)
            path.unlink(missing_ok=True)
        self.units[key] = info
        atomic_write_json(self.root / "units.json", self.units)
        return read_records(path)

    def append(self, key: str, records: Sequence[dict[str, Any]]) -> None:
        _append(self.root / _file_of(key), records)


def _record(g: SmoothedClassifier, x: torch.Tensor, y: int, index: int, cfg: dict[str, Any]) -> dict:
    gen = g.generator(derived_seed(cfg["seed"], "certify", index))
    c = g.certify(x, cfg["n0"], cfg["n"], cfg["alpha"], gen)
    return {
        "index": index,
        "label": y,
        "prediction": c.prediction,
        "guess": c.guess,
        "radius": c.radius,
        "p_lower": c.p_lower,
        "count": c.count,
        "correct": bool(c.prediction == y),
        "abstained": c.abstained,
        "seconds": round(c.seconds, 4),
    }


def certify_models(
    models: Mapping[str, nn.Module],
    split: Split,
    sigmas: SigmaSpec,
    *,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    num_examples: int | None = 500,
    subset_seed: int = 0,
    seed: int = 0,
    batch_size: int = 1000,
    out: str | os.PathLike[str] = "runs/certify",
    dataset: str | None = None,
    descriptions: Mapping[str, dict[str, Any]] | None = None,
    compute: bool = True,
    fresh: bool = False,
    from_report: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Certify every (model, sigma) unit on the selected examples; write and return the report.

    Args:
        models: ``{name: base model}`` (images -> logits), each on the device it should run on.
        split: the examples' split (``num_examples`` of it drawn with ``subset_seed``).
        sigmas: one sigma, a list (every model at each), or ``{name: sigma or list}``.
        n0, n, alpha: CERTIFY's selection samples, estimation samples and failure probability.
        seed: root of the per-example noise seeds.
        batch_size: noisy samples per forward pass.
        out: folder of the report (``report.json``, ``report.md``, ``certify.png``,
            ``records.jsonl.gz``) and of the state (``out/state``).
        dataset: the dataset's name, for the report.
        descriptions: ``{name: {...}}`` recorded with each unit (e.g. where a model was loaded from).
        compute: False computes nothing: the report of what is saved.
        fresh: discard the saved state first.
        from_report: a saved report folder with the same settings whose units (and records) are
            copied into the state first, where the state lacks them.

    Returns the report dict (see :func:`pssr.certify.report.build_report`).
    """
    from pssr.certify.report import build_report, save_report

    if (
        not isinstance(models, Mapping)
        or not models
        or not all(isinstance(m, nn.Module) for m in models.values())
    ):
        raise ValueError("models must be a non-empty dict {name: nn.Module}")
    if not isinstance(split, Split) or len(split) == 0:
        raise ValueError("split must be a non-empty pssr.data.Split")
    for name, v in (("n0", n0), ("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if num_examples is not None and (not isinstance(num_examples, int) or num_examples < 1):
        raise ValueError(f"num_examples must be a positive int or None, got {num_examples!r}")
    alpha = check_alpha(alpha)
    units = _units(models, sigmas)
    indices = select_examples(len(split), num_examples, subset_seed)
    settings = {
        "dataset": dataset,
        "data_fingerprint": data_fingerprint(split.x, split.y),
        "n_split": len(split),
        "subset_seed": subset_seed,
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "seed": seed,
    }
    info = D.current()
    out = Path(out)
    held: dict[str, _State] = {}

    def open_state() -> None:  # rank 0 alone; an error there is raised on every rank
        src = Path(from_report) if from_report is not None else None
        held["state"] = _State(out / "state", settings, fresh, src)

    D.on_main(open_state, info)
    state = held.get("state")
    cfg = {"n0": n0, "n": n, "alpha": alpha, "seed": seed}
    fingerprints = {name: model_fingerprint(m) for name, m in models.items()}
    for name, sigma in units:
        key = unit_key(name, sigma)
        uinfo = {
            "name": name,
            "sigma": sigma,
            "fingerprint": fingerprints[name],
            "batch_size": batch_size,
            **({"model": dict(descriptions[name])} if descriptions and name in descriptions else {}),
        }
        done = D.on_main(lambda k=key, u=uinfo: state.open_unit(k, u) if state else [], info)
        if not compute:
            continue
        have = {r["index"] for r in done}
        todo = [i for i in indices if i not in have]
        if not todo:
            continue
        _run_unit(models[name], sigma, key, split, todo, cfg, batch_size, state, info, progress, len(done))
    report = D.on_main(lambda: build_report(out / "state", indices, num_examples), info)
    D.on_main(lambda: save_report(out, report), info)
    return report


def _run_unit(
    model: nn.Module,
    sigma: float,
    key: str,
    split: Split,
    todo: list[int],
    cfg: dict[str, Any],
    batch_size: int,
    state: _State | None,
    info: D.DistInfo,
    progress: bool,
    already: int,
) -> None:
    from tqdm.auto import tqdm

    g = SmoothedClassifier(model, sigma, batch_size=batch_size)
    world = info.world_size
    t0 = time.perf_counter()
    last_log = t0
    with tqdm(
        total=len(todo), disable=not (progress and info.is_main), desc=key, unit="img", leave=False
    ) as bar:
        for start in range(0, len(todo), world):
            round_ = todo[start : start + world]

            def work(r: list[int] = round_) -> dict[str, Any] | None:
                mine = D.shard_range(len(r), info)  # one example per rank (the last round may be short)
                if len(mine) == 0:
                    return None
                i = r[mine.start]
                return _record(g, split.x[i], int(split.y[i]), i, cfg)

            recs = [p for p in D.all_gather_results(work, info) if p is not None]
            D.on_main(lambda rs=recs: state.append(key, rs) if state else None, info)
            bar.update(len(round_))
            now = time.perf_counter()
            if info.is_main and not progress and now - last_log > 60:
                log.info(
                    "%s: %d/%d examples, %.1f s/example",
                    key,
                    already + start + len(round_),
                    already + len(todo),
                    (now - t0) / (start + len(round_)),
                )
                last_log = now
    if info.is_main:
        log.info("%s: %d examples certified in %.0f s", key, len(todo), time.perf_counter() - t0)
