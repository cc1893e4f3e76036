"""The training examples of PSSR: L-inf PGD (or FGSM for a seeded share) against the frozen classifier,
and the scorer's target share maps, made once per run and cached or remade every batch.

:func:`make_adversarial` draws every random start from one generator seeded per call, in chunk order,
so an example's result depends only on the seed, its chunk and its position: the same examples come
out of one process, of a call on a contiguous range of rows (online training under torch.distributed)
and of chunks dealt out over ranks (the cache under torch.distributed). The attack is
:func:`pssr.attacks.pgd.pgd_linf`, the one training PGD (see :mod:`pssr.train.pssr_train`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pssr import distributed as D
from pssr.attacks.pgd import pgd_linf
from pssr.defense.pssr import PSSRConfig
from pssr.defense.scoring import attack_share_target
from pssr.utils import eval_mode


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    generator: torch.Generator | None = None,
    random_start: bool = True,
    noise: Tensor | None = None,
) -> Tensor:
    """:func:`pssr.attacks.pgd.pgd_linf` (the one training PGD) with ``model`` in eval mode and its
    parameters frozen (both restored); ``noise`` / ``generator`` give the random start."""
    with eval_mode(model, requires_grad=False):
        return pgd_linf(
            model,
            x,
            y,
            eps=eps,
            alpha=alpha,
            steps=steps,
            random_start=random_start,
            noise=noise,
            generator=generator,
        )


def make_adversarial(
    classifier: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: PSSRConfig,
    seed: int,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "adversarial",
    attack_model: nn.Module | None = None,
    rows: range | None = None,
    shard: D.DistInfo | None = None,
) -> tuple[Tensor, Tensor]:
    """PGD (or FGSM for a seeded ``fgsm_fraction`` of examples) against ``attack_model`` (default:
    ``classifier``) and the scorer's target share maps (from ``classifier``'s gradients).
    Returns x_adv (N, C, H, W) and target (N, 1, H, W), on the CPU.

    The examples are attacked in chunks of ``batch_size``; the FGSM choices and the random starts are
    drawn from one generator seeded with ``seed``, for the whole ``x``, in chunk order. So an example's
    result depends only on ``seed``, its chunk and its position, never on which call computes it:

    * ``rows`` (a contiguous ``range`` of indices into ``x``): compute and return only ``x[rows]``,
      with the same random starts as a call on all of ``x`` (online training under torch.distributed:
      each rank attacks its share of the global batch).
    * ``shard`` (a process group's :class:`pssr.distributed.DistInfo`; every rank must call): the
      chunks are dealt out over the ranks (contiguous, :func:`pssr.distributed.shard_range`) and the
      results all-gathered, so every rank returns all N examples, bit-identical to one process
      (same chunk, same random start). An error on one rank raises on all.
    """
    from tqdm.auto import tqdm

    if shard is not None and shard.enabled:
        if rows is not None:
            raise ValueError("make_adversarial: pass rows or shard, not both")
        if batch_size < 1:
            raise ValueError(f"make_adversarial: batch_size must be >= 1, got {batch_size}")
        chunks = D.shard_range(-(-len(x) // batch_size), shard)  # this rank's chunks
        mine = range(min(len(x), chunks.start * batch_size), min(len(x), chunks.stop * batch_size))
        parts = D.all_gather_results(
            lambda: make_adversarial(
                classifier,
                x,
                y,
                cfg,
                seed,
                batch_size,
                progress and shard.is_main,
                desc,
                attack_model,
                rows=mine,
            ),
            shard,
        )
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    if batch_size < 1:
        raise ValueError(f"make_adversarial: batch_size must be >= 1, got {batch_size}")
    if rows is None:
        rows = range(len(x))
    elif rows.step != 1 or not 0 <= rows.start <= rows.stop <= len(x):
        raise ValueError(
            f"make_adversarial: rows must be a contiguous range within [0, {len(x)}], got {rows}"
        )
    attack_model = classifier if attack_model is None else attack_model
    g = torch.Generator().manual_seed(seed)
    use_fgsm = torch.rand(len(x), generator=g) < cfg.fgsm_fraction  # (N,)
    dev = next(classifier.parameters()).device
    advs = [x[:0].float()]  # (0, C, H, W): what an empty ``rows`` returns
    targets = [torch.zeros(0, 1, *x.shape[2:])]
    for i in tqdm(range(0, len(x), batch_size), desc=desc, disable=not progress, leave=False):
        n_i = min(batch_size, len(x) - i)
        # The chunk's random start is drawn even where this call computes none of its rows, so the
        # generator is at the same place for every later chunk (pgd draws exactly this).
        noise = torch.rand((n_i, *x.shape[1:]), generator=g, dtype=torch.float32) if cfg.eps > 0 else None
        lo, hi = max(i, rows.start), min(i + n_i, rows.stop)
        if lo >= hi:
            continue
        xb, yb = x[lo:hi].to(dev), y[lo:hi].to(dev)
        xa = pgd(
            attack_model,
            xb,
            yb,
            cfg.eps,
            cfg.alpha,
            cfg.pgd_steps,
            noise=None if noise is None else noise[lo - i : hi - i],
        )
        fg = use_fgsm[lo:hi].to(dev)
        if fg.any():
            xf = pgd(attack_model, xb, yb, cfg.eps, cfg.eps, 1, random_start=False)
            xa = torch.where(fg[:, None, None, None], xf, xa)
        advs.append(xa.cpu())
        targets.append(attack_share_target(cfg.scorer_target, xb, xa, classifier, yb).cpu())
    return torch.cat(advs), torch.cat(targets)


__all__ = ["make_adversarial", "pgd"]
