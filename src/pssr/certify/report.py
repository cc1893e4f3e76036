"""The certify report: computed from the per-example records, then rendered (JSON first, then Markdown
and a plot of certified accuracy against L2 radius with every unit on one figure).

Certified accuracy at radius r (Cohen et al. 2019, section 4): the share of the examples whose
CERTIFY prediction is the true label with a certified radius of at least r (abstentions count as
wrong). Beside each value, a 95% Clopper-Pearson interval over the examples (how far another draw of
the same number of test images could move it); the certificates themselves hold with probability
``1 - alpha`` each.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pssr.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # L2, pixel units in [0, 1]

__all__ = ["RADII", "build_report", "render_markdown", "save_report"]


def _interval(k: int, n: int, level: float = 0.95) -> list[float]:
    from scipy.stats import beta

    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return [lo, hi]


def max_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can give with ``n`` samples: all ``n`` hit, ``p_lower = alpha ** (1/n)``."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def summarize_unit(records: Sequence[dict[str, Any]], sigma: float, n0: int, n: int, alpha: float) -> dict:
    """Certified accuracy at :data:`RADII` (with intervals), abstentions and speed of one unit."""
    m = len(records)
    cert: dict[str, Any] = {}
    for r in RADII:
        k = sum(1 for rec in records if rec["correct"] and rec["radius"] >= r)
        cert[f"{r:g}"] = {"accuracy": k / m if m else None, "k": k, "ci95": _interval(k, m) if m else None}
    secs = sum(float(rec["seconds"]) for rec in records)
    correct_radii = [rec["radius"] for rec in records if rec["correct"]]
    return {
        "n_examples": m,
        "certified_accuracy": cert,
        "abstain_rate": sum(bool(rec["abstained"]) for rec in records) / m if m else None,
        "wrong_rate": sum(1 for rec in records if not rec["abstained"] and not rec["correct"]) / m
        if m
        else None,
        "mean_radius_correct": sum(correct_radii) / len(correct_radii) if correct_radii else 0.0,
        "max_certifiable_radius": max_radius(sigma, n, alpha),
        "seconds": round(secs, 2),
        "seconds_per_example": secs / m if m else None,
        "samples_per_second": (n0 + n) * m / secs if secs > 0 else None,
    }


def build_report(
    state_dir: str | Path, indices: Sequence[int], num_requested: int | None = None
) -> dict[str, Any]:
    """The report dict of every unit in ``state_dir`` (units of earlier calls included), on the
    examples ``indices`` (records of other examples, from a larger earlier run, are left out)."""
    from pssr.certify.run import _file_of, read_records
    from pssr.experiments.summary import host_info
    from pssr.train.loop import plain_metadata

    state_dir = Path(state_dir)
    settings = {
        **json.loads((state_dir / "settings.json").read_text()),
        "num_examples": len(indices),
        "num_requested": num_requested,
    }
    units_info = (
        json.loads((state_dir / "units.json").read_text()) if (state_dir / "units.json").is_file() else {}
    )
    wanted = set(indices)
    units: dict[str, Any] = {}
    for key, uinfo in units_info.items():
        recs = read_records(state_dir / _file_of(key))
        recs = [r for r in recs if r["index"] in wanted]
        s = summarize_unit(recs, uinfo["sigma"], settings["n0"], settings["n"], settings["alpha"])
        units[key] = {**uinfo, **s, "complete": s["n_examples"] == settings["num_examples"]}
    return {
        "kind": "pssr.certify",
        "method": "randomized smoothing, CERTIFY of Cohen, Rosenfeld, Kolter (ICML 2019)",
        "settings": settings,
        "radii": list(RADII),
        "units": units,
        "best_sigma_per_radius": _envelope(units),
        "complete": bool(units) and all(u["complete"] for u in units.values()),
        "metadata": plain_metadata(),
        "host": host_info(),
    }


def _envelope(units: dict[str, Any]) -> dict[str, Any]:
    """Per model name: the best certified accuracy over its sigmas at each radius, and which sigma."""
    out: dict[str, Any] = {}
    for u in units.values():
        row = out.setdefault(u["name"], {})
        for r, v in u["certified_accuracy"].items():
            if v["accuracy"] is None:
                continue
            if r not in row or v["accuracy"] > row[r]["accuracy"]:
                row[r] = {"accuracy": v["accuracy"], "sigma": u["sigma"]}
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    radii = [f"{r:g}" for r in report["radii"]]
    lines = [
        f"# Certified robustness (randomized smoothing): {s.get('dataset') or 'dataset'}",
        "",
        f"CERTIFY of Cohen et al. (2019): n0 = {s['n0']}, N = {s['n']:,}, alpha = {s['alpha']:g}; "
        f"{s['num_examples']} test images drawn at random (seed {s['subset_seed']}) from the "
        f"{s['n_split']:,} of the split; noise seed {s['seed']}. Certified accuracy (%) at L2 radius r "
        "(pixels in [0, 1]); abstentions count as wrong.",
        "",
        "| model | sigma | n | "
        + " | ".join(f"r={r}" for r in radii)
        + " | abstain % | s/image | samples/s |",
        "|---|---|---|" + "---|" * len(radii) + "---|---|---|",
    ]
    for u in report["units"].values():
        ca = u["certified_accuracy"]
        partial = "" if u["complete"] else " (partial)"
        lines.append(
            f"| {u['name']}{partial} | {u['sigma']:g} | {u['n_examples']} | "
            + " | ".join(_pct(ca[r]["accuracy"]) for r in radii)
            + f" | {_pct(u['abstain_rate'])} | "
            + ("-" if u["seconds_per_example"] is None else f"{u['seconds_per_example']:.2f}")
            + " | "
            + ("-" if u["samples_per_second"] is None else f"{u['samples_per_second']:.0f}")
            + " |"
        )
    lines += [
        "",
        "95% Clopper-Pearson intervals over the images are in report.json (`ci95`); with "
        f"{s['num_examples']} images a value of 50% is known to about "
        f"+/-{100 * (_interval(s['num_examples'] // 2, s['num_examples'])[1] - 0.5):.0f} points.",
        "",
    ]
    env = report["best_sigma_per_radius"]
    if any(len({u["sigma"] for u in report["units"].values() if u["name"] == m}) > 1 for m in env):
        lines += [
            "Best sigma per radius (the envelope over each model's sigmas, as in Cohen et al.'s tables):",
            "",
            "| model | " + " | ".join(f"r={r}" for r in radii) + " |",
            "|---|" + "---|" * len(radii),
        ]
        for m, row in env.items():
            cells = [
                f"{_pct(row[r]['accuracy'])} (s={row[r]['sigma']:g})" if r in row else "-" for r in radii
            ]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["![certified accuracy against radius](certify.png)", ""]
    md = report.get("metadata", {})
    lines.append(
        f"pssr {md.get('pssr_version', '?')}, git {md.get('git_revision', '?')}; report.json has the rest."
    )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any]) -> bytes:
    """PNG bytes: certified accuracy against radius, one curve per unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rmax = max((u["max_certifiable_radius"] for u in report["units"].values()), default=1.0)
    grid = [rmax * i / 200 for i in range(201)]
    for u in report["units"].values():
        radii_correct = u.get("_radii_correct")
        if radii_correct is None:
            continue
        m = max(1, u["n_examples"])
        ys = [100 * sum(1 for r in radii_correct if r >= g) / m for g in grid]
        ax.plot(grid, ys, label=f"{u['name']} (sigma {u['sigma']:g})")
    ax.set_xlabel("L2 radius (pixels in [0, 1])")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(0, rmax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    s = report["settings"]
    ax.set_title(f"{s.get('dataset') or ''}: n0={s['n0']}, N={s['n']:,}, alpha={s['alpha']:g}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def save_report(out: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report.json``, ``report.md``, ``certify.png`` and ``records.jsonl.gz`` into ``out``."""
    from pssr.certify.run import _file_of, read_records

    out = Path(out)
    lines = []
    plot_report = json.loads(json.dumps(report))
    for key, u in plot_report["units"].items():
        recs = read_records(out / "state" / _file_of(key))
        u["_radii_correct"] = [r["radius"] for r in recs if r["correct"]]
        lines += [json.dumps({"unit": key, **r}) for r in recs]
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    atomic_write_bytes(out / "certify.png", plot(plot_report))
    atomic_write_bytes(out / "records.jsonl.gz", gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))
    return out
