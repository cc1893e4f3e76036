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

The training examples come from :mod:`pssr.train.adversarial_cache` (the one training PGD, with an
explicit ``torch.Generator``), the loss from :func:`pssr.train.losses.pssr_loss`; the quick evaluation
of a config-file run is :func:`pssr.experiments.quick_eval.quick_eval`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pssr import distributed as D
from pssr.config import asdict
from pssr.defense.pssr import PSSR, PSSRConfig
from pssr.train import loop as _loop
from pssr.train import losses
from pssr.train.adversarial_cache import make_adversarial
from pssr.train.pssr_data import accuracy, classifier_digest, split_examples
from pssr.utils import default_device, eval_mode, load_checkpoint, save_checkpoint, seed_everything

log = logging.getLogger(__name__)

STATE_FILE = "pssr-train-state.pt"
CACHE_FILE = "pssr-adv-cache.pt"
FINAL_FILE = "pssr.pt"
# PSSRConfig fields the adversarial examples depend on (with the classifier and the data sizes)
_KEY_FIELDS = tuple("eps pgd_steps pgd_alpha fgsm_fraction seed train_subset val_size scorer_target".split())


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
    from pssr.defaults import dataset_name, pssr_config, resolved

    # No config: the settings known to work on this dataset (pssr.defaults); eps = 0: its budget.
    name = dataset_name(data, getattr(data, "train", None))
    base = config if config is not None else pssr_config(name if name else None)
    cfg = resolved(dataclasses.replace(base, **overrides), name)
    # Under torchrun: join the process group (gloo on CPU, NCCL on CUDA); otherwise a no-op.
    info = D.init_distributed(default_device(cfg.device))
    device = D.device_for(info, default_device(cfg.device))  # cuda:LOCAL_RANK under NCCL
    c, h, w = (int(s) for s in data.train.x.shape[1:])
    x_tr, y_tr, x_val, y_val = split_examples(data, cfg)
    classifier = classifier.to(device)

    seed_everything(cfg.seed)
    finetune = cfg.classifier_lr > 0
    _warn_about(cfg, info)
    with eval_mode(classifier, requires_grad=False):
        original_clean_acc = accuracy(classifier, x_val, y_val)
    if finetune:  # train a copy: the caller's classifier stays as it was (and stays the gray-box reference)
        classifier = copy.deepcopy(classifier)
    defense = PSSR(classifier, cfg, image_shape=(c, h, w), classifier_spec=classifier_spec).to(device)
    opt, opt_params = _optimizer(defense, cfg, classifier, finetune)
    run = _Run(
        defense=defense,
        classifier=classifier,
        cfg=cfg,
        info=info,
        device=device,
        out=Path(out_dir) if out_dir is not None else None,
        progress=progress,
        opt=opt,
        opt_params=opt_params,
        key=_run_key(classifier, cfg, len(x_tr), len(x_val)),
        data=(x_tr, y_tr, x_val, y_val),
    )
    if info.enabled:
        _check_same_start(defense, cfg, run.key, info)
    history, start_epoch = run.load_state(resume)

    t0 = time.time()
    with eval_mode(classifier, requires_grad=finetune):  # eval-mode BN; trainable only when fine-tuned
        cache = run.adversarial_examples(t0)
        tap = (
            losses.FeatureTap(classifier, cfg.feature_layer)
            if cfg.w_semantic_feat > 0 and cfg.feature_layer
            else None
        )
        attack_model = defense.bpda("mask-constant") if cfg.adv_target == "pipeline" else classifier
        for epoch in range(start_epoch, cfg.epochs):
            te = time.time()
            sums, nb = run.train_epoch(epoch, cache, tap, attack_model)
            rec = run.epoch_record(epoch, te, sums, nb, cache)
            history.append(rec)
            if run.main:
                log.info(
                    "epoch %d/%d: %s",
                    epoch + 1,
                    cfg.epochs,
                    ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()),
                )
            run.save_state(epoch, history)
            if on_epoch_end is not None:
                on_epoch_end(epoch, rec)

    defense.metrics = {
        "history": history,
        "val_undefended_graybox_acc": accuracy(classifier, cache["val_adv"], y_val),
        "val_classifier_clean_acc": accuracy(classifier, x_val, y_val),
        "val_original_classifier_clean_acc": original_clean_acc,
        "classifier_finetuned": finetune,
        "n_train": len(x_tr),
        "n_val": len(x_val),
        "train_seconds_this_run": round(time.time() - t0, 1),
    }
    if info.enabled:
        defense.metrics["distributed"] = {"world_size": info.world_size, "backend": info.backend}
    defense.eval()
    if (
        run.out is not None
    ):  # a user classifier's weights travel in the checkpoint (PSSR.load(classifier=...))
        D.on_main(lambda: defense.save(run.out / FINAL_FILE), info)
    return defense


