"""How long an evaluation will take, before it starts: attack cost factors times measured pass times.

An attack's cost is counted in *passes* per attacked example: gradient passes (a forward and a
backward pass through the model or the view it takes gradients from) and forward-only passes
(gradient-free queries, success checks). :data:`COSTS` holds one cost function per registered
attack, reading the attack's resolved hyper-parameters (its defaults overridden by the spec's
kwargs): iterations x restarts x EOT samples x target classes, queries for Square. The model's
pass times are *measured* on one batch of the evaluation's batch size (with its per-call overhead,
which dominates on tiny models), and the estimate is::

    seconds = sum over models, attacks, eps, batches of
              grad_passes x t_grad(batch) + forward_passes x t_forward(batch)

What the count assumes (so the number is a planning figure, not a promise):

* every example is attacked for the attack's whole budget: early stopping, AutoAttack's cascade
  (each sub-attack runs only on the points still robust) and restarts run only on surviving
  points make real runs *shorter* -- much shorter on a defense that breaks early, about as long on
  a robust model. On the other side, per-call overhead that is not a model pass (AutoAttack's own
  checks and bookkeeping) is not counted, which matters on tiny models. On the 8x8 digits the
  estimate was 0.7 to 3.8 times the measured time per model (docs/attack-suites.md).
* paper-protocol attacks take their passes on the gray-box source (a purifier's classifier), like
  the harness; transfer attacks on the surrogate; BPDA and EOT views cost what the model costs per
  pass (a BPDA view skips the purifier's backward pass, so this errs high);
* attacks the harness skips or copies are not counted (EOT attacks on a deterministic model,
  transfer without a surrogate, AutoAttack through the BPDA view of a model without one when the
  paper column ran the same AutoAttack); the sanity checks are not counted.

Example::

    est = estimate_evaluation({"none": clf, "pssr": defense}, "paper,adaptive", n=50, x=data.test.x[:8],
                              dataset="digits")
    print(est.text())          # "estimated ~33 min for 50 images x 2 models"
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr.attacks.base import ATTACKS
from pssr.attacks.sets import parse_attacks
from pssr.attacks.spec import AttackSpec
from pssr.registry import Registry
from pssr.utils import eval_mode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passes:
    """Passes per attacked example: ``grad`` forward+backward passes, ``forward`` forward-only passes."""

    grad: float
    forward: float = 0.0

    def __add__(self, other: Passes) -> Passes:
        return Passes(self.grad + other.grad, self.forward + other.forward)


# attack name -> cost(resolved kwargs, number of classes) -> passes per attacked example
COSTS: Registry[Passes] = Registry("attack cost")


def _i(kw: Mapping[str, Any], key: str, default: int = 1) -> int:
    v = kw.get(key, default)
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _iterative(kw: Mapping[str, Any], k: int) -> Passes:
    return Passes(_i(kw, "steps") * _i(kw, "restarts"))


for _name in ("pgd", "pgd-full", "pgd-bpda", "bim", "mifgsm", "cw-linf", "ddn"):
    COSTS.register(_name)(_iterative)


@COSTS.register("fgsm")
def _fgsm(kw: Mapping[str, Any], k: int) -> Passes:
    return Passes(1)


@COSTS.register("pgd-bpda-eot")
def _pgd_eot(kw: Mapping[str, Any], k: int) -> Passes:
    return Passes(_i(kw, "steps") * _i(kw, "restarts") * _i(kw, "eot_samples", 10))


@COSTS.register("cw")
def _cw(kw: Mapping[str, Any], k: int) -> Passes:
    return Passes(_i(kw, "steps") * _i(kw, "binary_search_steps"))


@COSTS.register("deepfool")
def _deepfool(kw: Mapping[str, Any], k: int) -> Passes:
    # one gradient per candidate class per step
    return Passes(_i(kw, "steps", 50) * min(_i(kw, "candidates", 10), k))


@COSTS.register("square")
def _square(kw: Mapping[str, Any], k: int) -> Passes:
    return Passes(0, _i(kw, "n_queries", 1000))


@COSTS.register("transfer")
def _transfer(kw: Mapping[str, Any], k: int) -> Passes:
    # crafted on the surrogate (see estimate_evaluation), then one forward pass on the model
    inner = kw.get("attack", "pgd")
    akw = {**_defaults(inner), **dict(kw.get("attack_kwargs") or {})}
    return attack_passes(inner, akw, k)


# AutoAttack (pyautoattack): per sub-attack, passes per example for n_iter iterations and T target
# classes (T = min(9, K - 1)); the package's restart counts per version.
_AA_RESTARTS = {
    "standard": {"apgd-ce": 1},
    "plus": {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5},
    "rand": {"apgd-ce": 1, "apgd-dlr": 1},
    "custom": {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5},  # the package's constructor defaults
}
_AA_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


def _aa_sub(sub: str, version: str, n_iter: int, eot: int, queries: int, k: int) -> Passes:
    targets = max(1, min(9, k - 1))
    restarts = _AA_RESTARTS[version].get(sub, 1)
    if sub in ("apgd-ce", "apgd-dlr"):
        return Passes(n_iter * restarts * eot)
    if sub == "apgd-t":
        return Passes(n_iter * targets * eot)
    if sub == "fab":  # untargeted FAB: the Jacobian of all K logits per step
        return Passes(n_iter * restarts * k, n_iter * restarts)
    if sub == "fab-t":  # one logit-difference gradient and one forward check per step and target
        return Passes(n_iter * targets, n_iter * targets)
    return Passes(0, queries)  # square


def _autoattack(kw: Mapping[str, Any], k: int, default_version: str = "standard") -> Passes:
    version = str(kw.get("version") or default_version)
    subs = tuple(kw.get("attacks") or ()) if version == "custom" else _AA_ATTACKS.get(version, ())
    if version not in _AA_RESTARTS:
        version = "custom"
    n_iter = _i(kw, "n_iter", 100)
    eot = _i(kw, "eot_iter", 20 if version == "rand" else 1)
    queries = _i(kw, "n_queries", 5000)
    total = Passes(0)
    for sub in subs:
        total = total + _aa_sub(sub, version, n_iter, eot, queries, k)
    return total


COSTS.register("autoattack")(_autoattack)
COSTS.register("autoattack-bpda")(_autoattack)


@COSTS.register("autoattack-rand")
def _autoattack_rand(kw: Mapping[str, Any], k: int) -> Passes:
    return _autoattack({**kw, "version": "rand"}, k)


def _defaults(name: str) -> dict[str, Any]:
    """The registered attack's keyword defaults (from its signature), {} when unknown."""
    if name not in ATTACKS:
        return {}
    try:
        params = inspect.signature(ATTACKS.get(name)).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def attack_passes(name: str, kwargs: Mapping[str, Any], num_classes: int) -> Passes:
    """Passes per attacked example of attack ``name`` with ``kwargs`` over its defaults.

    An attack without a cost function counts ``steps x restarts`` gradient passes (1 when it has
    neither), with a log message: add it to :data:`COSTS`.
    """
    kw = {**_defaults(name), **dict(kwargs)}
    if name in COSTS:
        return COSTS.get(name)(kw, num_classes)
    log.info("no cost model for attack %r: counting steps x restarts gradient passes", name)
    return _iterative(kw, num_classes)


