"""A quick first measurement of a trained PSSR: clean, gray-box and adaptive accuracy from one PGD each.

What ``pssr train-pssr`` and ``pssr calibrate`` record beside the checkpoint (``metrics["test"]``).
It is not the evaluation (no restarts, no AutoAttack, no sanity checks): :mod:`pssr.evaluation` is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from pssr import distributed as D
from pssr.defense.pssr import PSSR


def _attack_fn(eps: float, alpha: float, steps: int, seed: int) -> tuple[str, Callable[..., Tensor]]:
    """PGD from ``pssr.attacks``; returns (implementation, fn).

    ``fn(model, x, y, grad_model=None)``: gradients from ``grad_model`` (a BPDA view), success on ``model``.
    """
    from pssr.attacks import create_attack

    def lib(m: nn.Module, x: Tensor, y: Tensor, grad_model: nn.Module | None = None) -> Tensor:
        return create_attack("pgd", m, eps=eps, alpha=alpha, steps=steps, seed=seed, grad_model=grad_model)(
            x, y
        )

    return "pssr.attacks.pgd (1 restart, random start, early stop per example)", lib


def quick_eval(
    defense: PSSR,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 40,
    alpha: float | None = None,
    adaptive_n: int = 300,
    seed: int = 0,
    batch_size: int = 250,
    progress: bool = False,
    shard: D.DistInfo | None = None,
) -> dict[str, Any]:
    """Clean, gray-box and adaptive accuracies of ``defense`` (and of its bare classifier) on (x, y).

    * gray-box (the paper's protocol): Linf PGD on the classifier alone, then purified;
    * adaptive (white-box on PSSR), on the first ``adaptive_n`` examples: PGD through
      ``bpda("identity")`` and through ``bpda("mask-constant")`` (exact gradients of fill + G with
      the mask fixed); ``adaptive_worst`` is the per-example worst case of the two and
      ``worst_of_all`` adds the gray-box attack (an adaptive attack weaker than a transferred one
      is a sign of gradient masking: compare them).
    A first evaluation, not the harness: one PGD run each, no restarts, no AutoAttack.

    ``shard`` (a process group's :class:`pssr.distributed.DistInfo`; every rank must call): the
    batches of ``batch_size`` examples are dealt out over the ranks (contiguous) and the per-example
    results gathered, so every rank returns the same dict. With ``pssr.attacks.pgd`` (reseeded per
    batch) it equals one process's; the fallback PGD draws its starts from one generator in batch
    order, so there it does not.
    """
    from tqdm.auto import tqdm

    info = shard if shard is not None else D.DistInfo()
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    impl, attack = _attack_fn(eps, alpha, steps, seed)
    dev = next(defense.parameters()).device
    clf = defense.classifier
    res: dict[str, Any] = {
        "n": len(x),
        "eps": eps,
        "steps": steps,
        "alpha": alpha,
        "attack_impl": impl,
        "seed": seed,
    }

    def my_batches(n: int) -> list[int]:  # start indices of this rank's batches of range(n)
        starts = list(range(0, n, batch_size))
        mine = D.shard_range(len(starts), info)
        return starts[mine.start : mine.stop]

    def gathered(fn: Callable[[], dict[str, list[Tensor]]]) -> dict[str, list[Tensor]]:
        parts = D.all_gather_results(fn, info)  # rank order = batch order
        return {k: [t for p in parts for t in p[k]] for k in parts[0]}

    def graybox() -> dict[str, list[Tensor]]:
        out: dict[str, list[Tensor]] = {
            k: [] for k in ("clf_clean", "pssr_clean", "clf_pgd", "pssr_graybox_pgd")
        }
        for i in tqdm(
            my_batches(len(x)), desc="gray-box", disable=not (progress and info.is_main), leave=False
        ):
            xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
            xa = attack(clf, xb, yb)
            with torch.no_grad():
                out["clf_clean"].append((clf(xb).argmax(1) == yb).cpu())
                out["pssr_clean"].append((defense(xb).argmax(1) == yb).cpu())
                out["clf_pgd"].append((clf(xa).argmax(1) == yb).cpu())
                out["pssr_graybox_pgd"].append((defense(xa).argmax(1) == yb).cpu())
        return out

    correct = gathered(graybox)
    for k, v in correct.items():
        res[f"{k}_acc"] = float(torch.cat(v).float().mean())
    na = min(adaptive_n, len(x))
    res["adaptive_n"] = na
    worst = torch.ones(na, dtype=torch.bool)
    for mode in ("identity", "mask-constant") if na > 0 else ():
        view = defense.bpda(mode)

        def adaptive(mode: str = mode, view: nn.Module = view) -> dict[str, list[Tensor]]:
            ok = []
            for i in tqdm(
                my_batches(na), desc=f"adaptive {mode}", disable=not (progress and info.is_main), leave=False
            ):
                xb, yb = x[i : min(i + batch_size, na)].to(dev), y[i : min(i + batch_size, na)].to(dev)
                xa = attack(defense, xb, yb, grad_model=view)
                with torch.no_grad():
                    ok.append((defense(xa).argmax(1) == yb).cpu())
            return {"ok": ok}

        ok_t = torch.cat(gathered(adaptive)["ok"])
        worst &= ok_t
        res[f"pssr_adaptive_pgd_{mode}_acc"] = float(ok_t.float().mean())
    if na > 0:
        res["pssr_adaptive_worst_acc"] = float(worst.float().mean())
        # the transferred (gray-box) attack is an attack on PSSR too: worst case over all three
        gray_ok = torch.cat(correct["pssr_graybox_pgd"])[:na]
        res["pssr_worst_of_all_acc"] = float((worst & gray_ok).float().mean())
        res["pssr_clean_acc_on_adaptive_subset"] = float(torch.cat(correct["pssr_clean"])[:na].float().mean())
    return res


__all__ = ["quick_eval"]