def _warn_about(cfg: PSSRConfig, info: D.DistInfo) -> None:
    """Settings that run but probably not as meant (logged by rank 0)."""
    if not info.is_main:
        return
    if cfg.classifier_lr > 0 and cfg.adv_mode != "online":
        log.warning(
            "classifier_lr > 0 with adv_mode='cache': the cached examples attack the original classifier "
            "only (a transfer attack once it is fine-tuned); adv_mode='online' attacks the current one"
        )
    if info.enabled and cfg.batch_size < info.world_size:
        log.warning(
            "batch_size %d < %d processes: some ranks idle on every step", cfg.batch_size, info.world_size
        )


def _optimizer(
    defense: PSSR, cfg: PSSRConfig, classifier: nn.Module, finetune: bool
) -> tuple[torch.optim.Optimizer | None, list[nn.Parameter]]:
    """Adam over the learned scorer, the regenerator and (fine-tuned) the classifier, each group with
    its ``base_lr``; None when nothing is trainable. Also the parameters the gradient all-reduce
    covers, in order."""
    learned_scorer = cfg.use_surgery and getattr(defense.scorer, "needs_training", False)
    trainable = [
        *(defense.scorer.parameters() if learned_scorer else []),
        *(defense.generator.parameters() if defense.generator is not None else []),
    ]
    groups = [{"params": trainable, "base_lr": cfg.lr}] if trainable else []
    if finetune:
        groups.append({"params": list(classifier.parameters()), "base_lr": cfg.classifier_lr})
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay) if groups else None
    return opt, [p for g in groups for p in g["params"]]


def _run_key(classifier: nn.Module, cfg: PSSRConfig, n_train: int, n_val: int) -> dict[str, Any]:
    """What the training examples depend on: a saved state or cache with another key is not this run's."""
    return {
        "classifier": classifier_digest(classifier),
        "n_train": n_train,
        "n_val": n_val,
        **{k: getattr(cfg, k) for k in _KEY_FIELDS},
    }


