"""What ``pssr report`` renders from a checkout's ``results/`` folder, besides one report folder.

Results are evidence kept as JSON (training summaries, calibrations, evaluation reports, benchmarks);
the Markdown tables of README.md and docs/results.md and the calibration figure are rendered from it,
never typed by hand:

- :mod:`~pssr.reporting.tables`: every table (docs/results.md) and the presets' tables (README.md),
  assembled from :mod:`~pssr.reporting.training` (classifiers, adversarial training, ``pssr
  train-pssr``, ``pssr calibrate``), :mod:`~pssr.reporting.evaluations` (harness and preset reports)
  and :mod:`~pssr.reporting.speed` (``benchmarks/run_all.py``);
- :mod:`~pssr.reporting.docs`: rewrites the generated blocks of README.md and docs/results.md;
- :mod:`~pssr.reporting.calibration_plot`: the removal-ratio sweeps of ``pssr calibrate`` side by side;
- :mod:`~pssr.reporting.compress`: gzips a finished report's per-example records before it is committed.

Every function takes the checkout's root folder (the one holding ``results/``); links and paths in the
tables are written relative to it.
"""

from __future__ import annotations
