"""PSSR's configs: what a defense *is*, how it was *trained*, and the recipe that holds both.

* :class:`DefenseConfig` is everything :meth:`pssr.PSSR.purify` reads (scorer, removal ratio, fill,
  regenerator architecture, restore scope). A :class:`~pssr.PSSR` module holds one as ``config``
  and its checkpoint saves it under ``"config"``; changing the ratio means building another defense
  (:meth:`pssr.PSSR.with_config`), never mutating a live one.
* :class:`PSSRTrainConfig` is how the regenerator (and the learned scorer, and a fine-tuned
  classifier) were trained: the adversarial examples, the optimizer, the loss weights, the seeded
  train / validation split. A trained defense keeps it as provenance (``PSSR.training``, the
  checkpoint's ``"training"``); calibration reads its seed and validation size to rebuild the
  images PSSR held out.
* :class:`PSSRConfig` is the recipe: every field of both, flat, as the ``[pssr]`` table of a config
  file and the argument of :func:`pssr.train_pssr` spell it. ``recipe.defense`` and
  ``recipe.training`` are its two parts; ``PSSR(classifier, recipe)`` splits it.

Units: pixels in [0, 1]; ``ratio`` is a fraction of the H*W pixel positions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pssr.defense.regeneration import CONDITIONS
from pssr.defense.scoring import SCORERS, TARGETS
from pssr.defense.surgery import FILLS, MASK_MODES


def _need(cfg: Any, ok: bool, name: str, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{type(cfg).__name__}.{name}={getattr(cfg, name)!r} is invalid; allowed: {allowed}")


@dataclasses.dataclass(frozen=True)
class DefenseConfig:
    """What a PSSR defense is: everything ``purify`` needs. Saved inside every PSSR checkpoint."""

    # --- Pixel Surgery ---
    scorer: str = "learned"  # learned | gradient | random
    scorer_width: int = 16  # channels of the learned scorer's first U-Net level
    scorer_depth: int = 2  # 2x down-samplings in the learned scorer
    gradient_times_input: bool = False  # gradient scorer: |x * grad| instead of |grad|
    random_seed: int = 0  # random scorer's fixed seed
    mask_mode: str = "topk"  # topk | threshold
    ratio: float = 0.1  # topk: fraction of the H*W pixels removed per image
    threshold: float = 0.5  # threshold: min-max normalized score above which a pixel is removed
    fill: str = "mean"  # value of removed pixels fed to G: constant | mean | local-mean
    fill_value: float = 0.5  # pixel value for fill="constant" (and images with nothing kept)
    use_surgery: bool = True  # False: regeneration only (G rewrites the whole image)
    use_regeneration: bool = True  # False: surgery only (removed pixels keep the fill)
    # --- Semantic Regeneration ---
    gen_width: int = 32  # channels of G's first U-Net level
    gen_depth: int = 2  # 2x down-samplings in G
    condition: str = "none"  # none | logits (FiLM on the classifier's logits of the holed image)
    restore_scope: str = "full"  # full: G re-renders every pixel | mask: G writes the removed ones only

    def __post_init__(self) -> None:
        _check_defense(self)


@dataclasses.dataclass(frozen=True)
class PSSRTrainConfig:
    """How a PSSR defense was trained (provenance of a checkpoint; not read by ``purify``)."""

    # --- the learned scorer's target ---
    scorer_target: str = "delta-grad"  # delta | delta-grad
    # --- training data: adversarial examples against the frozen classifier ---
    eps: float = 0.0  # Linf budget in [0, 1] pixel units; 0 = the dataset's (pssr.defaults.budget)
    pgd_steps: int = 10  # PGD iterations for training examples
    pgd_alpha: float = 0.0  # PGD step size; 0 means 2.5 * eps / pgd_steps
    fgsm_fraction: float = 0.0  # share of training examples made with FGSM instead of PGD
    adv_mode: str = "cache"  # cache (made once per run) | online (remade every batch)
    adv_target: str = (
        "classifier"  # online examples attack: classifier (gray-box) | pipeline (through PSSR, mask fixed)
    )
    # --- invariance learning: fine-tune the classifier on restored images (0 = classifier frozen) ---
    classifier_lr: float = 0.0  # Adam lr of the classifier; > 0 trains it on R(x_adv) and R(x) (eval-mode BN)
    # --- optimization ---
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3  # Adam learning rate of G and the learned scorer
    weight_decay: float = 0.0
    train_subset: int = 0  # train on this many training images (0 = all), a seeded subset
    val_size: int = 500  # validation images for per-epoch metrics (from val, else held out of train)
    seed: int = 0
    bf16: bool = False  # bf16 autocast for G and the classifier
    device: str = "auto"
    # --- loss weights (pssr.train.losses) ---
    w_pixel_mask: float = 1.0  # L1(restored, clean) on the removed pixels
    w_pixel_full: float = 1.0  # L1(restored, clean) on the whole image
    w_semantic_kl: float = 1.0  # KL(f(clean) || f(restored)) on logits
    w_semantic_feat: float = 0.0  # MSE of the classifier's features at `feature_layer`
    feature_layer: str = ""  # name of a classifier submodule whose output is the feature (e.g. "features")
    w_ce: float = 1.0  # cross-entropy of f(restored adversarial) with the true label
    w_scorer: float = 1.0  # learned scorer's pixel-wise softmax cross-entropy
    w_rdrop: float = 1.0  # adversarial R-drop: symmetric KL(f(R(x)), f(R(x_adv))) + CE on R(x)
    # R-Drop proper (Liang et al. 2021): two stochastic passes of the same adversarial input, each
    # removing this share of the H*W pixels at random on top of the scorer's mask (fresh seeded draws
    # every batch, training only); symmetric KL between the two passes' predictions (weight w_rdrop)
    # and CE on both. 0 = no two-pass term (only the clean-adversarial one above).
    rdrop_drop: float = 0.0

    def __post_init__(self) -> None:
        _check_training(self)

    @property
    def alpha(self) -> float:
        """The PGD step size of the training examples (``pgd_alpha``, else ``2.5 * eps / pgd_steps``)."""
        return self.pgd_alpha if self.pgd_alpha > 0 else 2.5 * self.eps / self.pgd_steps


@dataclasses.dataclass(frozen=True)
class PSSRConfig(PSSRTrainConfig, DefenseConfig):
    """The recipe: a :class:`DefenseConfig` and a :class:`PSSRTrainConfig` in one flat dataclass
    (the ``[pssr]`` table of a config file). ``PSSR(classifier, recipe)`` keeps ``recipe.defense``
    as its config and ``recipe.training`` as its provenance."""

    def __post_init__(self) -> None:
        _check_defense(self)
        _check_training(self)
        if self.rdrop_drop > 0 and not (self.use_surgery and self.use_regeneration):
            raise ValueError(
                "PSSRConfig.rdrop_drop > 0 needs use_surgery and use_regeneration (its random drops are "
                "removed pixels the regenerator restores); set rdrop_drop = 0 for this ablation"
            )

    @property
    def defense(self) -> DefenseConfig:
        """The defense's own part: what ``purify`` needs."""
        return _project(DefenseConfig, self)

    @property
    def training(self) -> PSSRTrainConfig:
        """The training part: how the defense is (to be) trained."""
        return _project(PSSRTrainConfig, self)

    @classmethod
    def from_parts(cls, defense: DefenseConfig, training: PSSRTrainConfig | None = None) -> PSSRConfig:
        """The recipe of a defense config and a training config (training defaults when None)."""
        parts = {
            **_fields_of(DefenseConfig, defense),
            **_fields_of(PSSRTrainConfig, training or PSSRTrainConfig()),
        }
        return cls(**parts)


