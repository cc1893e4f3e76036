"""Plot the removal-ratio sweeps of ``pssr calibrate`` (results/*/calibrated/*.json) side by side.

    .venv/bin/python scripts/plot_calibration.py [--out docs/figures/calibration.png]

One panel per JSON: clean and gray-box accuracy on PSSR's validation split against the ratio, the
classifier's clean accuracy as a line, the trained and the chosen ratio marked. Rendered from the
JSON files, never typed in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures" / "calibration.png"))
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    files = sorted(Path(args.results).glob("*/calibrated/*.json"))
    if not files:
        print(f"no results/*/calibrated/*.json under {args.results}", file=sys.stderr)
        return 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out} ({len(files)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