@dataclasses.dataclass
class _Run:
    """One call of :func:`train_pssr`: what its steps share (rank 0 alone reads and writes ``out``)."""

    defense: PSSR
    classifier: nn.Module
    cfg: PSSRConfig
    info: D.DistInfo
    device: torch.device
    out: Path | None
    progress: bool
    opt: torch.optim.Optimizer | None
    opt_params: list[nn.Parameter]
    key: dict[str, Any]
    data: tuple[Tensor, Tensor, Tensor, Tensor]  # x_train, y_train, x_val, y_val

    @property
    def main(self) -> bool:  # logs, progress bars and files: rank 0 only
        return self.info.is_main

    def load_state(self, resume: bool) -> tuple[list[dict[str, Any]], int]:
        """(history, first epoch to train): from ``out``'s per-epoch state when resuming; a state of
        another config (``epochs`` aside), data or classifier is refused."""
        cfg, out = self.cfg, self.out

        def read_state() -> dict[str, Any] | None:
            if out is None or not resume or not (out / STATE_FILE).is_file():
                return None
            st = load_checkpoint(out / STATE_FILE)
            saved = dict(st["config"])
            now = asdict(cfg)
            diff = sorted(k for k in now if k != "epochs" and saved.get(k) != now[k])
            if diff or st.get("key") != self.key:
                raise ValueError(
                    f"{out / STATE_FILE} was written with a different config ({', '.join(diff) or 'data/classifier'}); "
                    "use another out_dir or resume=False"
                )
            return st

        st = D.on_main(
            read_state, self.info
        )  # read by rank 0, handed to every rank (a refusal raises on all)
        if st is None:
            return [], 0
        self.defense.scorer.load_state_dict(st["scorer"])
        if cfg.classifier_lr > 0:
            self.classifier.load_state_dict(st["classifier"])
        if self.defense.generator is not None:
            self.defense.generator.load_state_dict(st["generator"])
        if self.opt is not None and st.get("optimizer") is not None:
            self.opt.load_state_dict(st["optimizer"])
        start_epoch = int(st["epoch"]) + 1
        if self.main:
            log.info("resuming PSSR training from %s at epoch %d/%d", out, start_epoch + 1, cfg.epochs)
        return list(st["history"]), start_epoch

    def adversarial_examples(self, t0: float) -> dict[str, Any]:
        """The validation examples (and, ``adv_mode="cache"``, the training examples and their target
        shares) against the frozen classifier: read from ``out``'s cache when it holds this run's key,
        else made (sharded over the ranks) and saved there."""
        cfg, out, info, classifier = self.cfg, self.out, self.info, self.classifier
        x_tr, y_tr, x_val, y_val = self.data

        def read_cache() -> dict[str, Any] | None:
            if out is None or not (out / CACHE_FILE).is_file():
                return None
            cached = load_checkpoint(out / CACHE_FILE)
            return cached if cached.get("key") == self.key else None

        cache = D.on_main(read_cache, info)
        if cache is None:
            cache = {"key": self.key}
            cache["val_adv"], _ = make_adversarial(
                classifier,
                x_val,
                y_val,
                cfg,
                seed=cfg.seed + 1,
                progress=self.progress,
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
                    progress=self.progress,
                    desc="train adversarial",
                    shard=info,
                )
            if out is not None:
                D.on_main(lambda: save_checkpoint(out / CACHE_FILE, cache), info)
        if self.main:
            log.info(
                "adversarial examples ready (%.0f s); undefended val robust acc %.3f",
                time.time() - t0,
                accuracy(classifier, cache["val_adv"], y_val),
            )
        return cache

    def train_epoch(
        self, epoch: int, cache: dict[str, Any], tap: losses.FeatureTap | None, attack_model: nn.Module
    ) -> tuple[dict[str, float], int]:
        """One epoch over the training examples in a seeded order; (summed loss parts, steps taken)."""
        from tqdm.auto import tqdm

        cfg, info, opt = self.cfg, self.info, self.opt
        x_tr = self.data[0]
        heartbeat = _loop.Heartbeat(log)
        if opt is not None:  # cosine schedule from the epoch index (so resume needs no scheduler state)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * 0.5 * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(x_tr), generator=gen)  # the same global permutation on every rank
        sums: dict[str, float] = {}
        nb = 0
        bar = tqdm(
            range(0, len(order), cfg.batch_size),
            desc=f"pssr epoch {epoch + 1}/{cfg.epochs}",
            disable=not (self.progress and self.main),
            leave=False,
        )
        for bi, i in enumerate(bar):
            gidx = order[i : i + cfg.batch_size]  # the global batch
            part = D.shard_range(len(gidx), info)  # this rank's contiguous share (all of it in one process)
            xa, tgt = self._examples(
                cache, gidx, part, attack_model, seed=cfg.seed * 7919 + epoch * 100_003 + bi
            )
            if opt is None:
                break
            drops = losses.rdrop_drops(cfg, len(gidx), tuple(x_tr.shape[2:]), epoch, bi, part)
            loss, parts = self._step(gidx[part.start : part.stop], xa, tgt, tap, len(gidx), drops)
            nb += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if self.progress and self.main and loss is not None:
                bar.set_postfix({"loss" if not info.enabled else "loss_rank0": f"{float(loss.detach()):.3f}"})
            elif not self.progress and self.main:  # no progress bar (background run)
                heartbeat(
                    min(i + cfg.batch_size, len(order)),
                    "pssr epoch %d/%d: batch %d/%d",
                    epoch + 1,
                    cfg.epochs,
                    bi + 1,
                    math.ceil(len(order) / cfg.batch_size),
                )
        if info.enabled:  # the loss parts are per-rank contributions: their sum is the global batch's loss
            sums = {k: sum(p.get(k, 0.0) for p in D.all_gather_objects(sums, info)) for k in sorted(sums)}
        return sums, nb

    def _examples(
        self, cache: dict[str, Any], gidx: Tensor, part: range, attack_model: nn.Module, seed: int
    ) -> tuple[Tensor, Tensor]:
        """This rank's adversarial examples and target shares of the global batch ``gidx``."""
        x_tr, y_tr = self.data[0], self.data[1]
        idx = gidx[part.start : part.stop]
        if self.cfg.adv_mode == "cache":
            return cache["adv"][idx].to(self.device), cache["target"][idx].to(self.device)
        # random starts drawn for the whole global batch: each example's is that of one process
        xa, tgt = make_adversarial(
            self.classifier,
            x_tr[gidx],
            y_tr[gidx],
            self.cfg,
            seed=seed,
            batch_size=len(gidx),
            attack_model=attack_model,
            rows=part,
        )
        return xa.to(self.device), tgt.to(self.device)

    def _step(
        self, idx: Tensor, xa: Tensor, tgt: Tensor, tap: losses.FeatureTap | None, n_global: int, drops: Any
    ) -> tuple[Tensor | None, dict[str, float]]:
        """One optimizer step on this rank's share ``idx`` of a global batch of ``n_global`` examples
        (gradients summed over the ranks); (loss, its logged parts), (None, {}) for an empty share."""
        opt, device = self.opt, self.device
        assert opt is not None
        share = losses.Share(self.info, len(idx) / n_global) if self.info.enabled else None
        loss: Tensor | None = None
        parts: dict[str, float] = {}
        if len(idx) > 0:
            xb, yb = self.data[0][idx].to(device), self.data[1][idx].to(device)
            drops = drops.to(device) if drops is not None else None  # R-Drop's random drops, (2, n, 1, H, W)
            loss, parts = losses.tapped_loss(self.defense, self.cfg, xb, yb, xa, tgt, tap, share, drops)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        else:  # a last global batch smaller than the world: nothing to do here but the collectives
            share.mask_totals(torch.zeros(2, device=device))
            opt.zero_grad(set_to_none=True)
        D.all_reduce_grads(
            self.opt_params, self.info
        )  # sum of the ranks' contributions (no-op in one process)
        opt.step()
        return loss, parts

    def epoch_record(
        self, epoch: int, te: float, sums: dict[str, float], nb: int, cache: dict[str, Any]
    ) -> dict[str, Any]:
        """The epoch's mean loss parts and its validation accuracies."""
        cfg, defense = self.cfg, self.defense
        x_val, y_val = self.data[2], self.data[3]
        rec: dict[str, Any] = {
            "epoch": epoch + 1,
            "seconds": round(time.time() - te, 1),
            **{f"loss_{k}": v / max(nb, 1) for k, v in sums.items()},
        }
        # Validation is computed redundantly on every rank (the weights are the same on every rank;
        # the val split is small); only the fine-tuned gray-box examples are sharded.
        rec["val_clean_acc"] = accuracy(defense, x_val, y_val)
        if (
            cfg.classifier_lr > 0
        ):  # the gray-box attack targets the classifier as it is now; the cache is a transfer
            rec["val_transfer_acc"] = accuracy(defense, cache["val_adv"], y_val)
            val_adv, _ = make_adversarial(
                self.classifier, x_val, y_val, cfg, seed=cfg.seed + 1, shard=self.info
            )
            rec["val_graybox_acc"] = accuracy(defense, val_adv, y_val)
        else:
            rec["val_graybox_acc"] = accuracy(defense, cache["val_adv"], y_val)
        return rec

    def save_state(self, epoch: int, history: list[dict[str, Any]]) -> None:
        """The per-epoch state in ``out`` (rank 0 writes; the others wait for it, an error there raises
        on all)."""
        if self.out is None:
            return
        defense, opt, out = self.defense, self.opt, self.out
        state = {
            "epoch": epoch,
            "config": asdict(self.cfg),
            "key": self.key,
            "history": history,
            "scorer": defense.scorer.state_dict(),
            "classifier": self.classifier.state_dict() if self.cfg.classifier_lr > 0 else None,
            "generator": defense.generator.state_dict() if defense.generator is not None else None,
            "optimizer": opt.state_dict() if opt is not None else None,
        }
        D.on_main(lambda: save_checkpoint(out / STATE_FILE, state), self.info)


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