DEFENSE_FIELDS = tuple(f.name for f in dataclasses.fields(DefenseConfig))
TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(PSSRTrainConfig))


def _fields_of(cls: type, cfg: Any) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)}


def _project(cls: type, cfg: Any) -> Any:
    return cls(**_fields_of(cls, cfg))


def split_flat(mapping: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(defense part, training part) of a flat mapping of recipe keys, e.g. a format-1 checkpoint's
    ``config``. Keys of neither part are left out (the caller validates)."""
    return (
        {k: v for k, v in mapping.items() if k in DEFENSE_FIELDS},
        {k: v for k, v in mapping.items() if k in TRAINING_FIELDS},
    )


def _check_defense(cfg: Any) -> None:
    def need(ok: bool, name: str, allowed: str) -> None:
        _need(cfg, ok, name, allowed)

    need(cfg.scorer in SCORERS, "scorer", ", ".join(SCORERS.list()))
    need(cfg.mask_mode in MASK_MODES, "mask_mode", ", ".join(MASK_MODES))
    need(cfg.fill in FILLS, "fill", ", ".join(FILLS.list()))
    need(cfg.condition in CONDITIONS, "condition", ", ".join(CONDITIONS))
    need(cfg.restore_scope in ("mask", "full"), "restore_scope", "mask, full")
    need(0.0 <= cfg.ratio <= 1.0, "ratio", "[0, 1]")
    need(0.0 <= cfg.threshold <= 1.0, "threshold", "[0, 1]")
    need(0.0 <= cfg.fill_value <= 1.0, "fill_value", "[0, 1]")
    for name in ("scorer_width", "gen_width"):
        need(getattr(cfg, name) >= 1, name, ">= 1")
    for name in ("scorer_depth", "gen_depth", "random_seed"):
        need(getattr(cfg, name) >= 0, name, ">= 0")
    if not (cfg.use_surgery or cfg.use_regeneration):
        raise ValueError(
            f"{type(cfg).__name__}: use_surgery and use_regeneration cannot both be false "
            "(nothing would be purified)"
        )


def _check_training(cfg: Any) -> None:
    def need(ok: bool, name: str, allowed: str) -> None:
        _need(cfg, ok, name, allowed)

    need(cfg.scorer_target in TARGETS, "scorer_target", ", ".join(TARGETS.list()))
    need(cfg.adv_mode in ("cache", "online"), "adv_mode", "cache, online")
    need(cfg.adv_target in ("classifier", "pipeline"), "adv_target", "classifier, pipeline")
    need(
        cfg.adv_target == "classifier" or cfg.adv_mode == "online",
        "adv_target",
        "'pipeline' only with adv_mode='online' (the pipeline changes while it trains)",
    )
    need(math.isfinite(cfg.classifier_lr) and cfg.classifier_lr >= 0.0, "classifier_lr", ">= 0 (0 = frozen)")
    need(0.0 <= cfg.fgsm_fraction <= 1.0, "fgsm_fraction", "[0, 1]")
    need(0.0 <= cfg.rdrop_drop < 1.0, "rdrop_drop", "[0, 1)")
    need(math.isfinite(cfg.eps) and 0.0 <= cfg.eps <= 1.0, "eps", "[0, 1]")
    need(cfg.pgd_alpha >= 0.0, "pgd_alpha", ">= 0 (0 = 2.5 * eps / pgd_steps)")
    for name in ("pgd_steps", "batch_size"):
        need(getattr(cfg, name) >= 1, name, ">= 1")
    for name in ("epochs", "train_subset", "val_size", "seed"):
        need(getattr(cfg, name) >= 0, name, ">= 0")
    need(cfg.lr > 0, "lr", "> 0")
    for name in TRAINING_WEIGHTS:
        need(getattr(cfg, name) >= 0, name, ">= 0")


TRAINING_WEIGHTS = tuple(f.name for f in dataclasses.fields(PSSRTrainConfig) if f.name.startswith("w_"))

__all__ = [
    "DEFENSE_FIELDS",
    "TRAINING_FIELDS",
    "DefenseConfig",
    "PSSRConfig",
    "PSSRTrainConfig",
    "split_flat",
]
