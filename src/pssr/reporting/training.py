"""Tables of training runs: classifiers, adversarial training, ``pssr train-pssr``, ``pssr calibrate``.

Each row is rendered from the summary JSON its run wrote under ``results/`` (with the exact command line);
a PSSR row's command is rebuilt against the configs as they are now (:func:`pssr_command`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from pssr.reporting.common import load_result, pct

TRAINED_DATASETS = ("fashion-mnist", "mnist-10k", "cifar10-jpeg")


def classifiers(root: Path) -> list[str]:
    """One row per ``results/<dataset>/classifier.json`` (``pssr train-classifier --summary``)."""
    rows = [
        "| dataset | model | test accuracy | epochs | training wall time | img/s | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in TRAINED_DATASETS:
        d = load_result(root, f"{ds}/classifier.json")
        if not d:
            continue
        rows.append(
            f"| {ds} | {d['model']} | {pct(d['metrics']['test_acc'])} (n={d['metrics']['n_test']}) | {d['epochs']} | "
            f"{d['train_seconds'] / 60:.0f} min | {d['images_per_second']:.0f} | `{d['command']}` |"
        )
    return rows


def adversarial(root: Path) -> list[str]:
    """PGD-AT and TRADES runs (``pssr train-adversarial --summary``), those made on a lent GPU included."""
    rows = [
        "| dataset | model | clean | PGD-20 robust (own trainer's eval) | eps | epochs | command |",
        "|---|---|---|---|---|---|---|",
    ]
    runs = [
        (ds, m, load_result(root, f"{ds}/{m}.json"))
        for ds in ("fashion-mnist", "mnist-10k")
        for m in ("pgd-at", "trades")
    ]
    # runs made on a lent GPU (results/<dataset>/gpu/<method>-<epochs>ep.json)
    runs += [
        (p.parent.parent.name, f"{p.stem} (GPU)", json.loads(p.read_text()))
        for p in sorted((Path(root) / "results").glob("*/gpu/*.json"))
        if p.stem.startswith(("pgd-at", "trades"))
    ]
    for ds, m, d in runs:
        if not d:
            continue
        mt = d["metrics"]
        rows.append(
            f"| {ds} | {m} | {pct(mt['test_acc'])} | {pct(mt.get('pgd20_robust_acc'))} (n={mt.get('pgd20_n')}) | "
            f"{mt.get('pgd20_eps')} | {d['epochs']} | `{d['command']}` |"
        )
    return rows


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v) if v == "" or any(c in v for c in " ,=") else v
    return repr(v)


def _without_run_overrides(tokens: list[str]) -> list[str]:
    """The command's tokens without its ``--set pssr.* / run.*`` overrides (``run.out`` and
    ``run.results`` kept: they say where the run wrote, not what it trained)."""
    keep: list[str] = []
    it = iter(range(len(tokens)))
    for i in it:
        t = tokens[i]
        if (
            t == "--set"
            and i + 1 < len(tokens)
            and tokens[i + 1].split(".", 1)[0] in ("pssr", "run")
            and tokens[i + 1].split("=", 1)[0] not in ("run.out", "run.results")
        ):
            next(it)  # replaced by the differences from the config
            continue
        keep.append(t)
    return keep


def pssr_command(d: dict[str, Any], root: Path) -> str:
    """A ``pssr train-pssr`` command that reproduces the run of summary ``d`` with the configs as they are
    *now*: its recorded command with the ``--set pssr.* / run.*`` overrides replaced by every setting
    that differs from the config file's current values (configs change as better settings are found;
    the recorded command alone would then train something else). Falls back to the recorded command.
    The config path of the command is read relative to ``root``."""
    from pssr.config import asdict, build, load_toml
    from pssr.defense import PSSRConfig
    from pssr.experiments.pssr_train import PSSRRunConfig

    cmd = d.get("command") or ""
    tokens = shlex.split(cmd)
    if "--config" not in tokens or tokens.index("--config") + 1 >= len(tokens):
        return cmd
    cfg_path = Path(root) / tokens[tokens.index("--config") + 1]
    recorded = d.get("config", {})
    if not cfg_path.is_file() or not {"pssr", "run"} <= set(recorded):
        return cmd
    mapping = load_toml(cfg_path)
    sets = []
    for section, cls in (("pssr", PSSRConfig), ("run", PSSRRunConfig)):
        now = asdict(build(cls, mapping.get(section), prefix=f"{section}."))
        # A setting the run's code did not have yet ran as that setting's default (new options
        # are added with the old behaviour as their default).
        then = {**asdict(cls()), **recorded[section]}
        for k, v in then.items():
            if k in ("out", "results") or k not in now or now[k] == v:
                continue
            sets.append(f"--set {section}.{k}={_toml_value(v)}")
    return shlex.join(_without_run_overrides(tokens)) + ("" if not sets else " " + " ".join(sets))


def pssr_runs(root: Path) -> list[str]:
    """The quick evaluations of ``pssr train-pssr`` (``results/*/pssr-train*.json``, GPU runs included)."""
    rows = [
        "| dataset | variant | classifier clean | PSSR clean | PGD on classifier, then purified (paper protocol) | adaptive worst (BPDA / mask-constant full gradient) | eps | n (adaptive n) | command |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = Path(root) / "results"
    gpu = sorted(results.glob("*/gpu/pssr*.json"))  # runs made on a lent GPU
    for path in sorted(results.glob("*/pssr-train*.json")) + gpu:
        d = json.loads(path.read_text())
        t = d.get("test")
        if not t:
            continue
        cmd = pssr_command(d, root)
        suffix = f"GPU {path.stem}" if path in gpu else path.stem.removeprefix("pssr-train").lstrip("-")
        if "--set pssr." in cmd:  # trained with settings the config no longer has (spelled out in cmd)
            variant = suffix or "earlier config"
        else:
            variant = f"{suffix} (config default)" if suffix else "config default"
        # clean accuracy of the classifier the user started from (a fine-tuned one is PSSR's own)
        orig = d.get("validation", {}).get("val_original_classifier_clean_acc")
        clf = (
            pct(t["clf_clean_acc"])
            if not d.get("validation", {}).get("classifier_finetuned")
            else f"{pct(t['clf_clean_acc'])} (fine-tuned; original {pct(orig)} on validation)"
        )
        rows.append(
            f"| {d['dataset']} | {variant} | {clf} | {pct(t['pssr_clean_acc'])} | {pct(t['pssr_graybox_pgd_acc'])} | "
            f"{pct(t.get('pssr_adaptive_worst_acc'))} | {t['eps']} | {t['n']} ({t['adaptive_n']}) | `{cmd}` |"
        )
    return rows


def calibrations(root: Path) -> list[str]:
    """``pssr calibrate`` runs (results/<dataset>/calibrated/*.json): the ratio chosen on validation,
    then the test split."""
    rows = [
        "| dataset | checkpoint | validation (n): ratio -> clean / gray-box | trained -> chosen ratio | "
        "test n | classifier clean | PSSR clean | gray-box PGD | adaptive worst (n) | command |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted((Path(root) / "results").glob("*/calibrated/*.json")):
        d = json.loads(p.read_text())
        c, t = d["calibration"], d.get("test")
        val = "; ".join(
            f"{r['ratio']:g}: {100 * r['clean_acc']:.1f} / {100 * r['graybox_acc']:.1f}" for r in c["rows"]
        )
        val = f"({c['n']}, classifier {100 * c['classifier_clean_acc']:.1f}) {val}"
        test = (
            f"{t['n']} | {pct(t['clf_clean_acc'])} | {pct(t['pssr_clean_acc'])} | {pct(t['pssr_graybox_pgd_acc'])} | "
            f"{pct(t.get('pssr_adaptive_worst_acc'))} ({t['adaptive_n']})"
            if t
            else "— | — | — | — | —"
        )
        rows.append(
            f"| [{d['dataset']}]({p.relative_to(root)}) | `{d['checkpoint']}` | {val} | {c['trained_ratio']:g} -> "
            f"**{c['chosen']:g}**{'' if c['constraint_met'] else ' (bound not met)'} | {test} | `{d['command']}` |"
        )
    return rows
