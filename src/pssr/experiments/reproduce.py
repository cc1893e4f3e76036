"""Reproduction presets: classifier -> baselines -> PSSR (+ ablations) -> full evaluation -> report.

``pssr reproduce --preset NAME`` (and :func:`reproduce`) chains the library's resumable steps:

1. the undefended classifier (``configs/NAME.toml``, table ``[classifier]``);
2. adversarial-training baselines, PGD-AT and TRADES (table ``[adv_train]``, fine-tuned from the
   classifier), and the input-transformation baselines (JPEG, bit depth, median, TV minimization)
   wrapped around the classifier;
3. PSSR (``configs/pssr-NAME.toml``) and its ablations: surgery only, regeneration only, without
   adversarial R-drop, random mask; with ``calibrate`` (``--calibrate 0,0.05,0.1``) also PSSR with
   its inference removal ratio chosen on its validation split (``pssr-calibrated``,
   :mod:`pssr.train.calibrate`);
4. the evaluation: an L-inf run with the paper's protocol (attacks made on the classifier, then
   purified) and the adaptive attacks on each whole defense, and an L2 run of the paper's
   minimum-norm attacks (CW, DeepFool, DDN), over the same examples;
5. ``results/NAME/``: ``report.json`` (the evaluations and every training summary), ``report.md``
   rendered from it, and the plots.

Every step writes atomic checkpoints and skips or resumes what an earlier, interrupted run left,
so rerunning the same command continues where it stopped. ``quick=True`` shrinks epochs and
example counts for a smoke run (its numbers are not results). ``report_only=True``
(``--report-only``) trains and computes nothing and writes the report of what is saved so far,
marked partial while the evaluation is unfinished.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pssr.config import apply_overrides, check_overrides, load_toml
from pssr.experiments.preset_report import render_preset_markdown
from pssr.experiments.presets import (
    ABLATIONS,
    CONFIG_DIR,
    FULL_SUITE,
    INPUT_TRANSFORMS,
    PRESETS,
    Preset,
    is_full_suite,
)
from pssr.utils import atomic_write_json, atomic_write_text, run_metadata

log = logging.getLogger(__name__)


def _config(file: str, config_dir: Path) -> dict[str, Any]:
    path = config_dir / file
    if not path.is_file():
        raise FileNotFoundError(f"preset config {path} not found (configs/ of a pssr checkout)")
    return load_toml(path)


def _adv_defaults(mapping: dict[str, Any], runs: Path) -> dict[str, Any]:
    """``[adv_train]`` of the config, fine-tuned from this run's classifier."""
    adv = dict(mapping.get("adv_train") or {})
    if not adv:
        raise ValueError(
            "the preset's config has no [adv_train] table for the adversarial-training baselines"
        )
    adv["model"] = adv.get("model") or mapping["classifier"]["model"]
    adv["init_checkpoint"] = str(runs / "classifier.pt")
    return {"data": mapping.get("data", {}), "adv_train": adv}


def _variants(p: Preset, ablations: bool) -> dict[str, Mapping[str, Any]]:
    """PSSR and the ablations a run trains (step 3), named as in the report -> their [pssr] changes."""
    variants: dict[str, Mapping[str, Any]] = {"pssr": {}}
    if ablations:
        variants.update({f"pssr-{k}": v for k, v in ABLATIONS.items() if k in p.ablations})
    return variants


def _check_only(
    only: tuple[str, ...],
    p: Preset,
    variants: Mapping[str, Any],
    baselines: bool,
    input_transforms: tuple[str, ...],
    calibrated: bool,
) -> None:
    """``only``'s names checked before any training: an unknown name would otherwise fail hours later."""
    if not only:
        return
    names = [
        "none",
        *((*p.adv_methods, *input_transforms) if baselines else ()),
        *variants,
        *(("pssr-calibrated",) if calibrated else ()),
    ]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise ValueError(f"only: {', '.join(unknown)} not among this run's models ({', '.join(names)})")


