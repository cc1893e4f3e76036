"""The removal-ratio sweeps of ``pssr calibrate`` (``results/*/calibrated/*.json``) side by side.

One panel per JSON: clean and gray-box accuracy on PSSR's validation split against the ratio, the
classifier's clean accuracy as a line, the trained and the chosen ratio marked. Rendered from the
JSON files, never typed in.
"""

from __future__ import annotations

import json
from pathlib import Path


def plot_calibration(results: Path, out: Path) -> Path:
    """Draw every ``results/*/calibrated/*.json`` into one PNG at ``out`` (atomically); returns ``out``.

    Raises ValueError when ``results`` holds no calibration."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)  # a file, never a window
    import matplotlib.pyplot as plt

    from pssr.utils import atomic_write_bytes

    files = sorted(Path(results).glob("*/calibrated/*.json"))
    if not files:
        raise ValueError(
            f"no */calibrated/*.json under {results}: `pssr calibrate --results FILE` writes them"
        )
    fig, axes = plt.subplots(1, len(files), figsize=(3.6 * len(files), 3.2), squeeze=False)
    for ax, f in zip(axes[0], files):
        d = json.loads(f.read_text())
        c = d["calibration"]
        r = [row["ratio"] for row in c["rows"]]
        ax.plot(r, [100 * row["clean_acc"] for row in c["rows"]], "o-", label="PSSR clean")
        ax.plot(
            r, [100 * row["graybox_acc"] for row in c["rows"]], "s-", label=f"PSSR gray-box PGD-{c['steps']}"
        )
        ax.axhline(100 * c["classifier_clean_acc"], color="gray", ls="--", lw=1, label="classifier clean")
        ax.axvline(c["trained_ratio"], color="tab:red", ls=":", lw=1, label="trained ratio")
        ax.axvline(c["chosen"], color="tab:green", lw=2, alpha=0.4, label="chosen")
        ax.set_title(f"{d['dataset']} ({f.stem}), val n={c['n']}", fontsize=9)
        ax.set_xlabel("share of pixels removed")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(out, buf.getvalue())
