"""The evaluation report: JSON first (with per-example records), Markdown and plots rendered from it.

``Report.save(dir)`` writes::

    report.json            settings, metadata, per-model descriptions / checks / flags / summary,
                           and the result rows (schema: docs/report-schema.md)
    records.jsonl          one line per (model, attack, eps, example)
    report.md              tables rendered from report.json by :func:`render_markdown`
                           (:mod:`pssr.evaluation.markdown`)
    accuracy_vs_eps.png    when several eps were evaluated
    examples_<model>.png   clean / adversarial / purified images, for models with ``purify``
    examples_<model>.npz   the arrays behind that grid (so ``pssr report DIR`` can redraw it)

Every number in the tables is computed from the records by :func:`summarize`; nothing is typed by
hand. ``Report.load(dir)`` reads a saved report back; :func:`rerender` redraws report.md and the
plots of a saved report from its report.json. A preset's report folder (``pssr reproduce``, ``pssr
demo``: one evaluation report per norm) is redrawn one level up, by
:func:`pssr.experiments.preset_report.rerender_report` (``pssr report DIR``).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pssr.evaluation.markdown import render_markdown
from pssr.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SCHEMA = "pssr.evaluation.report"
SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Records -> result rows
# ----------------------------------------------------------------------------------------------


def summarize(
    records: list[dict[str, Any]], unit_meta: dict[tuple[str, str, str], dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Result rows (clean, per attack, worst case per threat model and overall) from the records.

    ``unit_meta[(model, threat_model, attack)]`` adds timing, the attack's config and target.
    """
    unit_meta = unit_meta or {}
    rows: list[dict[str, Any]] = []
    models = list(dict.fromkeys(r["model"] for r in records))
    for m in models:
        mine = [r for r in records if r["model"] == m]
        clean = [r for r in mine if r["attack"] == "clean"]
        n = len(clean)
        n_ok = sum(r["correct"] for r in clean)
        meta = unit_meta.get((m, "none", "clean"), {})
        rows.append(
            {
                "model": m,
                "threat_model": "none",
                "attack": "clean",
                "eps": 0.0,
                "n": n,
                "n_correct": n_ok,
                "accuracy": n_ok / n if n else math.nan,
                "seconds": meta.get("seconds"),
            }
        )
        # (threat, attack, eps) -> records, kept in first-seen order
        groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
        for r in mine:
            if r["attack"] != "clean":
                groups[(r["threat_model"], r["attack"], r["eps"])].append(r)
        # worst case: (threat or "all", eps) -> index -> robust so far
        worst: dict[tuple[str, float], dict[int, bool]] = defaultdict(dict)
        for (threat, attack, eps), rs in groups.items():
            k = sum(r["correct"] for r in rs)
            meta = unit_meta.get((m, threat, attack), {})
            secs = (meta.get("seconds") or {}).get(repr(eps))
            attacked = [r for r in rs if r["attacked"]]
            rows.append(
                {
                    "model": m,
                    "threat_model": threat,
                    "attack": attack,
                    "eps": eps,
                    "n": len(rs),
                    "n_correct": k,
                    "accuracy": k / len(rs) if rs else math.nan,
                    "n_attacked": len(attacked),
                    "seconds": secs,
                    "seconds_per_example": secs / len(attacked) if secs is not None and attacked else None,
                    "mean_pert_norm": float(np.mean([r["pert_norm"] for r in attacked])) if attacked else 0.0,
                    "gradient_free": meta.get("gradient_free"),
                    "black_box": meta.get("black_box"),
                    "name": meta.get("name", attack),
                    "target": meta.get("target"),
                    "config": meta.get("config"),
                    **({"reused_from": meta["reused_from"]} if meta.get("reused_from") else {}),
                }
            )
            for key in ((threat, eps), ("all", eps)):
                w = worst[key]
                for r in rs:
                    w[r["index"]] = w.get(r["index"], True) and bool(r["correct"])
        clean_ok = {r["index"]: bool(r["correct"]) for r in clean}
        for (threat, eps), w in worst.items():
            k = sum(1 for i, ok in w.items() if ok and clean_ok.get(i, False))
            rows.append(
                {
                    "model": m,
                    "threat_model": threat,
                    "attack": "worst-case",
                    "eps": eps,
                    "n": len(w),
                    "n_correct": k,
                    "accuracy": k / len(w) if w else math.nan,
                }
            )
    return rows


def worst_case_table(results: list[dict[str, Any]], model: str) -> dict[tuple[str, float], float]:
    """``{(threat_model, eps): worst-case accuracy}`` of one model."""
    return {
        (r["threat_model"], r["eps"]): r["accuracy"]
        for r in results
        if r["model"] == model and r["attack"] == "worst-case"
    }


def _summary(results: list[dict[str, Any]], model: str, flags: list[dict[str, Any]]) -> dict[str, Any]:
    clean = next((r["accuracy"] for r in results if r["model"] == model and r["attack"] == "clean"), None)
    worst: dict[str, dict[str, float]] = defaultdict(dict)
    for (threat, eps), acc in worst_case_table(results, model).items():
        worst[threat][f"{eps:g}"] = acc
    return {"clean_accuracy": clean, "worst_case": dict(worst), "flagged": bool(flags)}


# ----------------------------------------------------------------------------------------------
# The report object
# ----------------------------------------------------------------------------------------------