def reproduce(
    preset: str,
    *,
    runs_dir: str | Path | None = None,
    results_dir: str | Path | None = None,
    quick: bool = False,
    ablations: bool = True,
    baselines: bool = True,
    eval_n: int | None = None,
    overrides: tuple[str, ...] = (),
    config_dir: str | Path | None = None,
    attacks: Mapping[str, str] | None = None,
    input_transforms: tuple[str, ...] = INPUT_TRANSFORMS,
    progress: bool = True,
    command: str | None = None,
    device: str | None = "auto",
    calibrate: tuple[float, ...] = (),
    report_only: bool = False,
    only: tuple[str, ...] = (),
    full_split_clean: bool | None = None,
) -> dict[str, Any]:
    """Run preset ``preset`` end to end (resumable); return the combined report dict.

    ``device`` is where the evaluation runs ("auto": CUDA when available); training runs where the
    configs' ``device`` says (also "auto" by default). The evaluation's resumable state does not
    depend on it: an evaluation begun on a CPU can be finished on a GPU and the other way round.

    ``attacks`` maps a norm to the harness's attack list for it (default: :data:`FULL_SUITE`,
    ``{"linf": "paper,adaptive", "l2": "paper"}``; the report's ``"complete"`` is relative to the
    lists run, ``"full_suite"`` says whether they are the default); ``overrides`` are ``section.key=value`` strings applied
    to both config files; ``input_transforms`` picks the input-transformation baselines (all four
    by default, quick runs included: TV minimization runs batched in torch). ``calibrate``: candidate
    removal ratios; when given, the PSSR with the ratio its validation split prefers is evaluated too,
    as ``pssr-calibrated`` (same weights as ``pssr``).

    ``report_only``: train and compute nothing; write ``results/NAME/`` from what the runs folder
    holds (the trained models and the evaluations' saved state), e.g. while a long evaluation is
    unfinished or was cut off: a model not trained yet is an error, pending evaluation units are
    listed and leave their cells empty (see :func:`pssr.evaluation.evaluate`, ``compute=False``).
    The combined report says ``"complete": false`` until everything is done.

    ``only``: evaluate these models alone (names as in the report: ``none``, ``pgd-at``, ``jpeg``,
    ``pssr``, ``pssr-random-mask``, ``pssr-calibrated``, ...); the others' rows come from the saved
    state, pending where nothing is saved (e.g. a CPU session finishing the PSSR rows of an
    evaluation a GPU began, while the slow TV-minimization units wait). Training is unchanged:
    every model the preset needs is trained if it is missing.

    ``full_split_clean`` (default: on, off in ``quick`` runs): also measure each model's clean
    accuracy on the whole test split (one forward per image, saved in ``runs/clean-full-split.json``),
    reported beside the attacked subset's (see :mod:`pssr.experiments.full_split`).
    """
    from pssr import distributed as D
    from pssr.defense.baselines import create_baseline
    from pssr.defense.pssr import PSSR
    from pssr.evaluation.harness import evaluate
    from pssr.experiments import adversarial, classifier, pssr_train
    from pssr.experiments.data import DataConfig, load_data
    from pssr.train.classifier import load_classifier

    p = PRESETS.create(preset)
    if only and report_only:
        raise ValueError("only= and report_only=True contradict each other: report_only computes nothing")
    variants = _variants(p, ablations)
    _check_only(only, p, variants, baselines, input_transforms, bool(calibrate))
    cdir = Path(config_dir) if config_dir else CONFIG_DIR
    tag = f"{p.name}-quick" if quick else p.name
    runs = Path(runs_dir) if runs_dir else Path("runs") / tag
    out = Path(results_dir) if results_dir else Path("results") / tag
    check_overrides(overrides)  # an unknown table or key is an error naming the closest one, not ignored
    extra = (*(p.quick if quick else ()), *overrides)
    t0 = time.perf_counter()
    steps: dict[str, Any] = {}

    def cfg(file: str, *more: str) -> dict[str, Any]:
        m = _config(file, cdir)
        return apply_overrides(
            m, [o for o in (*extra, *more) if o.split(".", 1)[0] in m or o.startswith("run.")]
        )

    # 1. classifier
    base = cfg(p.config)
    log.info("[%s] 1/4 classifier", tag)

    def train(what: str, ckpt: Path, epochs: Any, fn: Any, *a: Any) -> dict[str, Any]:
        if not report_only:
            return fn(*a, progress=progress, command=command)
        return _finished_summary(what, ckpt, epochs)

    steps["classifier"] = train(
        "classifier",
        runs / "classifier.pt",
        base["classifier"].get("epochs"),
        classifier.run_from_config,
        base,
        runs,
    )
    clf = load_classifier(runs / "classifier.pt")
    from pssr.config import build

    data = load_data(build(DataConfig, base.get("data"), prefix="data."))
    models: dict[str, Any] = {"none": clf}

    # 2. baselines
    if baselines:
        for method in p.adv_methods:
            log.info("[%s] 2/4 adversarial training: %s", tag, method)
            m = apply_overrides(_adv_defaults(base, runs), [f'adv_train.method="{method}"'])
            steps[method] = train(
                method,
                runs / f"{method}.pt",
                m["adv_train"].get("epochs"),
                adversarial.run_from_config,
                m,
                runs,
            )
            models[method] = load_classifier(runs / f"{method}.pt")
        for name in input_transforms:
            models[name] = create_baseline(name, clf)

    # 3. PSSR and its ablations
    for name, changes in variants.items():
        log.info("[%s] 3/4 %s", tag, name)
        pm = cfg(p.pssr_config, *[f"pssr.{k}={_toml(v)}" for k, v in changes.items()])
        run = dict(pm.get("run") or {})
        run.update(classifier=str(runs / "classifier.pt"), out=str(runs / name), results="")
        pm["run"] = run
        steps[name] = train(
            name,
            runs / name / "pssr.pt",
            (pm.get("pssr") or {}).get("epochs"),
            pssr_train.run_from_config,
            pm,
        )
        models[name] = PSSR.load(runs / name / "pssr.pt")
    if calibrate:
        log.info("[%s] 3/4 pssr-calibrated (ratios %s)", tag, ", ".join(f"{r:g}" for r in calibrate))
        steps["pssr-calibrated"], models["pssr-calibrated"] = _calibrated(
            runs, data, tuple(calibrate), report_only
        )

    # 4. evaluation: L-inf (paper + adaptive) and L2 (paper's minimum-norm attacks), same examples
    n = eval_n if eval_n is not None else (p.quick_eval_n if quick else p.eval_n)
    n_eval = None if n == 0 else n
    evaluations = {}
    attack_lists = dict(attacks) if attacks is not None else dict(FULL_SUITE)
    for norm, names in attack_lists.items():
        log.info("[%s] 4/4 evaluation (%s, %s)", tag, norm, names)
        state = runs / f"eval-{norm}"
        if report_only and not (state / "state.json").is_file():
            log.info("[%s] no %s evaluation saved in %s yet: left out of the report", tag, norm, state)
            continue
        rep = evaluate(
            models,
            data.test,
            attacks=names,
            eps=p.eps if norm == "linf" else None,
            norm=norm,
            n=n_eval,
            seed=0,
            state_dir=state,
            progress=progress,
            dataset=data.name,
            device=device,
            compute=set(only) if only else not report_only,
        )
        if D.current().is_main:  # under torchrun every rank holds the report; rank 0 writes it
            rep.save(out / norm)
        evaluations[norm] = rep.to_dict()

    full_clean: dict[str, Any] = {}
    cache = runs / "clean-full-split.json"
    if (
        (not quick if full_split_clean is None else full_split_clean)
        and n_eval is not None
        and (not report_only or cache.is_file())
    ):
        from pssr.experiments.full_split import clean_accuracy

        log.info("[%s] clean accuracy on the whole test split (n=%d)", tag, len(data.test))
        full_clean = clean_accuracy(
            models, data.test, cache=cache, compute=set(only) if only else not report_only
        )

    combined = {
        "preset": p.name,
        "quick": quick,
        "command": command,
        "dataset": data.name,
        "eval_n": n,
        "training": {k: _strip_history(v) for k, v in steps.items()},
        "evaluations": evaluations,
        "clean_full_split": full_clean,
        "report_only": report_only,
        "only": list(only),
        "attacks": attack_lists,
        "full_suite": is_full_suite(attack_lists),
        # relative to ``attacks``: a run of other lists than the full suite says so in "full_suite"
        "complete": set(evaluations) == set(attack_lists)
        and all(e["config"].get("complete", True) for e in evaluations.values()),
        "wall_seconds_this_invocation": time.perf_counter() - t0,
        "metadata": run_metadata(),
    }
    if D.current().is_main:
        atomic_write_json(out / "report.json", combined)
        atomic_write_text(out / "report.md", render_preset_markdown(combined))
        log.info("[%s] done: %s", tag, out)
    return combined


