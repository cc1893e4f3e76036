"""Runs from config files and command lines, apart from the library they drive.

The library (:mod:`pssr.train`, :mod:`pssr.evaluation`, :mod:`pssr.defense`, ...) takes Python
objects: a model, a :class:`pssr.data.Dataset`, a config dataclass. This package is what turns a
TOML file or a command line into those objects, runs them and writes what a run leaves behind:

* :mod:`.data` -- the ``[data]`` table (:class:`DataConfig`) and :func:`load_data`;
* :mod:`.summary` -- run summaries (:func:`summarize`, :func:`write_summary`, :func:`host_info`);
* :mod:`.classifier`, :mod:`.adversarial`, :mod:`.pssr_train`, :mod:`.denoise` -- ``run_from_config``
  of each trainer (``pssr train-classifier``, ``train-adversarial``, ``train-pssr``,
  ``train-denoiser``), mirroring the :mod:`pssr.train` module each one drives;
* :mod:`.calibrate` -- ``pssr calibrate`` on a saved checkpoint;
* :mod:`.quick_eval` -- the first look at a trained PSSR that ``train-pssr`` and ``calibrate`` record;
* :mod:`.loading` -- models from command-line specs (``[NAME=]PATH``, ``BASELINE@PATH``, zoo names)
  and ``pssr evaluate`` on them (:func:`evaluate_checkpoints`);
* :mod:`.full_split` -- clean accuracy over a whole split, beside an attacked subset;
* :mod:`.presets`, :mod:`.reproduce`, :mod:`.preset_report` -- the presets of ``pssr reproduce`` /
  ``pssr demo``: what each runs, the run itself, and its ``report.md``.

Imports run downwards only: this package uses the library; the library never imports it
(``tests/test_layers.py``).
"""

from __future__ import annotations
