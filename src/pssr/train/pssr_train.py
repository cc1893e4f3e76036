"""PSSR training: learned scorer + regenerator against a frozen classifier, with adversarial R-drop.

PSSR (Fu, Zhou, Ma, Zhang, arXiv 2402.00304; our reading in shared/docs/paper-notes.md):

* Threat model of the training data: adversarial examples made against the **frozen, normally
  trained** classifier with Linf PGD at the dataset's budget (``PSSRConfig.eps``; 0, the default,
  takes it from :func:`pssr.defaults.budget`: digits 0.1, MNIST 0.3, Fashion-MNIST 0.1, CIFAR
  8/255, the budgets the evaluation uses), optionally mixed with FGSM (``fgsm_fraction``). They are
  made once per run and cached (``adv_mode="cache"``, the CPU-friendly default; the classifier is
  frozen, so they only differ by the random start) or remade every batch (``"online"``).
* Per batch (x clean, x_adv, y): the learned scorer is fitted to the target share of the attack;
  masks come from the current scorer (detached: top-k is not differentiable); ``G`` restores the
  removed pixels of ``x_adv`` and is trained with pixel consistency, semantic consistency (KL and
  optional feature MSE to the classifier on ``x``) and cross-entropy; the self-augmentation
  regularizer with **adversarial R-drop** also passes ``x`` through surgery + regeneration and adds
  the symmetric KL between ``f(R(x))`` and ``f(R(x_adv))`` plus CE and pixel consistency on ``R(x)``.
* Invariance learning (``classifier_lr > 0``, off by default): the paper keeps the *trivial attack*
  in the kept pixels as "invariance information" that the model learns to be invariant to. With a
  frozen, normally trained classifier nothing can learn that invariance (the kept perturbation
  still fools it; measured: Fashion-MNIST gray-box 39% with clean accuracy collapsing), so this
  option also fine-tunes the classifier (Adam, eval-mode BatchNorm statistics) with the same
  CE and adversarial R-drop terms on ``f(R(x_adv))`` and ``f(R(x))``. The training examples are
  then remade every batch (``adv_mode="online"``) against the *current* classifier
  (``adv_target="classifier"``, the gray-box protocol) or through the whole current pipeline with
  the mask held fixed (``"pipeline"``, adversarial training of the defense). The fine-tuned
  classifier is saved inside the PSSR checkpoint.
* Reproducible and resumable: all randomness derives from ``seed`` and the epoch/batch index, the
  state is written atomically after each epoch, and a rerun with the same ``out_dir`` continues at
  the next epoch with bit-identical results on CPU.
* Data-parallel under ``torchrun`` (:func:`train_pssr`, docs/distributed.md): each rank trains on
  its share of every global batch and the gradients are summed with an explicit all-reduce (not
  DDP: the step calls the scorer, the regenerator and the classifier several times, and shares may
  be uneven); the cached examples are made chunk by chunk over the ranks, bit-identical to one
  process; rank 0 alone reads and writes the files.

The training-time attack is a small private PGD (:func:`pgd`) with an explicit ``torch.Generator``,
so training does not depend on the attack library; the quick evaluation of a run
(:func:`pssr.experiments.quick_eval.quick_eval`) uses ``pssr.attacks`` when it provides "pgd".
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pssr import distributed as D
from pssr.attacks.pgd import pgd_linf
from pssr.config import asdict
from pssr.defense.pssr import PSSR, PSSRConfig, eval_mode
from pssr.defense.scoring import FrozenEval, attack_share_target
from pssr.defense.surgery import MASK_MODES
from pssr.train import loop as _loop
from pssr.train import losses
from pssr.utils import autocast_context, default_device, load_checkpoint, save_checkpoint, seed_everything

log = logging.getLogger(__name__)

STATE_FILE = "pssr-train-state.pt"
CACHE_FILE = "pssr-adv-cache.pt"
FINAL_FILE = "pssr.pt"


# ----------------------------------------------------------------------------- adversarial examples
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
    with FrozenEval(model):
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


def classifier_digest(model: nn.Module | dict[str, Tensor]) -> str:
    """Digest of a classifier's weights (a module or its state dict)."""
    h = hashlib.sha256()
    for k, v in (model if isinstance(model, dict) else model.state_dict()).items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- data