@dataclass(frozen=True)
class PassTimes:
    """Measured seconds of one gradient pass and one forward pass on a batch of ``batch`` images."""

    grad: float
    forward: float
    batch: int

    def seconds(self, passes: Passes, n: int) -> float:
        """Seconds for ``passes`` on ``n`` examples, run in batches of ``self.batch``."""
        full, rest = divmod(n, self.batch)
        t = full * (passes.grad * self.grad + passes.forward * self.forward)
        if rest:  # a smaller last batch: scale linearly, but never below a tenth of a full batch's time
            f = max(rest / self.batch, 0.1)
            t += f * (passes.grad * self.grad + passes.forward * self.forward)
        return t


def measure_pass_times(model: nn.Module, x: Tensor, batch_size: int = 128, repeats: int = 3) -> PassTimes:
    """Time ``model``'s forward and forward+input-gradient passes on a batch of ``batch_size`` images.

    ``x`` (N, C, H, W) in [0, 1] gives the image shape and content (repeated up to ``batch_size``).
    Takes the median of ``repeats`` timings after one warm-up; restores the model's train/eval mode
    and the global RNG state (a randomized defense draws random numbers).
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] < 1:
        raise ValueError(f"x must be a (N, C, H, W) image batch with N >= 1, got {getattr(x, 'shape', x)!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    dev = next((p.device for p in model.parameters()), x.device)
    reps = math.ceil(batch_size / x.shape[0])
    xb = x.repeat(reps, 1, 1, 1)[:batch_size].to(dev)

    def grad_pass() -> None:
        xi = xb.clone().requires_grad_(True)
        out = model(xi)
        (g,) = torch.autograd.grad(F.cross_entropy(out, out.argmax(1)), xi, allow_unused=True)
        del g

    def fwd_pass() -> None:
        with torch.no_grad():
            model(xb)

    def timed(fn: Callable[[], None]) -> float:
        ts = []
        for i in range(repeats + 1):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i:  # the first call warms up
                ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2]

    with eval_mode(model), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        return PassTimes(grad=timed(grad_pass), forward=timed(fwd_pass), batch=batch_size)


@dataclass
class Estimate:
    """Estimated seconds of an evaluation, per model and per (model, threat model, attack)."""

    seconds: float
    n: int
    n_models: int
    per_model: dict[str, float] = field(default_factory=dict)
    per_attack: dict[tuple[str, str, str], float] = field(default_factory=dict)

    def text(self) -> str:
        """``"estimated ~33 min for 50 images x 4 models"``."""
        models = f"{self.n_models} model" + ("s" if self.n_models != 1 else "")
        return f"estimated ~{format_seconds(self.seconds)} for {self.n} images x {models}"


def format_seconds(s: float) -> str:
    """``42 s``, ``7 min``, ``2.5 h`` (two significant figures at most)."""
    if s < 90:
        return f"{max(1, round(s))} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    h = s / 3600
    return f"{h:.1f} h" if h < 10 else f"{round(h)} h"


def _num_classes(model: nn.Module, x: Tensor) -> int:
    dev = next((p.device for p in model.parameters()), x.device)
    with (
        torch.no_grad(),
        torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []),
        eval_mode(model),
    ):
        return int(model(x[:1].to(dev)).shape[1])


def _source(model: nn.Module) -> nn.Module:
    """The harness's default gray-box source: a purifier's classifier, else the model itself."""
    clf = getattr(model, "classifier", None)
    return clf if callable(getattr(model, "purify", None)) and isinstance(clf, nn.Module) else model


def _reused(spec: Any, specs: Sequence[Any], model: nn.Module, source: nn.Module) -> bool:
    """Whether the harness copies ``spec``'s records from its paper-protocol twin instead of running
    it: AutoAttack through the BPDA view of a model without one that is its own gray-box source."""
    return (
        spec.name == "autoattack-bpda"
        and spec.threat_model == "adaptive"
        and not callable(getattr(model, "bpda", None))
        and source is model
        and any(
            t.threat_model == "paper" and t.name == "autoattack" and t.kwargs == spec.kwargs for t in specs
        )
    )


def estimate_evaluation(
    models: Mapping[str, nn.Module] | nn.Module,
    attacks: str | Sequence[Any],
    n: int,
    x: Tensor,
    *,
    dataset: str | None = None,
    norm: str = "linf",
    n_eps: int = 1,
    batch_size: int = 128,
    gray_box_source: Mapping[str, nn.Module] | None = None,
    times: dict[tuple[int, int], PassTimes] | None = None,
) -> Estimate:
    """Estimate the seconds :func:`pssr.evaluation.evaluate` will take (see the module docstring).

    Args:
        models: ``{name: model}`` as given to ``evaluate`` (a bare module is named ``"model"``).
        attacks: what ``evaluate`` takes (``"paper,adaptive"``, ``"fast"``, names, dicts) or its
            parsed :class:`~pssr.attacks.spec.AttackSpec` list.
        n: examples to evaluate (each is assumed attacked, none misclassified clean).
        x: a few images (N, C, H, W) in [0, 1] of the evaluated data, for the pass timings.
        dataset, norm: as for ``evaluate`` (they pick the sets' hyper-parameters).
        n_eps: how many budgets each attack runs at.
        batch_size: the evaluation's batch size (pass times are measured at ``min(batch_size, n)``).
        gray_box_source: as for ``evaluate``.
        times: a cache of pass times keyed by ``(id(module), batch)``: reused, and filled in (so that
            estimating two attack lists on the same models times each model once).
    """
    if isinstance(models, nn.Module):
        models = {"model": models}
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty dict {name: nn.Module}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(n_eps, bool) or not isinstance(n_eps, int) or n_eps < 1:
        raise ValueError(f"n_eps must be a positive int, got {n_eps!r}")
    if (
        isinstance(attacks, Sequence)
        and not isinstance(attacks, str)
        and all(isinstance(a, AttackSpec) for a in attacks)
    ):
        specs = list(attacks)
    else:
        specs = parse_attacks(attacks, dataset, norm)
    cache: dict[tuple[int, int], PassTimes] = {} if times is None else times
    batch = min(batch_size, n)

    def pass_times(m: nn.Module) -> PassTimes:
        key = (id(m), batch)
        if key not in cache:
            cache[key] = measure_pass_times(m, x, batch)
        return cache[key]

    est = Estimate(seconds=0.0, n=n, n_models=len(models))
    for name, model in models.items():
        source = (gray_box_source or {}).get(name) or _source(model)
        k = _num_classes(model, x)
        randomized = bool(getattr(model, "randomized", False))
        total = pass_times(model).seconds(Passes(0, 1), n)  # the clean predictions
        for s in specs:
            if s.for_randomized and not randomized:
                continue
            if s.needs_surrogate and "surrogate" not in s.kwargs and source is model:
                continue
            if _reused(s, specs, model, source):
                est.per_attack[(name, s.threat_model, s.label)] = 0.0
                continue
            passes = attack_passes(s.name, s.kwargs, k)
            crafted_on = source if s.threat_model == "paper" or s.needs_surrogate else model
            t = pass_times(crafted_on).seconds(passes, n)
            t += pass_times(model).seconds(Passes(0, 2), n)  # the success check and the harness's prediction
            est.per_attack[(name, s.threat_model, s.label)] = t * n_eps
            total += t * n_eps
        est.per_model[name] = total
        est.seconds += total
    return est


__all__ = [
    "COSTS",
    "Estimate",
    "PassTimes",
    "Passes",
    "attack_passes",
    "estimate_evaluation",
    "format_seconds",
    "measure_pass_times",
]
