"""Plots of an evaluation report (matplotlib, Agg backend; nothing is shown on screen).

* ``accuracy_vs_eps.png`` -- worst-case accuracy against eps per model, one line per threat model
  (paper protocol dashed, adaptive solid), drawn when several eps were evaluated.
* ``examples_<model>.png`` -- for a purification defense: rows clean, adversarial, purified clean,
  purified adversarial, and the perturbation (amplified), one column per example.

Everything is drawn from the report dict (and the example arrays), so ``pssr report DIR`` can
redraw the plots of a saved report.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy_vs_eps(report: dict[str, Any], path: str | Path) -> Path | None:
    """Worst-case accuracy vs eps per model and threat model; None when fewer than two eps."""
    eps_list = sorted(report["config"].get("eps", []))
    if len(eps_list) < 2:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    styles = {"paper": "--", "adaptive": "-", "all": ":"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    results = report["results"]
    for i, m in enumerate(report["models"]):
        clean = next((r["accuracy"] for r in results if r["model"] == m and r["attack"] == "clean"), None)
        for t in ("paper", "adaptive"):
            pts = sorted(
                (r["eps"], r["accuracy"])
                for r in results
                if r["model"] == m and r["threat_model"] == t and r["attack"] == "worst-case"
            )
            if not pts:
                continue
            xs = [0.0] + [p[0] for p in pts]
            ys = [clean if clean is not None else math.nan] + [p[1] for p in pts]
            ax.plot(
                xs,
                [100 * v for v in ys],
                styles[t],
                marker="o",
                ms=3,
                color=colors[i % len(colors)],
                label=f"{m} ({t})",
            )
    ax.set_xlabel(f"eps ({report['config'].get('norm')})")
    ax.set_ylabel("worst-case accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{report['config'].get('dataset') or ''} robust accuracy vs budget".strip())
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _img(a: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] -> an array imshow takes, and a colormap for grey images."""
    a = np.clip(a, 0.0, 1.0)
    if a.shape[0] == 1:
        return a[0], "gray"
    return np.transpose(a[:3], (1, 2, 0)), None


def plot_examples(arrays: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Grid: rows clean / adversarial / purified / purified adversarial / |perturbation| (scaled)."""
    plt = _plt()
    x, x_adv = arrays["x"], arrays["x_adv"]
    rows = [("clean", x), ("adversarial", x_adv)]
    if "purified" in arrays:
        rows += [("purified clean", arrays["purified"]), ("purified adv.", arrays["purified_adv"])]
    delta = np.abs(x_adv - x)
    scale = float(delta.max()) or 1.0
    rows.append((f"|δ| x{1 / scale:.3g}", delta / scale))
    k = x.shape[0]
    fig, axes = plt.subplots(
        len(rows), k, figsize=(1.2 * k + 1.2, 1.25 * len(rows) + 0.4), dpi=120, squeeze=False
    )
    for r, (name, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            im, cmap = _img(imgs[c])
            ax.imshow(im, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0 and "label" in arrays:
                sub = f"y={int(arrays['label'][c])}"
                if "pred_adv" in arrays:
                    sub += f" adv→{int(arrays['pred_adv'][c])}"
                ax.set_title(sub, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def render_plots(
    report: dict[str, Any], examples: dict[str, dict[str, np.ndarray]], out_dir: str | Path
) -> list[str]:
    """Draw every plot the report supports into ``out_dir``; return the file names written."""
    from pssr.evaluation.report import safe_name

    out = Path(out_dir)
    written = []
    p = plot_accuracy_vs_eps(report, out / "accuracy_vs_eps.png")
    if p is not None:
        written.append(p.name)
    for name, arrays in examples.items():
        title = (
            f"{name}: {arrays['attack']} ({arrays['threat_model']}), eps={float(arrays['eps']):g}"
            if "attack" in arrays
            else name
        )
        written.append(plot_examples(arrays, out / f"examples_{safe_name(name)}.png", title).name)
    return written


__all__ = ["plot_accuracy_vs_eps", "plot_examples", "render_plots"]