def _splits(data: Any, cfg: PSSRConfig) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_train, y_train, x_val, y_val): a seeded train subset; val from ``data.val`` or held out of train."""
    train = data.train
    x, y = train.x, train.y
    g = torch.Generator().manual_seed(cfg.seed)
    val = getattr(data, "val", None)
    if val is not None and len(val) > 0:
        vi = torch.randperm(len(val), generator=g)[: cfg.val_size]
        xv, yv = val.x[vi], val.y[vi]
        perm = torch.randperm(len(x), generator=g)
    else:
        perm = torch.randperm(len(x), generator=g)
        hold = min(cfg.val_size, len(x) // 5)
        xv, yv = x[perm[:hold]], y[perm[:hold]]
        perm = perm[hold:]
    if cfg.train_subset:
        perm = perm[: cfg.train_subset]
    perm = perm.sort().values
    return x[perm], y[perm], xv, yv


# ----------------------------------------------------------------------------- one step
@dataclasses.dataclass(frozen=True)
class _Share:
    """This rank's part of a global batch under torch.distributed.

    Each rank backpropagates its *contribution* to the loss of the whole global batch: batch means
    scaled by ``frac`` (= examples here / examples in the global batch) and the masked pixel L1 summed
    here but divided by the number of masked values of the whole global batch. The sum of the ranks'
    gradients (:func:`pssr.distributed.all_reduce_grads`) is then the one-process gradient on the
    global batch, also for uneven shares (a ragged last batch) and for threshold masks, whose size
    varies per image.
    """

    info: D.DistInfo
    frac: float

    def mask_totals(self, local: Tensor) -> Tensor:
        """(2,) sums over ranks of the adversarial and the clean masks' values. Every rank calls it once
        per step -- from :func:`_loss`, or directly when its share of the batch is empty."""
        return D.all_reduce_sum(local, self.info)


def _loss(
    defense: PSSR,
    cfg: PSSRConfig,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    target: Tensor | None,
    tap: losses.FeatureTap | None,
    share: _Share | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The training loss on one batch and its parts (for the log). ``share``: under torch.distributed,
    this rank's contribution to the global batch's loss (see :class:`_Share`)."""
    clf = defense.classifier
    parts: dict[str, Tensor] = {}
    with torch.no_grad():
        logits_clean = clf(x)
        feat_clean = tap.pop() if tap is not None else None

    def mean(t: Tensor) -> Tensor:  # a batch mean; under torch.distributed this rank's part of the global one
        return t if share is None else t * share.frac

    def masked_l1(r: Tensor, m: Tensor, which: int) -> Tensor:
        if share is None:
            return losses.pixel_l1(r, x, m)
        err = (r.float() - x.float()).abs()  # (n, C, H, W)
        return (err * m.float().expand_as(err)).sum() / totals[which].clamp_min(1.0)

    def mask_of(scores: Tensor) -> Tensor:
        arg = cfg.ratio if cfg.mask_mode == "topk" else cfg.threshold
        return MASK_MODES[cfg.mask_mode](scores.detach(), arg)

    learned = getattr(defense.scorer, "needs_training", False) and cfg.use_surgery
    zeros = torch.zeros(x.shape[0], 1, *x.shape[2:], device=x.device)
    if not cfg.use_surgery:
        m_adv = m_clean = zeros
    elif learned:
        s_adv = defense.scorer(x_adv, clf)  # (N, 1, H, W), with grad
        parts["scorer"] = cfg.w_scorer * mean(losses.scorer_ce(s_adv, target))
        # Logged, not optimized: the lowest value the scorer loss can reach (the target's entropy);
        # loss_scorer - loss_scorer_floor is the KL the scorer has left to learn.
        floor = cfg.w_scorer * mean(losses.entropy(target))
        m_adv = mask_of(s_adv)
        with torch.no_grad():
            m_clean = mask_of(defense.scorer(x, clf))
    else:
        with torch.no_grad():
            m_adv, m_clean = mask_of(defense.scorer(x_adv, clf)), mask_of(defense.scorer(x, clf))

    if share is not None:  # masked values of the whole global batch, (2,): one collective per step
        totals = share.mask_totals(
            torch.stack([m_adv.float().expand_as(x).sum(), m_clean.float().expand_as(x).sum()])
        )

    if defense.generator is not None:
        with autocast_context(x.device, cfg.bf16):
            r_adv = defense.restore(x_adv, m_adv)
            logits_adv = clf(r_adv)
            feat_adv = tap.pop() if tap is not None else None
        parts["pix_mask"] = cfg.w_pixel_mask * masked_l1(r_adv, m_adv, 0)
        parts["pix_full"] = cfg.w_pixel_full * mean(losses.pixel_l1(r_adv, x))
        parts["kl"] = cfg.w_semantic_kl * mean(losses.kl_to_target(logits_clean, logits_adv))
        parts["ce"] = cfg.w_ce * mean(F.cross_entropy(logits_adv.float(), y))
        if tap is not None:
            parts["feat"] = cfg.w_semantic_feat * mean(losses.feature_mse(feat_clean, feat_adv))
        if cfg.w_rdrop > 0:
            with autocast_context(x.device, cfg.bf16):
                r_clean = defense.restore(x, m_clean)
                logits_rc = clf(r_clean)
                if tap is not None:
                    tap.pop()
            parts["rdrop"] = cfg.w_rdrop * mean(
                losses.symmetric_kl(logits_rc, logits_adv) + F.cross_entropy(logits_rc.float(), y)
            )
            parts["pix_clean"] = cfg.w_pixel_mask * masked_l1(r_clean, m_clean, 1) + cfg.w_pixel_full * mean(
                losses.pixel_l1(r_clean, x)
            )
    if not parts:
        return torch.zeros((), device=x.device), {}
    total = sum(parts.values())
    logged = {k: float(v.detach()) for k, v in parts.items()}
    if learned:
        logged["scorer_floor"] = float(floor)
    return total, logged


