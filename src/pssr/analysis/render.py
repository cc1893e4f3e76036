"""report.md and curves.png of a finding folder, drawn from its report.json only (never typed by hand).

``render(report, out)`` writes both; ``pssr finding --render-only --out DIR`` redraws them from
``DIR/report.json``. See :mod:`pssr.analysis.finding` for what the numbers are.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from pssr.utils import atomic_write_bytes, atomic_write_text

# k values shown in the Markdown table (those on the report's grid)
TABLE_K = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
STYLE = {  # ranking -> (colour, line style, legend text)
    "salient": ("tab:red", "-", "salient first (|delta|)"),
    "salient-grad": ("tab:orange", "-", "salient first (|delta x grad|)"),
    "trivial": ("tab:blue", "-", "trivial first (smallest |delta|)"),
    "random": ("0.4", "--", "random"),
    "scorer:learned": ("tab:green", ":", "scorer: learned"),
    "scorer:gradient": ("tab:purple", ":", "scorer: gradient"),
    "scorer:random": ("tab:brown", ":", "scorer: random"),
}


def _pct(v: Any, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _style(r: str) -> tuple[str, Any, str]:
    if r in STYLE:
        return STYLE[r]
    if r.startswith("scorer:"):  # a named trained scorer (--pssr NAME=PATH)
        return ("tab:olive", (0, (3, 1, 1, 1)), f"scorer: {r[7:]}")
    return ("black", "-.", r)


def render_markdown(report: dict[str, Any]) -> str:
    cfg, atk = report["config"], report["attacks"]
    grid = cfg["grid"]
    meta = report.get("metadata", {})
    lines = [
        f"# The salient/trivial finding on {cfg['dataset']}",
        "",
        f"Command: `{meta.get('command', 'n/a')}` (git {meta.get('git_revision', 'n/a')}, {meta.get('time_utc', '')}).",
        f"Classifier: {report['classifier'].get('path', 'n/a')} (weights {report['classifier']['fingerprint']}). "
        f"{cfg['n']} test images drawn at random (seed {cfg['seed']}) from the {report['test_split_size']}-image "
        f"test split; AutoAttack on the first {cfg['n_slow']} of that draw. Adversarial examples are made on the "
        "undefended classifier; a fraction k of the pixels then gets its clean value back (an oracle "
        "restoration), in each order below. Success rate = share of the clean-correct images still misclassified.",
        "",
        "## Attacks and halving points",
        "",
        "k_half: the fraction of pixels that must be restored, in that order, to halve the attack's success "
        "rate (linear between grid points; n/a: never).",
        "",
    ]
    rankings = list(next(iter(atk.values()))["curves"]) if atk else []
    head = "| attack | norm, eps | clean-correct | success | median margin | pixels changed | top-10% mass | "
    head += " | ".join(f"k_half {r}" for r in rankings) + " |"
    lines += [head, "|" + "---|" * (7 + len(rankings))]
    for label, a in atk.items():
        spec = a["spec"]["kwargs"]
        lines.append(
            f"| {label} | {spec.get('norm', 'linf')} {spec['eps']:.4g} | {a['n_clean_correct']}/{a['n']} | "
            f"{_pct(a['success_rate'])} | {_num(a['median_margin_fooled'], 2)} | "
            f"{_pct(a['delta']['share_pixels_changed'])} | {_pct(a['delta']['top10pct_mass'])} | "
            + " | ".join(_pct(a["k_half"][r]) for r in rankings)
            + " |"
        )
    lines += [
        "",
        "Median margin: max other logit minus true logit of the fooled examples (how far past the boundary). "
        "Pixels changed: share of pixels with |delta| > 1e-6; top-10% mass: share of sum |delta| in the "
        "10% largest (means over fooled examples).",
        "",
        "## Success rate after restoring a fraction k of the pixels",
        "",
    ]
    ks = [k for k in TABLE_K if k in grid]
    lines += ["| attack | order | k=0 | " + " | ".join(f"k={100 * k:g}%" for k in ks) + " |"]
    lines += ["|" + "---|" * (3 + len(ks))]
    for label, a in atk.items():
        for r, c in a["curves"].items():
            lines.append(
                f"| {label} | {r} | {_pct(c[0])} | " + " | ".join(_pct(c[grid.index(k)]) for k in ks) + " |"
            )
    lines += [
        "",
        "![success rate against k](curves.png)",
        "",
        f"## Can Pixel Surgery find the salient pixels? (removal ratio {cfg['ratio']:g})",
        "",
    ]
    for name, info in report.get("scorers", {}).items():
        lines.append(f"- `{name}`: {info.get('source', '')}")
    lines += [
        "",
        "Each scorer scores x_adv (it never sees the clean image); S = its top pixels, O = the top pixels by "
        "|delta| (the oracle salient set), both of the same size, so precision = recall. Tie precision counts "
        "every pixel tied with O's last one as salient (chance: the share of such pixels); mass recall = "
        "sum_S |delta| / sum_O |delta|; Spearman: rank correlation of the score with |delta| over all pixels. "
        "Means (std) over the fooled images.",
        "",
        "| attack | scorer | n | precision = recall | tie precision (chance) | mass recall | Spearman |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, a in atk.items():
        for name, m in a.get("agreement", {}).items():
            lines.append(
                f"| {label} | {name} | {m['precision']['n']} | {_num(m['precision']['mean'])} ({_num(m['precision']['std'], 2)}) | "
                f"{_num(m['tie_precision']['mean'])} ({_num(m['chance_tie_precision']['mean'])}) | "
                f"{_num(m['mass_recall']['mean'])} | {_num(m['spearman']['mean'])} ({_num(m['spearman']['std'], 2)}) |"
            )
    lines.append("")
    return "\n".join(lines)


def plot_curves(report: dict[str, Any], path: str | Path) -> Path:
    """One column per attack; top: k in [0, 1], bottom: zoom on k <= 0.2. Dotted line: half of k=0."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    grid = report["config"]["grid"]
    atk = report["attacks"]
    n = max(1, len(atk))
    fig, axes = plt.subplots(2, n, figsize=(3.4 * n, 6.2), dpi=110, squeeze=False)
    for j, (label, a) in enumerate(atk.items()):
        for row, kmax in ((0, 1.0), (1, 0.2)):
            ax = axes[row][j]
            keep = [i for i, k in enumerate(grid) if k <= kmax + 1e-12]
            for r, c in a["curves"].items():
                colour, ls, text = _style(r)
                ax.plot(
                    [100 * grid[i] for i in keep],
                    [100 * c[i] for i in keep],
                    linestyle=ls,
                    color=colour,
                    label=text,
                    lw=1.4,
                )
            if a["success_rate"]:
                ax.axhline(50 * a["success_rate"], color="0.7", lw=0.8, ls=":")
            ax.set_xlim(0, 100 * kmax)
            ax.set_ylim(-2, 102)
            ax.grid(alpha=0.3)
            ax.set_xlabel("pixels restored to clean (%)")
            if j == 0:
                ax.set_ylabel("attack success rate (%)")
            if row == 0:
                spec = a["spec"]["kwargs"]
                ax.set_title(
                    f"{label} ({spec.get('norm', 'linf')} {spec['eps']:.3g}, n={a['n_clean_correct']})",
                    fontsize=9,
                )
    axes[0][0].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"{report['config']['dataset']}: success rate after restoring a fraction of the pixels", fontsize=10
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def render(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write ``out/report.md`` and ``out/curves.png`` from the report dict."""
    out = Path(out)
    return {
        "report.md": atomic_write_text(out / "report.md", render_markdown(report)),
        "curves.png": plot_curves(report, out / "curves.png"),
    }


def render_folder(out: str | Path) -> dict[str, Path]:
    """Redraw ``out/report.md`` and ``out/curves.png`` from ``out/report.json``."""
    path = Path(out) / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no finding report at {path}; run `pssr finding` first")
    return render(json.loads(path.read_text()), out)