@dataclass
class Report:
    """Result of :func:`pssr.evaluate`: JSON-able fields plus the records and example images."""

    config: dict[str, Any]
    models: dict[str, dict[str, Any]]
    results: list[dict[str, Any]]
    records: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)
    plots: list[str] = field(default_factory=list)

    # -- queries ----------------------------------------------------------------------------------

    def accuracy(
        self, model: str, attack: str = "worst-case", threat_model: str = "adaptive", eps: float | None = None
    ) -> float:
        """One number from the results (``attack="clean"`` ignores threat model and eps)."""
        rows = [
            r
            for r in self.results
            if r["model"] == model
            and r["attack"] == attack
            and (attack == "clean" or r["threat_model"] == threat_model)
            and (attack == "clean" or eps is None or math.isclose(r["eps"], eps))
        ]
        if not rows:
            raise ValueError(
                f"no result for model={model!r}, attack={attack!r}, threat_model={threat_model!r}, "
                f"eps={eps!r}; models: {sorted(self.models)}"
            )
        return float(rows[0]["accuracy"])

    def flags(self, model: str | None = None) -> list[dict[str, Any]]:
        names = [model] if model is not None else list(self.models)
        return [dict(f, model=m) for m in names for f in self.models[m].get("flags", [])]

    # -- (de)serialization ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The report.json content (records are written separately, to records.jsonl)."""
        models = {}
        for name, info in self.models.items():
            info = dict(info)
            info["summary"] = _summary(self.results, name, info.get("flags", []))
            if name in self.examples:
                ex = self.examples[name]
                info["examples"] = {
                    "image": f"examples_{safe_name(name)}.png",
                    "arrays": f"examples_{safe_name(name)}.npz",
                    "attack": str(ex["attack"]),
                    "threat_model": str(ex["threat_model"]),
                    "eps": float(ex["eps"]),
                    "n": int(ex["x"].shape[0]),
                }
            models[name] = info
        return _clean_json(
            {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "config": self.config,
                "metadata": self.metadata,
                "models": models,
                "results": self.results,
                "records_file": "records.jsonl",
                "n_records": len(self.records),
                "plots": list(self.plots),
            }
        )

    def save(self, out_dir: str | Path) -> Path:
        """Write report.json, records.jsonl, report.md, plots and example arrays into ``out_dir``."""
        from pssr.evaluation.plots import render_plots

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, arrays in self.examples.items():
            atomic_write_bytes(out / f"examples_{safe_name(name)}.npz", _npz_bytes(arrays))
        d = self.to_dict()
        self.plots = render_plots(d, self.examples, out)
        d["plots"] = list(self.plots)
        atomic_write_json(out / "report.json", d)
        lines = "".join(json.dumps(_clean_json(r), sort_keys=False) + "\n" for r in self.records)
        atomic_write_text(out / "records.jsonl", lines)
        atomic_write_text(out / "report.md", render_markdown(d))
        log.info("report written to %s", out)
        return out

    @classmethod
    def load(cls, out_dir: str | Path) -> Report:
        out = Path(out_dir)
        d = read_report_json(out)
        records = read_records(out, d)
        models = {}
        for name, info in d["models"].items():
            info = dict(info)
            info.pop("summary", None)
            info.pop("examples", None)
            models[name] = info
        return cls(
            config=d["config"],
            models=models,
            results=d["results"],
            records=records,
            metadata=d.get("metadata", {}),
            examples=load_examples(out, d),
            plots=list(d.get("plots", [])),
        )


def read_records(out: str | Path, d: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-example records of the report ``d`` saved in ``out`` (``[]`` when the file is absent)."""
    rec_path = Path(out) / d.get("records_file", "records.jsonl")
    if not rec_path.exists():
        return []
    if rec_path.suffix == ".gz":  # committed results keep their records gzipped (pssr report --compress)
        import gzip

        text = gzip.decompress(rec_path.read_bytes()).decode("utf-8")
    else:
        text = rec_path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_report_json(out: str | Path) -> dict[str, Any]:
    """The report.json dict of the evaluation report saved in ``out``, its schema checked."""
    out = Path(out)
    path = out / "report.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no report.json in {out}; pass a folder written by pssr evaluate --out, pssr reproduce or pssr demo"
        )
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if d.get("schema") != SCHEMA and "preset" in d and isinstance(d.get("evaluations"), dict):
        raise ValueError(
            f"{path} is the report of preset {d['preset']!r}, not of one evaluation; redraw it with "
            f"pssr report {out} (pssr.experiments.preset_report.rerender_report)"
        )
    if d.get("schema") != SCHEMA:
        raise ValueError(
            f"{path} is not a pssr evaluation report (schema {d.get('schema')!r}); pass a folder written by "
            "pssr evaluate, pssr reproduce or pssr demo"
        )
    if d.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"{path} has schema_version {d.get('schema_version')!r}; this pssr reads {SCHEMA_VERSION}"
        )
    return d


def load_examples(out: Path, d: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    examples = {}
    for name, info in d["models"].items():
        ex = info.get("examples")
        if ex and (out / ex["arrays"]).exists():
            with np.load(out / ex["arrays"]) as z:
                examples[name] = {k: z[k] for k in z.files}
    return examples


def rerender(out_dir: str | Path) -> Path:
    """Redraw report.md and the plots of a saved evaluation report from its report.json (and example
    arrays). A preset's report folder is redrawn by :func:`pssr.experiments.preset_report.rerender_report`."""
    from pssr.evaluation.plots import render_plots

    out = Path(out_dir)
    if out.is_file():
        raise ValueError(f"{out} is a file; pass the report folder that holds report.json")
    d = read_report_json(out)
    d["plots"] = render_plots(d, load_examples(out, d), out)
    atomic_write_json(out / "report.json", d)
    return atomic_write_text(out / "report.md", render_markdown(d))


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _clean_json(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), tuples -> lists, numpy scalars -> Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_json(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


__all__ = [
    "Report",
    "load_examples",
    "read_records",
    "read_report_json",
    "render_markdown",
    "rerender",
    "safe_name",
    "summarize",
    "worst_case_table",
]