def tapped_loss(
    defense: PSSR,
    cfg: PSSRConfig,
    x: Tensor,
    y: Tensor,
    x_adv: Tensor,
    target: Tensor | None,
    tap: losses.FeatureTap | None,
    share: _Share | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """:func:`_loss` with the feature tap (if any) hooked in for this step only and emptied after."""
    if tap is None:
        return _loss(defense, cfg, x, y, x_adv, target, None, share)
    with tap:
        try:
            return _loss(defense, cfg, x, y, x_adv, target, tap, share)
        finally:
            tap.outputs.clear()


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    dev = next(model.parameters()).device
    correct = 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            correct += int(
                (model(x[i : i + batch_size].to(dev)).argmax(1).cpu() == y[i : i + batch_size]).sum()
            )
    return correct / max(len(x), 1)


# ----------------------------------------------------------------------------- the trainer
def train_pssr(
    classifier: nn.Module,
    data: Any,
    config: PSSRConfig | None = None,
    *,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    classifier_spec: dict[str, Any] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> PSSR:
    """Train PSSR's scorer and regenerator in front of the frozen ``classifier``.

    Args:
        classifier: ``nn.Module`` on images in [0, 1] returning logits; never updated (with
            ``classifier_lr > 0`` a copy of it is fine-tuned).
        data: a ``pssr.data.Dataset`` (uses ``.train`` and ``.val``; ``.val`` may be empty).
        config: :class:`PSSRConfig`; keyword ``overrides`` replace its fields (``epochs=2``). None:
            the settings known to work on ``data``'s dataset (:func:`pssr.defaults.pssr_config`).
            ``eps = 0`` (the default) trains at the dataset's L-inf budget (:func:`pssr.defaults.budget`).
        out_dir: where the per-epoch state, the adversarial cache and the final ``pssr.pt`` go;
            with ``resume=True`` an existing state there is continued (same config required,
            except ``epochs``, which may grow).
        classifier_spec: ``{"name", "kwargs"}`` for ``create_model`` so the result can be saved.
        on_epoch_end: called as ``f(epoch, record)`` after each epoch's state is on disk.

    Under torchrun (every rank calls this with the same arguments) the training is data-parallel:
    each rank takes its contiguous share of every global batch of ``batch_size`` examples and
    backpropagates its contribution to the global batch's loss, and the gradients of every trainable
    module are summed over ranks (:func:`pssr.distributed.all_reduce_grads`), so all ranks take the
    steps of one process on the same global batches (up to floating-point summation order). The
    cached adversarial examples are made chunk by chunk over the ranks and gathered (bit-identical to
    one process); rank 0 alone reads and writes ``out_dir`` and hands what it read to the others.
    See docs/distributed.md.

    Returns:
        the trained :class:`PSSR` (eval mode), with ``metrics["history"]``.
    """
    from tqdm.auto import tqdm

    from pssr.defaults import dataset_name, pssr_config, resolved

    # No config: the settings known to work on this dataset (pssr.defaults); eps = 0: its budget.
    name = dataset_name(data, getattr(data, "train", None))
    base = config if config is not None else pssr_config(name if name else None)
    cfg = resolved(dataclasses.replace(base, **overrides), name)
    # Under torchrun: join the process group (gloo on CPU, NCCL on CUDA); otherwise a no-op.
    info = D.init_distributed(default_device(cfg.device))
    device = D.device_for(info, default_device(cfg.device))  # cuda:LOCAL_RANK under NCCL
    c, h, w = (int(s) for s in data.train.x.shape[1:])
    x_tr, y_tr, x_val, y_val = _splits(data, cfg)
    classifier = classifier.to(device)
    out = Path(out_dir) if out_dir is not None else None
    main = info.is_main  # logs, progress bars and files: rank 0 only

    seed_everything(cfg.seed)
    finetune = cfg.classifier_lr > 0
    if finetune and cfg.adv_mode != "online" and main:
        log.warning(
            "classifier_lr > 0 with adv_mode='cache': the cached examples attack the original classifier "
            "only (a transfer attack once it is fine-tuned); adv_mode='online' attacks the current one"
        )
    if info.enabled and cfg.batch_size < info.world_size and main:
        log.warning(
            "batch_size %d < %d processes: some ranks idle on every step", cfg.batch_size, info.world_size
        )
    with FrozenEval(classifier):
        original_clean_acc = _accuracy(classifier, x_val, y_val)
    if finetune:  # train a copy: the caller's classifier stays as it was (and stays the gray-box reference)
        classifier = copy.deepcopy(classifier)
    defense = PSSR(classifier, cfg, image_shape=(c, h, w), classifier_spec=classifier_spec).to(device)
    learned_scorer = cfg.use_surgery and getattr(defense.scorer, "needs_training", False)
    trainable = [
        *(defense.scorer.parameters() if learned_scorer else []),
        *(defense.generator.parameters() if defense.generator is not None else []),
    ]
    groups = [{"params": trainable, "base_lr": cfg.lr}] if trainable else []
    if finetune:
        groups.append({"params": list(classifier.parameters()), "base_lr": cfg.classifier_lr})
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay) if groups else None
    opt_params = [p for g in groups for p in g["params"]]  # what the gradient all-reduce covers, in order

    key = {
        "classifier": classifier_digest(classifier),
        "n_train": len(x_tr),
        "n_val": len(x_val),
        **{
            k: getattr(cfg, k)
            for k in (
                "eps",
                "pgd_steps",
                "pgd_alpha",
                "fgsm_fraction",
                "seed",
                "train_subset",
                "val_size",
                "scorer_target",
            )
        },
    }
    if info.enabled:
        _check_same_start(defense, cfg, key, info)
    history: list[dict[str, Any]] = []
    start_epoch = 0

    def read_state() -> dict[str, Any] | None:
        if out is None or not resume or not (out / STATE_FILE).is_file():
            return None
        st = load_checkpoint(out / STATE_FILE)
        saved = dict(st["config"])
        now = asdict(cfg)
        diff = sorted(k for k in now if k != "epochs" and saved.get(k) != now[k])
        if diff or st.get("key") != key:
            raise ValueError(
                f"{out / STATE_FILE} was written with a different config ({', '.join(diff) or 'data/classifier'}); "
                "use another out_dir or resume=False"
            )
        return st

    st = D.on_main(read_state, info)  # read by rank 0, handed to every rank (a refusal raises on all)
    if st is not None:
        defense.scorer.load_state_dict(st["scorer"])
        if finetune:
            classifier.load_state_dict(st["classifier"])
        if defense.generator is not None:
            defense.generator.load_state_dict(st["generator"])
        if opt is not None and st.get("optimizer") is not None:
            opt.load_state_dict(st["optimizer"])
        history, start_epoch = list(st["history"]), int(st["epoch"]) + 1
        if main:
            log.info("resuming PSSR training from %s at epoch %d/%d", out, start_epoch + 1, cfg.epochs)
    del st

    t0 = time.time()
    with FrozenEval(classifier, requires_grad=finetune):  # eval-mode BN; trainable only when fine-tuned
        # adversarial training / validation examples against the frozen classifier
        def read_cache() -> dict[str, Any] | None:
            if out is None or not (out / CACHE_FILE).is_file():
                return None
            cached = load_checkpoint(out / CACHE_FILE)
            return cached if cached.get("key") == key else None

        cache = D.on_main(read_cache, info)
        if cache is None:
            cache = {"key": key}
            cache["val_adv"], _ = make_adversarial(
                classifier,
                x_val,
                y_val,
                cfg,
                seed=cfg.seed + 1,
                progress=progress,
                desc="val adversarial",
                shard=info,
            )
            if cfg.adv_mode == "cache":
                cache["adv"], cache["target"] = make_adversarial(
                    classifier,
                    x_tr,
                    y_tr,
                    cfg,
                    seed=cfg.seed + 2,
                    progress=progress,
                    desc="train adversarial",
                    shard=info,
                )
            if out is not None:
                D.on_main(lambda: save_checkpoint(out / CACHE_FILE, cache), info)
        if main:
            log.info(
                "adversarial examples ready (%.0f s); undefended val robust acc %.3f",
                time.time() - t0,
                _accuracy(classifier, cache["val_adv"], y_val),
            )

        tap = (
            losses.FeatureTap(classifier, cfg.feature_layer)
            if cfg.w_semantic_feat > 0 and cfg.feature_layer
            else None
        )
        attack_model = defense.bpda("mask-constant") if cfg.adv_target == "pipeline" else classifier
        for epoch in range(start_epoch, cfg.epochs):
            te = time.time()
            heartbeat = _loop.Heartbeat(log)
            if opt is not None:  # cosine schedule from the epoch index (so resume needs no scheduler state)
                for group in opt.param_groups:
                    group["lr"] = (
                        group["base_lr"] * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
                    )
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            order = torch.randperm(len(x_tr), generator=gen)  # the same global permutation on every rank
            sums: dict[str, float] = {}
            nb = 0
            bar = tqdm(
                range(0, len(order), cfg.batch_size),
                desc=f"pssr epoch {epoch + 1}/{cfg.epochs}",
                disable=not (progress and main),
                leave=False,
            )
            for bi, i in enumerate(bar):
                gidx = order[i : i + cfg.batch_size]  # the global batch
                part = D.shard_range(
                    len(gidx), info
                )  # this rank's contiguous share (all of it in one process)
                idx = gidx[part.start : part.stop]
                xb, yb = x_tr[idx].to(device), y_tr[idx].to(device)
                if cfg.adv_mode == "cache":
                    xa, tgt = cache["adv"][idx].to(device), cache["target"][idx].to(device)
                else:  # random starts drawn for the whole global batch: each example's is that of one process
                    xa, tgt = make_adversarial(
                        classifier,
                        x_tr[gidx],
                        y_tr[gidx],
                        cfg,
                        seed=cfg.seed * 7919 + epoch * 100_003 + bi,
                        batch_size=len(gidx),
                        attack_model=attack_model,
                        rows=part,
                    )
                    xa, tgt = xa.to(device), tgt.to(device)
                if opt is None:
                    break
                share = _Share(info, len(idx) / len(gidx)) if info.enabled else None
                loss: Tensor | None = None
                parts: dict[str, float] = {}
                if len(idx) > 0:
                    loss, parts = tapped_loss(defense, cfg, xb, yb, xa, tgt, tap, share)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                else:  # a last global batch smaller than the world: nothing to do here but the collectives
                    share.mask_totals(torch.zeros(2, device=device))
                    opt.zero_grad(set_to_none=True)
                D.all_reduce_grads(opt_params, info)  # sum of the ranks' contributions (no-op in one process)
                opt.step()
                nb += 1
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                if progress and main and loss is not None:
                    bar.set_postfix({"loss" if share is None else "loss_rank0": f"{float(loss):.3f}"})
                elif not progress and main:  # no progress bar (background run)
                    heartbeat(
                        min(i + cfg.batch_size, len(order)),
                        "pssr epoch %d/%d: batch %d/%d",
                        epoch + 1,
                        cfg.epochs,
                        bi + 1,
                        math.ceil(len(order) / cfg.batch_size),
                    )
            if (
                info.enabled
            ):  # the loss parts are per-rank contributions: their sum is the global batch's loss
                sums = {k: sum(p.get(k, 0.0) for p in D.all_gather_objects(sums, info)) for k in sorted(sums)}
            rec: dict[str, Any] = {
                "epoch": epoch + 1,
                "seconds": round(time.time() - te, 1),
                **{f"loss_{k}": v / max(nb, 1) for k, v in sums.items()},
            }
            # Validation is computed redundantly on every rank (the weights are the same on every rank;
            # the val split is small); only the fine-tuned gray-box examples are sharded.
            rec["val_clean_acc"] = _accuracy(defense, x_val, y_val)
            if finetune:  # the gray-box attack targets the classifier as it is now; the cache is a transfer
                rec["val_transfer_acc"] = _accuracy(defense, cache["val_adv"], y_val)
                val_adv, _ = make_adversarial(classifier, x_val, y_val, cfg, seed=cfg.seed + 1, shard=info)
                rec["val_graybox_acc"] = _accuracy(defense, val_adv, y_val)
            else:
                rec["val_graybox_acc"] = _accuracy(defense, cache["val_adv"], y_val)
            history.append(rec)
            if main:
                log.info(
                    "epoch %d/%d: %s",
                    epoch + 1,
                    cfg.epochs,
                    ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
                )
            if out is not None:  # rank 0 writes; the others wait for it (an error there raises on all)
                D.on_main(
                    lambda e=epoch: save_checkpoint(
                        out / STATE_FILE,
                        {
                            "epoch": e,
                            "config": asdict(cfg),
                            "key": key,
                            "history": history,
                            "scorer": defense.scorer.state_dict(),
                            "classifier": classifier.state_dict() if finetune else None,
                            "generator": defense.generator.state_dict()
                            if defense.generator is not None
                            else None,
                            "optimizer": opt.state_dict() if opt is not None else None,
                        },
                    ),
                    info,
                )
            if on_epoch_end is not None:
                on_epoch_end(epoch, rec)

    defense.metrics = {
        "history": history,
        "val_undefended_graybox_acc": _accuracy(classifier, cache["val_adv"], y_val),
        "val_classifier_clean_acc": _accuracy(classifier, x_val, y_val),
        "val_original_classifier_clean_acc": original_clean_acc,
        "classifier_finetuned": finetune,
        "n_train": len(x_tr),
        "n_val": len(x_val),
        "train_seconds_this_run": round(time.time() - t0, 1),
    }
    if info.enabled:
        defense.metrics["distributed"] = {"world_size": info.world_size, "backend": info.backend}
    defense.eval()
    if out is not None:  # a user classifier's weights travel in the checkpoint (PSSR.load(classifier=...))
        D.on_main(lambda: defense.save(out / FINAL_FILE), info)
    return defense


def _check_same_start(defense: PSSR, cfg: PSSRConfig, key: dict[str, Any], info: D.DistInfo) -> None:
    """ValueError on every rank unless all ranks start from the same weights, config and data: the
    gradient all-reduce keeps identical weights identical but does not make them so (unlike DDP,
    which broadcasts rank 0's)."""
    mine = {"weights": classifier_digest(defense), "config": asdict(cfg), "key": key}
    every = D.all_gather_objects(mine, info)
    bad = [r for r, o in enumerate(every) if o != every[0]]
    if bad:
        what = [k for k in mine if every[bad[0]][k] != every[0][k]]
        raise ValueError(
            f"train_pssr under torch.distributed: rank {bad[0]} differs from rank 0 in {', '.join(what)} "
            "(every rank must load the same classifier checkpoint and data and use the same config)"
        )
