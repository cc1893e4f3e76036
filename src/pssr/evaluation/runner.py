"""The runner of :func:`pssr.evaluation.evaluate`: one evaluation cut into resumable units (a model's
checks, its clean predictions, one attack at one eps) and chunks (batches), sharded over torchrun
ranks, saved after every chunk and resumed on rerun (see the harness's docstring for the protocol)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pssr import distributed as D
from pssr.attacks import create_attack, lp_norm
from pssr.attacks.spec import AttackSpec
from pssr.evaluation import checks as checks_mod
from pssr.evaluation.checks import CheckConfig
from pssr.evaluation.common import (
    derived_seed,
    jsonable,
    model_fingerprint,
    predict,
    reseed,
)
from pssr.evaluation.state import StateStore, UnitState, unit_fingerprint
from pssr.utils import eval_mode, model_device

# logs under the harness's name: the runner is part of evaluate(), and callers filter on that logger
log = logging.getLogger("pssr.evaluation.harness")


def _create_attack(name: str, model: nn.Module, **kw: Any) -> Any:
    return create_attack(name, model, **kw)


# Adaptive attacks that are the same attack as a paper-protocol one on a model with no BPDA view
# that is its own gray-box source (see _Run._reuse_twin).
# adaptive attack -> the paper-protocol attack it equals on a model that is its own gray-box source
# and has no BPDA view (with the same settings: Run._reuse_twin)
_SAME_ON_A_PLAIN_MODEL: Mapping[str, str] = {
    "autoattack-bpda": "autoattack",
    "autoattack": "autoattack",  # exact gradients through the whole model = white-box on the model
    "pgd-full": "pgd",
}


class Run:
    """The work of one ``evaluate`` call, cut into resumable units and chunks."""

    def __init__(
        self,
        models: Mapping[str, nn.Module],
        sources: dict[str, tuple[nn.Module, str]],
        x: Tensor,
        y: Tensor,
        index: list[int],
        specs: list[AttackSpec],
        eps_list: list[float],
        norm: str,
        batch_size: int,
        seed: int,
        device: torch.device | None,
        store: StateStore,
        progress: bool,
        check_cfg: CheckConfig | None,
        n_examples: int,
        info: D.DistInfo | None = None,
        unit_inputs: dict[str, dict[str, Any]] | None = None,
        compute: bool | frozenset[str] = True,
    ) -> None:
        self.models, self.sources = models, sources
        self.x, self.y, self.index = x, y, index
        self.specs, self.eps_list, self.norm = specs, eps_list, norm
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.store, self.progress, self.check_cfg, self.n_examples = store, progress, check_cfg, n_examples
        self.info = info or D.DistInfo()
        self.unit_inputs = unit_inputs or {}
        self.n = x.shape[0]
        self.n_chunks = max(1, math.ceil(self.n / batch_size))
        self.units: list[UnitState] = []
        self.unit_meta: dict[tuple[str, str, str], dict[str, Any]] = {}  # (model, threat, attack) -> meta
        self.pre_checks: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        self.examples: dict[str, dict[str, np.ndarray]] = {}
        self.skipped: dict[str, dict[str, str]] = {}  # model -> {"threat/label": reason}
        # the models whose units are computed; the others' units not saved complete are pending
        self.computed = frozenset(models) if compute is True else frozenset() if compute is False else compute
        self.pending: dict[str, dict[str, str]] = {}  # model -> {"threat/label": what is missing}

    def records(self) -> list[dict[str, Any]]:
        return [r for u in self.units for r in u.records]

    def _fp(self, name: str, spec: AttackSpec | None = None, eps: float | None = None) -> str:
        """Fingerprint of a unit of model ``name`` (of attack ``spec`` at ``eps`` when given)."""
        extra: dict[str, Any] = {}
        if spec is not None:
            attack = spec.to_dict()
            # a model among the kwargs (a surrogate): its weights, not its repr
            for k, v in spec.kwargs.items():
                if isinstance(v, nn.Module):
                    attack["kwargs"][k] = model_fingerprint(v)
            extra = {"attack": attack, "eps": eps}
        return unit_fingerprint({**self.unit_inputs.get(name, {"model": name}), **extra})

    def _load(self, key: str, fp: str) -> UnitState:
        """Unit ``key``'s saved progress (if saved with inputs ``fp``): read by rank 0 (the only rank
        with a state folder), the same copy on every rank."""
        if not self.info.enabled:
            return self.store.load(key, fp)
        return D.on_main(lambda: self.store.load(key, fp), self.info)

    def _slice(self, c: int) -> slice:
        return slice(c * self.batch_size, min(self.n, (c + 1) * self.batch_size))

    def _run_chunks(
        self, unit: UnitState, work: Callable[[int], tuple[list[dict[str, Any]], float]], bar: Any
    ) -> None:
        """Run ``work(c) -> (records, seconds)`` for the chunks ``unit`` has not done, saving after each.

        One process: chunk by chunk. N ranks: rounds of N chunks, rank k taking the round's k-th;
        the round's records are gathered in chunk order on every rank, then the unit is saved (to
        disk by rank 0 only; the other ranks' stores are in memory).
        """
        world = self.info.world_size
        c = start = unit.chunks_done
        while c < self.n_chunks:
            stop = min(self.n_chunks, c + world)
            if self.info.enabled:
                mine = c + self.info.rank
                parts = D.all_gather_results(lambda m=mine, s=stop: work(m) if m < s else None, self.info)
                done = [p for p in parts if p is not None]  # rank order = chunk order
            else:
                done = [work(c)]
            for recs, seconds in done:
                unit.seconds += seconds
                unit.records.extend(recs)
            unit.chunks_done = stop
            self.store.save(unit)
            bar.update(stop - c)
            c = stop
        if c > start and self.info.is_main:  # a line per unit computed: long runs go with --no-progress
            acc = sum(bool(r["correct"]) for r in unit.records) / max(1, len(unit.records))
            log.info(
                "%s: accuracy %.1f%% (n=%d), %.0f s%s",
                unit.key,
                100 * acc,
                len(unit.records),
                unit.seconds,
                "" if start == 0 else f" (resumed at batch {start + 1})",
            )

    def _bar(self, total: int) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, disable=not self.progress, desc="evaluate", unit="batch", leave=False)

    def execute(self) -> None:
        per_model = self.n_chunks * (1 + len(self.specs) * len(self.eps_list))
        with self._bar(per_model * len(self.models)) as bar:
            for name, model in self.models.items():
                dev = self.device or model_device(model)
                with eval_mode(model, self.sources[name][0]):
                    if self.check_cfg is not None:
                        self._checks(name, model, dev)
                    clean_pred = self._clean(name, model, dev, bar)
                    for eps in self.eps_list:
                        for spec in self.specs:
                            if clean_pred is None:  # report-only, clean predictions not saved yet
                                self._pend(
                                    name, f"{spec.threat_model}/{spec.label}", "needs the clean predictions"
                                )
                            else:
                                self._attack(name, model, spec, eps, clean_pred, dev, bar)
                    purifies = callable(getattr(model, "purify", None))
                    if name in self.computed and self.n_examples > 0 and purifies and self.specs:
                        self._examples(name, model, clean_pred, dev)

    # -- units ------------------------------------------------------------------------------------

    def _pend(self, name: str, what: str, why: str) -> None:
        self.pending.setdefault(name, {})[what] = why

    def _unsaved(self, name: str, what: str, unit: UnitState) -> bool:
        """``name`` not computed (report-only) and ``unit`` not saved complete: list it as pending, True."""
        if name in self.computed or unit.complete:
            return False
        done = f"{unit.chunks_done} of {self.n_chunks} batches saved" if unit.chunks_done else "not started"
        self._pend(name, what, done)
        return True

    def _checks(self, name: str, model: nn.Module, dev: torch.device) -> None:
        cfg = self.check_cfg
        assert cfg is not None

        def run() -> dict[str, Any]:
            unit = self.store.load(f"checks|{name}", self._fp(name))
            if not unit.complete and name not in self.computed:
                return {"results": {}, "flags": [], "pending": True}
            if not unit.complete:
                k = min(cfg.n, self.n)
                x, y = self.x[:k].to(dev), self.y[:k].to(dev)
                t0 = time.perf_counter()
                reseed(model, derived_seed(self.seed, unit.key))
                res, flags = checks_mod.run_pre_checks(
                    model, x, y, self.norm, self.seed, cfg, eps=max(self.eps_list)
                )
                unit.meta = {"results": res, "flags": flags}
                unit.seconds, unit.n_chunks, unit.chunks_done = time.perf_counter() - t0, 1, 1
                self.store.save(unit)
                for f in flags:
                    log.warning("check [%s] %s: %s", name, f["name"], f["message"])
            return unit.meta

        # Rank 0 alone runs the checks (they look at the first cfg.n examples); every rank gets the
        # results, which decide e.g. whether the EOT attacks run.
        meta = D.on_main(run, self.info)
        if meta.get("pending"):
            self._pend(name, "checks", "not started")
        self.pre_checks[name] = (meta["results"], meta["flags"])

    def _records(
        self,
        name: str,
        threat: str,
        attack: str,
        eps: float,
        sl: slice,
        clean_pred: Tensor,
        adv_pred: Tensor,
        correct: Tensor,
        attacked: Tensor,
        pert: Tensor | None = None,
    ) -> list[dict[str, Any]]:
        """One record per example of chunk ``sl`` (the tensors: (B,) for the chunk's B examples)."""
        return [
            {
                "model": name,
                "threat_model": threat,
                "attack": attack,
                "eps": eps,
                "index": self.index[sl.start + j],
                "label": int(self.y[sl.start + j]),
                "clean_pred": int(clean_pred[j]),
                "adv_pred": int(adv_pred[j]),
                "correct": bool(correct[j]),
                "attacked": bool(attacked[j]),
                "pert_norm": 0.0 if pert is None else float(pert[j]),
            }
            for j in range(clean_pred.shape[0])
        ]

    def _clean(self, name: str, model: nn.Module, dev: torch.device, bar: Any) -> Tensor | None:
        unit = self._load(f"clean|{name}", self._fp(name))
        unit.n_chunks = self.n_chunks
        bar.update(unit.chunks_done)
        if self._unsaved(name, "clean", unit):
            return None

        def work(c: int) -> tuple[list[dict[str, Any]], float]:
            sl = self._slice(c)
            t0 = time.perf_counter()
            reseed(model, derived_seed(self.seed, unit.key, c))
            pred = predict(model, self.x[sl].to(dev)).cpu()
            seconds = time.perf_counter() - t0
            none = torch.zeros(pred.shape[0], dtype=torch.bool)
            return self._records(
                name, "none", "clean", 0.0, sl, pred, pred, pred == self.y[sl], none
            ), seconds

        self._run_chunks(unit, work, bar)
        self.units.append(unit)
        self.unit_meta[(name, "none", "clean")] = {"seconds": unit.seconds, "gradient_free": False}
        return torch.tensor([r["clean_pred"] for r in unit.records], dtype=torch.int64)

    def _attack(
        self,
        name: str,
        model: nn.Module,
        spec: AttackSpec,
        eps: float,
        clean_pred: Tensor,
        dev: torch.device,
        bar: Any,
    ) -> None:
        key = f"attack|{name}|{spec.threat_model}|{spec.label}|{eps!r}"
        if spec.for_randomized and "checks" in self.pending.get(name, {}):
            self._pend(
                name, f"{spec.threat_model}/{spec.label}", "runs or not as the checks find (not saved yet)"
            )
            return
        reason = self._skip_reason(name, model, spec)
        if reason:
            self.skipped.setdefault(name, {})[f"{spec.threat_model}/{spec.label}"] = reason
            bar.update(self.n_chunks)
            return
        unit = self._load(key, self._fp(name, spec, eps))
        unit.n_chunks = self.n_chunks
        bar.update(unit.chunks_done)
        if not unit.complete and self._reuse_twin(name, model, spec, eps, unit):
            bar.update(self.n_chunks - unit.chunks_done)
            self._finish_unit(name, spec, eps, unit)
            return
        if self._unsaved(
            name, f"{spec.threat_model}/{spec.label}" + (f"@{eps:g}" if len(self.eps_list) > 1 else ""), unit
        ):
            return
        source, source_kind = self.sources[name]
        target = model if spec.threat_model == "adaptive" else source
        atk = None
        if not unit.complete or not unit.meta:
            atk = self._build(name, model, spec, eps)
            cfg = atk.config() if callable(getattr(atk, "config", None)) else {"name": spec.name}
            # Black-box controls: gradient-free attacks and transfer from a surrogate. When they beat
            # the white-box attacks, the white-box gradients are misleading (checks).
            black_box = (
                bool(getattr(atk, "gradient_free", False)) or getattr(atk, "surrogate", None) is not None
            )
            unit.meta = {
                "config": jsonable(cfg),
                "gradient_free": bool(getattr(atk, "gradient_free", False)),
                "black_box": black_box,
                "target": "model" if target is model else f"gray-box source ({source_kind})",
            }
        correct_clean = clean_pred == self.y

        def work(c: int) -> tuple[list[dict[str, Any]], float]:
            sl = self._slice(c)
            xs, ys = self.x[sl], self.y[sl]
            mask = correct_clean[sl]
            adv_pred = clean_pred[sl].clone()
            pert = torch.zeros(xs.shape[0])
            t0 = time.perf_counter()
            if mask.any():
                reseed(model, derived_seed(self.seed, key, c))
                if target is not model:
                    reseed(target, derived_seed(self.seed, key, c))
                xm, ym = xs[mask].to(dev), ys[mask].to(dev)
                try:
                    x_adv = atk(xm, ym)  # type: ignore[misc]
                except Exception as e:
                    raise RuntimeError(
                        f"attack {spec.label!r} ({spec.threat_model}) failed on model {name!r}, "
                        f"eps={eps:g}, batch {c}: {type(e).__name__}: {e}"
                    ) from e
                if x_adv.shape != xm.shape:
                    raise RuntimeError(
                        f"attack {spec.label!r} returned shape {tuple(x_adv.shape)}, expected "
                        f"{tuple(xm.shape)}"
                    )
                adv_pred[mask] = predict(model, x_adv).cpu()
                pert[mask] = lp_norm((x_adv - xm).float(), self.norm).cpu()
            seconds = time.perf_counter() - t0
            # an example misclassified clean is not attacked and counts as not robust
            correct = mask & (adv_pred == ys)
            recs = self._records(
                name, spec.threat_model, spec.label, eps, sl, clean_pred[sl], adv_pred, correct, mask, pert
            )
            return recs, seconds

        self._run_chunks(unit, work, bar)
        self._finish_unit(name, spec, eps, unit)

    def _finish_unit(self, name: str, spec: AttackSpec, eps: float, unit: UnitState) -> None:
        """Add a finished attack unit to the run's records and its timing/config to ``unit_meta``."""
        self.units.append(unit)
        meta = self.unit_meta.setdefault((name, spec.threat_model, spec.label), {})
        meta.update(
            {
                "gradient_free": unit.meta["gradient_free"],
                "black_box": unit.meta.get("black_box", False),
                "config": unit.meta["config"],
                "target": unit.meta["target"],
                "name": spec.name,
            }
        )
        if unit.meta.get("reused_from"):
            meta["reused_from"] = unit.meta["reused_from"]
        meta.setdefault("seconds", {})[repr(eps)] = unit.seconds

    def _reuse_twin(self, name: str, model: nn.Module, spec: AttackSpec, eps: float, unit: UnitState) -> bool:
        """Fill ``unit`` with the records of its paper-protocol twin when both are the same attack.

        On a model without a ``bpda()`` view that is its own gray-box source (an undefended or
        adversarially trained classifier), ``autoattack-bpda`` is AutoAttack on the model, exactly
        what the paper column's ``autoattack`` with the same settings already ran (so is adaptive
        ``autoattack`` with exact gradients, and ``pgd-full`` with ``pgd``'s settings): rerunning it
        costs the most expensive attack of the suite again (tens of minutes on a robust model on a
        CPU) for a second sample of the same thing. The records are copied, relabelled, and the
        unit says so (``reused_from``). Only when the twin is complete; otherwise it runs.
        """
        twin_name = _SAME_ON_A_PLAIN_MODEL.get(spec.name)
        if (
            twin_name is None
            or spec.threat_model != "adaptive"
            or callable(getattr(model, "bpda", None))
            or self.sources[name][0] is not model
        ):
            return False
        twin = next(
            (
                t
                for t in self.specs
                if t.threat_model == "paper" and t.name == twin_name and t.kwargs == spec.kwargs
            ),
            None,
        )
        if twin is None:
            return False
        done = self._load(
            f"attack|{name}|{twin.threat_model}|{twin.label}|{eps!r}", self._fp(name, twin, eps)
        )
        if not done.complete or not done.meta:
            return False
        unit.records = [dict(r, threat_model=spec.threat_model, attack=spec.label) for r in done.records]
        unit.chunks_done, unit.n_chunks, unit.seconds = self.n_chunks, self.n_chunks, 0.0
        unit.meta = {**done.meta, "reused_from": f"{twin.threat_model}/{twin.label}"}
        self.store.save(unit)  # to disk on rank 0 only (the other ranks' stores are in memory)
        return True

    def _randomized(self, name: str, model: nn.Module) -> bool:
        if bool(getattr(model, "randomized", False)):
            return True
        res = self.pre_checks.get(name, ({}, []))[0]
        return bool(res.get("randomness", {}).get("random", False))

    def _skip_reason(self, name: str, model: nn.Module, spec: AttackSpec) -> str | None:
        if spec.for_randomized and not self._randomized(name, model):
            return "for randomized defenses only; this model's forward pass is deterministic"
        if spec.needs_surrogate and "surrogate" not in spec.kwargs and self.sources[name][0] is model:
            return "transfer needs a surrogate other than the model itself (give gray_box_source)"
        return None

    def _build(self, name: str, model: nn.Module, spec: AttackSpec, eps: float) -> Any:
        source = self.sources[name][0]
        target = model if spec.threat_model == "adaptive" else source
        kw = dict(spec.kwargs)
        if spec.needs_surrogate and "surrogate" not in kw:
            kw["surrogate"] = source
        return _create_attack(spec.name, target, eps=eps, norm=self.norm, seed=self.seed, **kw)

    def _examples(self, name: str, model: nn.Module, clean_pred: Tensor, dev: torch.device) -> None:
        """Clean / adversarial / purified images of the first few correctly classified examples."""
        # The strongest attack at the first eps: lowest accuracy on this model, adaptive ones first.
        eps = self.eps_list[0]
        runnable = [s for s in self.specs if not self._skip_reason(name, model, s)]
        if not runnable:
            return
        acc: dict[tuple[str, str], float] = {}
        for u in self.units:
            rs = [r for r in u.records if r["model"] == name and r["attack"] != "clean" and r["eps"] == eps]
            if rs:
                acc[(rs[0]["threat_model"], rs[0]["attack"])] = sum(r["correct"] for r in rs) / len(rs)
        spec = min(
            runnable, key=lambda s: (s.threat_model != "adaptive", acc.get((s.threat_model, s.label), 2.0))
        )
        key = f"examples|{name}|{spec.threat_model}|{spec.label}|{eps!r}#{self._fp(name, spec, eps)}"
        # Rank 0 alone makes (or reloads) the example images; every rank gets the arrays.
        arrays = D.on_main(
            lambda: self._example_arrays(key, name, model, spec, eps, clean_pred, dev), self.info
        )
        if arrays is not None:
            self.examples[name] = arrays

    def _example_arrays(
        self,
        key: str,
        name: str,
        model: nn.Module,
        spec: AttackSpec,
        eps: float,
        clean_pred: Tensor,
        dev: torch.device,
    ) -> dict[str, np.ndarray] | None:
        arrays = self.store.load_arrays(key)
        if arrays is None:
            ok = (clean_pred == self.y).nonzero().flatten()[: self.n_examples]
            if ok.numel() == 0:
                return None
            x, y = self.x[ok].to(dev), self.y[ok].to(dev)
            reseed(model, derived_seed(self.seed, key))
            atk = self._build(name, model, spec, eps)
            x_adv = atk(x, y)
            with torch.no_grad():
                p_clean, p_adv = model.purify(x), model.purify(x_adv)
                pred_adv = predict(model, x_adv)
            arrays = {
                k: v.detach().float().cpu().numpy()
                for k, v in {"x": x, "x_adv": x_adv, "purified": p_clean, "purified_adv": p_adv}.items()
            }
            arrays.update(
                {
                    "label": y.cpu().numpy(),
                    "pred_adv": pred_adv.cpu().numpy(),
                    "index": np.asarray([self.index[i] for i in ok.tolist()]),
                    "attack": np.asarray(spec.label),
                    "threat_model": np.asarray(spec.threat_model),
                    "eps": np.asarray(eps),
                }
            )
            self.store.save_arrays(key, arrays)
        return arrays
