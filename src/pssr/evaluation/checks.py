"""Sanity checks that make an evaluation distrust itself (gradient masking, randomness, budgets).

A defense can look robust because the attacks fail for the wrong reasons: its forward pass is
random (one gradient sample is noise; EOT is needed), its input gradient is zero or non-finite
(quantization, non-differentiable transforms, saturated softmax), or it is evaluated only in the
gray-box setting. Following the advice of Carlini et al., "On Evaluating Adversarial Robustness"
(arXiv 1902.06705) and Athalye et al., "Obfuscated Gradients Give a False Sense of Security"
(ICML 2018), and in the spirit of the checks shipped with AutoAttack (Croce & Hein, ICML 2020),
the harness runs these checks and writes every flag into the report:

Before the attacks, on ``CheckConfig.n`` examples:

``random_forward``        two forward passes on the same batch differ -> use EOT attacks.
``nonfinite_outputs``     the logits hold NaN or inf.
``zero_gradients``        more than ``zero_grad_fraction`` of the examples have an exactly zero input
                          gradient of the margin loss (max other logit - true logit); the margin loss
                          does not saturate like cross-entropy, so a zero here is the model's doing.
``nonfinite_gradients``   some input gradient holds NaN or inf.
``large_eps_not_broken``  an attack at a budget that reaches (almost) any image (``large_eps``: Linf
                          1.0, L2 the cube's diameter) leaves accuracy above ``large_eps_max_accuracy``:
                          the attack is not getting useful gradients (obfuscation), or is too weak.

After the attacks, from the per-example records:

``black_box_beats_white_box``  a black-box control -- a gradient-free attack (Square) or a transfer
                          attack from a surrogate -- breaks more than ``black_box_margin`` of the
                          examples that every white-box gradient attack of the same threat model
                          left robust -> the target's gradients mislead the attacks.
``adaptive_much_lower``   the adaptive worst case is more than ``adaptive_gap`` below the paper-protocol
                          worst case -> the gray-box numbers overstate the defense.
``budget_violation``      some adversarial example lies outside its eps-ball (an attack bug).

Each flag is a dict ``{"name", "message", "eps"?}``; the check results themselves (numbers) sit in
the report beside the flags.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pssr.attacks import create_attack, margin_loss
from pssr.evaluation.report import worst_case_table
from pssr.utils import eval_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds of the checks (fractions are shares of the examples checked)."""

    n: int = 64  # examples used by the pre-attack checks (the first n of the evaluated set)
    random_tol: float = 1e-4  # relative logit change between two passes that counts as randomness
    zero_grad_fraction: float = 0.1  # flag when more than this share has an exactly zero gradient
    large_eps: float | None = None  # None: Linf 1.0, L2 sqrt(C*H*W) (the whole image cube)
    large_eps_attacks: tuple[str, ...] = (
        "pgd",
        "pgd-bpda",
    )  # registry names; bpda only for models with .bpda
    # Extra attack arguments. No random start: at a budget that reaches any image a random start
    # alone already misclassifies most inputs, which would hide a blind gradient.
    large_eps_kwargs: dict[str, Any] = field(default_factory=lambda: {"random_start": False})
    large_eps_max_accuracy: float = 0.1  # accuracy at large_eps above this is flagged
    black_box_margin: float = 0.02  # share of examples only a black-box control breaks
    adaptive_gap: float = 0.1  # paper worst case - adaptive worst case above this is flagged
    budget_tol: float = 1e-5  # slack on ||x_adv - x|| <= eps (float rounding)

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"CheckConfig.n must be a positive int, got {self.n!r}")
        for name in ("zero_grad_fraction", "large_eps_max_accuracy", "black_box_margin", "adaptive_gap"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"CheckConfig.{name} must be in [0, 1], got {v!r}")
        if self.large_eps is not None and not self.large_eps > 0:
            raise ValueError(f"CheckConfig.large_eps must be > 0 or None, got {self.large_eps!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def flag(name: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "message": message, **extra}


def check_randomness(model: nn.Module, x: Tensor, tol: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Two forward passes on the same batch; flags ``random_forward`` / ``nonfinite_outputs``."""
    with torch.no_grad():
        a, b = model(x), model(x)
    finite = bool(torch.isfinite(a).all() and torch.isfinite(b).all())
    diff = float((a - b).abs().max()) if finite else math.inf
    scale = float(a.abs().max()) if finite else math.inf
    random = finite and diff > tol * (1.0 + scale)
    flags = []
    if not finite:
        flags.append(flag("nonfinite_outputs", "the model's logits contain NaN or inf on clean inputs"))
    if random:
        flags.append(
            flag(
                "random_forward",
                f"two forward passes differ (max logit change {diff:.3g}): the defense is randomized; "
                "gradient attacks need EOT (e.g. pgd-bpda-eot) and one-pass accuracies are noisy",
            )
        )
    return {"max_logit_diff": diff, "random": random, "finite": finite}, flags


def check_gradients(
    model: nn.Module, x: Tensor, y: Tensor, zero_fraction: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Input gradients of the margin and cross-entropy losses; flags zero / non-finite gradients."""
    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(xr)
        margin = margin_loss(logits, y).sum()  # (N,): max other logit - true logit
        (g_margin,) = torch.autograd.grad(margin, xr, retain_graph=True, allow_unused=True)
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="sum")
        (g_ce,) = torch.autograd.grad(ce, xr, allow_unused=True)
    if g_margin is None:  # the output does not depend on x in the graph at all
        g_margin = torch.zeros_like(xr)
    if g_ce is None:
        g_ce = torch.zeros_like(xr)
    per = g_margin.detach().flatten(1)
    nonfinite = ~torch.isfinite(per).all(1)
    zero = (per == 0).all(1)
    ce_zero = (g_ce.detach().flatten(1) == 0).all(1)
    norms = per[~nonfinite].norm(dim=1)
    res = {
        "n": int(x.shape[0]),
        "zero_fraction": float(zero.float().mean()),
        "nonfinite_fraction": float(nonfinite.float().mean()),
        "ce_zero_fraction": float(ce_zero.float().mean()),
        "median_grad_l2": float(norms.median()) if norms.numel() else math.nan,
    }
    flags = []
    if res["zero_fraction"] > zero_fraction:
        flags.append(
            flag(
                "zero_gradients",
                f"{res['zero_fraction']:.0%} of the examples have an exactly zero input gradient "
                "(margin loss): gradient attacks through this model are blind; use BPDA or a "
                "gradient-free attack (Square)",
            )
        )
    if res["nonfinite_fraction"] > 0:
        flags.append(
            flag(
                "nonfinite_gradients",
                f"{res['nonfinite_fraction']:.0%} of the examples have NaN/inf input gradients",
            )
        )
    return res, flags


def default_large_eps(norm: str, image_shape: tuple[int, ...]) -> float:
    """A budget that reaches every image in [0, 1]^d: Linf 1, L2 sqrt(d)."""
    return 1.0 if norm == "linf" else math.sqrt(math.prod(image_shape))


def check_large_eps(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, seed: int, config: CheckConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Accuracy under each ``config.large_eps_attacks`` attack at a budget that reaches any image."""
    from pssr.attacks.base import ATTACKS

    create = create_attack
    eps = config.large_eps if config.large_eps is not None else default_large_eps(norm, tuple(x.shape[1:]))
    res: dict[str, Any] = {"eps": eps, "accuracy": {}, "skipped": {}}
    flags = []
    for name in config.large_eps_attacks:
        if "bpda" in name and not callable(getattr(model, "bpda", None)):
            res["skipped"][name] = "model has no bpda() view (same as the plain attack)"
            continue
        if name not in ATTACKS:
            res["skipped"][name] = "attack not registered"
            log.warning("large-eps check: attack %r is not registered; skipped", name)
            continue
        atk = create(name, model, eps=eps, norm=norm, seed=seed, **config.large_eps_kwargs)
        x_adv = atk(x, y)
        with torch.no_grad():
            acc = float((model(x_adv).argmax(1) == y).float().mean())
        res["accuracy"][name] = acc
        if acc > config.large_eps_max_accuracy:
            flags.append(
                flag(
                    "large_eps_not_broken",
                    f"{name} at eps={eps:.3g} ({norm}), a budget that reaches any image, leaves "
                    f"accuracy {acc:.1%}: the attack gets no useful gradient (obfuscation) or is too weak",
                    attack=name,
                )
            )
    return res, flags


def check_inert(
    model: nn.Module, x: Tensor, y: Tensor, norm: str, eps: float | None, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Does a purification defense change anything? PGD-10 made on its classifier (gray-box, at
    ``eps``): flags ``inert_defense`` when the purifier returns the attacked images unchanged, or when
    the defense predicts exactly what the bare classifier predicts on every attacked image that fools
    the classifier (a trained defense that removes nothing, e.g. a calibrated ratio of 0 with
    ``restore_scope="mask"``). Models without ``purify`` and ``classifier`` are not checked."""
    purify, clf = getattr(model, "purify", None), getattr(model, "classifier", None)
    if eps is None or not callable(purify) or not isinstance(clf, nn.Module):
        return {}, []
    x_adv = create_attack("pgd", clf, eps=eps, norm=norm, steps=10, seed=seed)(x, y)
    with torch.no_grad():
        pred_clf, pred_def = clf(x_adv).argmax(1), model(x_adv).argmax(1)
        changed = float((purify(x_adv) - x_adv).abs().amax())
    fooled = pred_clf != y
    n_fooled = int(fooled.sum())
    same = int((pred_def[fooled] == pred_clf[fooled]).sum())
    res = {"eps": eps, "max_pixel_change": changed, "classifier_fooled": n_fooled, "same_prediction": same}
    flags = []
    if changed < 1e-6 or (n_fooled >= 5 and same == n_fooled):
        flags.append(
            flag(
                "inert_defense",
                "the defense changes nothing: "
                + ("purify returns the attacked images unchanged" if changed < 1e-6 else "")
                + ("; " if changed < 1e-6 and n_fooled >= 5 and same == n_fooled else "")
                + (
                    f"it predicts what the bare classifier predicts on all {n_fooled} attacked images that fool it"
                    if n_fooled >= 5 and same == n_fooled
                    else ""
                )
                + " (a calibrated ratio of 0 with restore_scope='mask'? an untrained regenerator?)",
                eps=eps,
            )
        )
    return res, flags


def run_pre_checks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: str,
    seed: int,
    config: CheckConfig,
    eps: float | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All pre-attack checks on (x, y) (already on the model's device); restores the model's mode.
    ``eps``: the evaluation's budget, for :func:`check_inert` (skipped when None)."""
    results: dict[str, Any] = {}
    flags: list[dict[str, Any]] = []
    with eval_mode(model):
        results["randomness"], f = check_randomness(model, x, config.random_tol)
        flags += f
        results["gradients"], f = check_gradients(model, x, y, config.zero_grad_fraction)
        flags += f
        results["large_eps"], f = check_large_eps(model, x, y, norm, seed, config)
        flags += f
        inert, f = check_inert(model, x, y, norm, eps, seed)
        if inert:
            results["inert"] = inert
        flags += f
    return results, flags


# ----------------------------------------------------------------------------------------------
# Post-attack checks, computed from the per-example records.
# ----------------------------------------------------------------------------------------------


def check_black_box(
    records: list[dict[str, Any]], black_box: dict[tuple[str, str], bool], margin: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per (threat model, eps): examples broken only by black-box controls (Square, transfer).

    ``records``: one model's attack records; ``black_box[(threat_model, attack)]`` says which
    attacks are black-box controls.
    """
    # (threat, eps) -> index -> {"grad_robust": bool, "free_broken": bool}
    survive_grad: dict[tuple[str, float], dict[int, bool]] = defaultdict(dict)
    broken_free: dict[tuple[str, float], dict[int, bool]] = defaultdict(dict)
    for r in records:
        k = (r["threat_model"], r["eps"])
        if black_box.get((r["threat_model"], r["attack"]), False):
            broken_free[k][r["index"]] = broken_free[k].get(r["index"], False) or not r["correct"]
        else:
            survive_grad[k][r["index"]] = survive_grad[k].get(r["index"], True) and r["correct"]
    res: dict[str, Any] = {}
    flags = []
    for k in sorted(set(survive_grad) & set(broken_free), key=str):
        threat, eps = k
        idx = survive_grad[k]
        extra = sum(1 for i, ok in idx.items() if ok and broken_free[k].get(i, False))
        frac = extra / max(1, len(idx))
        res[f"{threat}@{eps:g}"] = {"only_black_box_broken": extra, "fraction": frac, "n": len(idx)}
        if frac > margin:
            flags.append(
                flag(
                    "black_box_beats_white_box",
                    f"[{threat}, eps={eps:g}] black-box attacks (gradient-free / transfer) broke {extra} "
                    f"example(s) ({frac:.1%}) that every white-box gradient attack left robust: the "
                    "gradients mislead the attacks",
                    eps=eps,
                    threat_model=threat,
                )
            )
    return res, flags


def check_adaptive_gap(
    worst: dict[tuple[str, float], float], gap: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``worst[(threat_model, eps)]``: worst-case accuracy; flags a large paper-vs-adaptive gap."""
    res: dict[str, Any] = {}
    flags = []
    for (threat, eps), acc_paper in sorted(worst.items(), key=str):
        if threat != "paper" or ("adaptive", eps) not in worst:
            continue
        diff = acc_paper - worst[("adaptive", eps)]
        res[f"{eps:g}"] = {"paper": acc_paper, "adaptive": worst[("adaptive", eps)], "gap": diff}
        if diff > gap:
            flags.append(
                flag(
                    "adaptive_much_lower",
                    f"[eps={eps:g}] adaptive attacks leave {worst[('adaptive', eps)]:.1%} vs {acc_paper:.1%} "
                    "under the paper's gray-box protocol: the paper protocol overstates robustness",
                    eps=eps,
                )
            )
    return res, flags


# A model whose clean predictions are mostly one class that the labels are not: its "robust" accuracy
# is that class's share of the examples, whatever the attack. A module constant, not a CheckConfig
# field: the CheckConfig is part of every saved evaluation unit's fingerprint.
COLLAPSE_SHARE = 0.9
COLLAPSE_MIN_N = 20


def check_collapse(clean: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Flags a model that predicts (nearly) one class for every clean example: a degenerate model
    (a purifier that outputs one image, say) scores that class's frequency under any attack."""
    n = len(clean)
    if n < COLLAPSE_MIN_N:
        return {}, []
    preds: dict[int, int] = defaultdict(int)
    labels: dict[int, int] = defaultdict(int)
    for r in clean:
        preds[int(r["clean_pred"])] += 1
        labels[int(r["label"])] += 1
    top, k = max(preds.items(), key=lambda kv: kv[1])
    res = {"top_prediction": top, "top_prediction_share": k / n, "label_share": labels.get(top, 0) / n}
    flags = []
    if k / n >= COLLAPSE_SHARE and labels.get(top, 0) / n < COLLAPSE_SHARE:
        flags.append(
            flag(
                "collapsed_predictions",
                f"the model predicts class {top} for {k / n:.0%} of the clean examples (its share of the "
                f"labels: {labels.get(top, 0) / n:.0%}): its accuracies under attack are those of a constant "
                "classifier, not robustness",
            )
        )
    return res, flags


def check_budget(records: list[dict[str, Any]], tol: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every adversarial example must lie inside its eps-ball."""
    bad = [r for r in records if r["attacked"] and r["pert_norm"] > r["eps"] * (1 + tol) + tol]
    res = {"violations": len(bad), "max_excess": max((r["pert_norm"] - r["eps"] for r in bad), default=0.0)}
    flags = []
    if bad:
        names = sorted({r["attack"] for r in bad})
        flags.append(
            flag(
                "budget_violation",
                f"{len(bad)} adversarial example(s) lie outside their eps-ball ({', '.join(names)}); "
                "those attacks are buggy and their numbers are not comparable",
            )
        )
    return res, flags


def run_post_checks(
    name: str,
    records: list[dict[str, Any]],
    unit_meta: dict[tuple[str, str, str], dict[str, Any]],
    results: list[dict[str, Any]],
    cfg: CheckConfig | None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All post-attack checks of model ``name``, from its records, the units' metadata and the
    summarized ``results`` (black-box controls, adaptive gap, budget, collapse)."""
    if cfg is None:
        return {}, []
    mine = [r for r in records if r["model"] == name and r["attack"] != "clean"]
    gf = {(t, a): bool(meta.get("black_box")) for (m, t, a), meta in unit_meta.items() if m == name}
    out: dict[str, Any] = {}
    flags: list[dict[str, Any]] = []
    out["black_box"], f = check_black_box(mine, gf, cfg.black_box_margin)
    flags += f
    worst = worst_case_table(results, name)
    out["adaptive_gap"], f = check_adaptive_gap(worst, cfg.adaptive_gap)
    flags += f
    out["budget"], f = check_budget(mine, cfg.budget_tol)
    flags += f
    out["collapse"], f = check_collapse([r for r in records if r["model"] == name and r["attack"] == "clean"])
    flags += f
    return out, flags


__all__ = [
    "CheckConfig",
    "check_adaptive_gap",
    "check_budget",
    "check_black_box",
    "check_collapse",
    "check_gradients",
    "check_large_eps",
    "check_randomness",
    "default_large_eps",
    "run_post_checks",
    "run_pre_checks",
]