def _finished_summary(what: str, ckpt: Path, epochs: Any) -> dict[str, Any]:
    """Report-only: the training summary of a finished run (its checkpoint at its last epoch)."""
    from pssr.utils import load_checkpoint

    if not ckpt.is_file():
        raise ValueError(
            f"report only: {what} is not trained yet ({ckpt} is missing); run the preset's command "
            "without --report-only to train it"
        )
    ck = load_checkpoint(ckpt)
    done = ck.get("epoch", ck.get("epochs_done"))
    if isinstance(epochs, int) and isinstance(done, int) and done < epochs:
        raise ValueError(
            f"report only: {what} is trained {done} of {epochs} epochs ({ckpt}); run the preset's "
            "command without --report-only to finish it"
        )
    summary_file = ckpt.with_suffix(".json") if ckpt.name != "pssr.pt" else ckpt.with_name("pssr-train.json")
    try:
        return json.loads(summary_file.read_text())
    except (OSError, ValueError):
        return {"checkpoint": str(ckpt), "note": f"no readable training summary at {summary_file}"}


def _calibrated(
    runs: Path, data: Any, ratios: tuple[float, ...], report_only: bool = False
) -> tuple[dict[str, Any], Any]:
    """PSSR of ``runs/pssr`` with the removal ratio chosen on its validation split: computed once per
    checkpoint and candidate list (``runs/pssr-calibrated.json``), reused afterwards."""
    from pssr.data.download import file_digest
    from pssr.defense.pssr import PSSR
    from pssr.train.calibrate import calibrate_ratio, with_ratio

    src = runs / "pssr" / "pssr.pt"
    key = {"checkpoint_sha256": file_digest(src, "sha256"), "ratios": list(ratios)}
    path = runs / "pssr-calibrated.json"
    defense = PSSR.load(src)
    try:
        done = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        done = None
    if not (isinstance(done, dict) and done.get("key") == key):
        if report_only:
            raise ValueError(
                f"report only: PSSR's removal ratio is not calibrated yet for ratios {list(ratios)} "
                f"({path}); run the preset's command without --report-only"
            )
        done = {"key": key, "calibration": calibrate_ratio(defense, data, ratios)}
        atomic_write_json(path, done)
    cal = done["calibration"]
    defense = with_ratio(defense, cal["chosen"])
    defense.metrics["calibration"] = cal
    clean = next(r["clean_acc"] for r in cal["rows"] if r["ratio"] == cal["chosen"])
    summary = {
        "kind": "pssr-calibration",
        "chosen_ratio": cal["chosen"],
        "calibration": cal,
        "validation_clean_acc": clean,
    }
    return summary, defense


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def _strip_history(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Training summaries without their long per-epoch histories (kept in runs/)."""
    s = copy.deepcopy(dict(summary))
    s.pop("history", None)
    if isinstance(s.get("validation"), dict):
        hist = s["validation"].pop("history", None)
        if (
            hist
        ):  # PSSR: epochs and training time over all epochs (a resumed invocation may have trained none)
            s.setdefault("epochs", len(hist))
            s.setdefault("train_seconds", round(sum(h.get("seconds", 0.0) for h in hist), 1))
    return s
