"""The PSSR defense module: Pixel Surgery + Semantic Regeneration in front of a frozen classifier.

PSSR (Fu, Zhou, Ma, Zhang, "Invariance-powered Trustworthy Defense via Remove Then Restore",
arXiv 2402.00304): an input x (N, C, H, W) in [0, 1] is purified by

1. scoring pixels (``scorer(x, classifier) -> (N, 1, H, W)``, see ``scoring.py``),
2. removing the top ``ratio`` of pixels by score (the *salient attack*) and filling them with a
   defined value (``surgery.py``); every other pixel, the *trivial attack* included, stays exactly
   as it was,
3. regenerating the removed pixels with ``G(x_holed, mask)`` (``regeneration.py``), whose output is
   written back only on the mask;

and ``forward(x) = classifier(purify(x))``.

Threat models. The paper's protocol is gray-box (attacks made on the classifier, then purified).
For white-box adaptive attacks on the whole defense:

* plain ``forward`` is differentiable with the mask held constant (the top-k step is piecewise
  constant, so that *is* its exact gradient almost everywhere);
* ``bpda(mode="mask-constant")`` is the same gradient, made explicit;
* ``bpda(mode="identity")`` treats the whole purifier as the identity in the backward pass
  (BPDA, Athalye et al. 2018), the attack the paper names.

PSSR is deterministic: submodules always run in eval mode (the caller's modes are restored), and
the only random scorer draws from a fixed seed, so EOT is not needed.

Where the invariance is learned (``restore_scope``). The paper keeps the trivial attack in place as
"invariance information" without saying which module learns the invariance. ``"mask"`` writes
``G``'s output on the removed pixels only, so kept pixels, trivial attack included, reach the
classifier bit-identical: the classifier must be invariant to them (fine-tune it with
``classifier_lr > 0``; a frozen, normally trained classifier is still fooled by them, and with one
calibration chose to remove nothing). ``"full"`` (default, and every shipped config) lets ``G``
re-render every pixel from the holed image: the trivial attack is ``G``'s input, and ``G`` learns
the invariance in front of a frozen classifier.

Ablation switches (``PSSRConfig``): ``scorer`` (learned / gradient / random); ``use_surgery=False``
means *regeneration only*: nothing is removed, ``G`` sees the whole image with an all-zero mask
channel, and its output replaces **every** pixel (a full-image learned purifier; with an empty mask
and on-mask replacement it would be the identity, which tests nothing); ``use_regeneration=False``
means *surgery only*: removed pixels keep the non-learned ``fill`` (``local-mean`` inpaints them
from their neighbours).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pssr.attacks.adaptive import straight_through
from pssr.config import asdict, build
from pssr.defense.regeneration import CONDITIONS, Regenerator, compose
from pssr.defense.scoring import SCORERS, TARGETS, create_scorer
from pssr.defense.surgery import FILLS, MASK_MODES, apply_fill
from pssr.utils import eval_mode, load_checkpoint, run_metadata, save_checkpoint

FORMAT = "pssr.defense.PSSR"
FORMAT_VERSION = 1
BPDA_MODES = ("identity", "mask-constant")


@dataclasses.dataclass(frozen=True)
class PSSRConfig:
    """Everything that defines a PSSR defense and its training. Saved inside every checkpoint."""

    # --- Pixel Surgery ---
    scorer: str = "learned"  # learned | gradient | random
    scorer_width: int = 16  # channels of the learned scorer's first U-Net level
    scorer_depth: int = 2  # 2x down-samplings in the learned scorer
    scorer_target: str = "delta-grad"  # learned scorer's target: delta | delta-grad
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

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"PSSRConfig.{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        need(self.scorer in SCORERS, "scorer", ", ".join(SCORERS.list()))
        need(self.scorer_target in TARGETS, "scorer_target", ", ".join(TARGETS.list()))
        need(self.mask_mode in MASK_MODES, "mask_mode", ", ".join(MASK_MODES))
        need(self.fill in FILLS, "fill", ", ".join(FILLS.list()))
        need(self.condition in CONDITIONS, "condition", ", ".join(CONDITIONS))
        need(self.restore_scope in ("mask", "full"), "restore_scope", "mask, full")
        need(self.adv_mode in ("cache", "online"), "adv_mode", "cache, online")
        need(self.adv_target in ("classifier", "pipeline"), "adv_target", "classifier, pipeline")
        need(
            self.adv_target == "classifier" or self.adv_mode == "online",
            "adv_target",
            "'pipeline' only with adv_mode='online' (the pipeline changes while it trains)",
        )
        need(
            math.isfinite(self.classifier_lr) and self.classifier_lr >= 0.0,
            "classifier_lr",
            ">= 0 (0 = frozen)",
        )
        need(0.0 <= self.ratio <= 1.0, "ratio", "[0, 1]")
        need(0.0 <= self.threshold <= 1.0, "threshold", "[0, 1]")
        need(0.0 <= self.fill_value <= 1.0, "fill_value", "[0, 1]")
        need(0.0 <= self.fgsm_fraction <= 1.0, "fgsm_fraction", "[0, 1]")
        need(math.isfinite(self.eps) and 0.0 <= self.eps <= 1.0, "eps", "[0, 1]")
        need(self.pgd_alpha >= 0.0, "pgd_alpha", ">= 0 (0 = 2.5 * eps / pgd_steps)")
        for name in ("scorer_width", "gen_width", "pgd_steps", "batch_size"):
            need(getattr(self, name) >= 1, name, ">= 1")
        for name in (
            "scorer_depth",
            "gen_depth",
            "epochs",
            "train_subset",
            "val_size",
            "seed",
            "random_seed",
        ):
            need(getattr(self, name) >= 0, name, ">= 0")
        need(self.lr > 0, "lr", "> 0")
        for f in dataclasses.fields(self):
            if f.name.startswith("w_"):
                need(getattr(self, f.name) >= 0, f.name, ">= 0")
        if not (self.use_surgery or self.use_regeneration):
            raise ValueError(
                "PSSRConfig: use_surgery and use_regeneration cannot both be false (nothing would be purified)"
            )

    @property
    def alpha(self) -> float:
        return self.pgd_alpha if self.pgd_alpha > 0 else 2.5 * self.eps / self.pgd_steps


def scorer_kwargs(cfg: PSSRConfig, channels: int) -> dict[str, Any]:
    per_name = {
        "learned": {"width": cfg.scorer_width, "depth": cfg.scorer_depth},
        "gradient": {"times_input": cfg.gradient_times_input},
        "random": {"seed": cfg.random_seed},
    }
    return {"channels": channels, **per_name.get(cfg.scorer, {})}


def classifier_spec_of(model: nn.Module) -> dict[str, Any] | None:
    """``{"name", "kwargs"}`` to rebuild ``model`` with ``pssr.models.create_model``, if recorded.

    Looked up on the attribute ``pssr_spec`` (set by ``pssr.train.classifier`` and by PSSR.load).
    """
    spec = getattr(model, "pssr_spec", None)
    if isinstance(spec, dict) and "name" in spec:
        return {"name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}
    return None


class PSSR(nn.Module):
    """Remove-then-restore purifier + frozen classifier. ``forward(x) = classifier(purify(x))``.

    Args:
        classifier: any ``nn.Module`` mapping images in [0, 1] to logits (kept frozen here).
        config: the :class:`PSSRConfig`.
        image_shape: (C, H, W) the defense accepts.
        num_classes: classifier outputs (inferred with one forward pass when None).
        scorer, generator: trained modules (built fresh from ``config`` when None).
        classifier_spec: ``{"name", "kwargs"}`` for ``create_model`` so that :meth:`save` can write a
            self-contained checkpoint (default: ``classifier.pssr_spec`` if present).
    """

    def __init__(
        self,
        classifier: nn.Module,
        config: PSSRConfig | None = None,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int | None = None,
        scorer: nn.Module | None = None,
        generator: nn.Module | None = None,
        classifier_spec: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise ValueError(
                f"classifier must be an nn.Module returning logits, got {type(classifier).__name__}"
            )
        config = config or PSSRConfig()
        if not isinstance(config, PSSRConfig):
            raise ValueError(f"config must be a PSSRConfig, got {type(config).__name__}")
        if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
        self.config = config
        self.image_shape = tuple(int(s) for s in image_shape)
        c = self.image_shape[0]
        # PSSR itself never updates the classifier; train_pssr keeps it frozen unless config.classifier_lr > 0
        self.classifier = classifier
        if num_classes is None:  # one forward pass; a model that cannot take image_shape is a ValueError
            from pssr.models.common import check_input_shape

            num_classes = check_input_shape(
                classifier, self.image_shape, "images of the image_shape given to PSSR"
            )
        self.num_classes = int(num_classes)
        self.scorer = (
            scorer if scorer is not None else create_scorer(config.scorer, **scorer_kwargs(config, c))
        )
        if config.use_regeneration:
            self.generator = (
                generator
                if generator is not None
                else Regenerator(
                    c,
                    width=config.gen_width,
                    depth=config.gen_depth,
                    condition=config.condition,
                    num_classes=self.num_classes,
                )
            )
        else:
            self.generator = None
        self.classifier_spec = classifier_spec or classifier_spec_of(classifier)
        self.metrics: dict[str, Any] = {}

    # ---------------- validation ----------------
    def check_input(self, x: Tensor) -> None:
        """ValueError unless ``x`` is a finite float (N, C, H, W) tensor in [0, 1] of the right size."""
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"x must have (C, H, W) = {self.image_shape} (channels and size of this defense), "
                f"got {tuple(x.shape[1:])}"
            )
        if not x.is_floating_point():
            raise ValueError(f"x must be a float tensor with pixels in [0, 1], got dtype {x.dtype}")
        if x.shape[0] == 0:
            return
        xd = x.detach()
        if not torch.isfinite(xd).all():
            raise ValueError("x contains NaN or infinite values")
        lo, hi = float(xd.min()), float(xd.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"x must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")

    def _param_like(self, x: Tensor) -> Tensor:
        return x.float()

    # ---------------- the pipeline ----------------
    def score(self, x: Tensor) -> Tensor:
        """Pixel scores (N, 1, H, W), float32, no gradient."""
        self.check_input(x)
        with eval_mode(self.scorer, self.classifier), torch.no_grad():
            return self.scorer(self._param_like(x.detach()), self.classifier).detach().float()

    def mask(self, x: Tensor) -> Tensor:
        """Removal mask (N, 1, H, W) in {0, 1} (all zeros for regeneration only)."""
        if not self.config.use_surgery:
            self.check_input(x)
            return torch.zeros(x.shape[0], 1, *x.shape[2:], device=x.device)
        s = self.score(x)
        arg = self.config.ratio if self.config.mask_mode == "topk" else self.config.threshold
        return MASK_MODES[self.config.mask_mode](s, arg).to(x.device)

    def restore(self, x: Tensor, mask: Tensor) -> Tensor:
        """Surgery + regeneration for a *given* mask; differentiable in ``x``. Same dtype as ``x``."""
        cfg = self.config
        xf = self._param_like(x)
        m = mask.to(xf.dtype)
        with eval_mode(self.generator, self.classifier):
            if not cfg.use_surgery:  # regeneration only: G rewrites every pixel
                cond = self.classifier(xf) if cfg.condition == "logits" else None
                return self.generator(xf, m, cond).to(x.dtype)
            holed = apply_fill(xf, m, cfg.fill, cfg.fill_value)
            if self.generator is None:  # surgery only
                return compose(x, holed, m)
            cond = self.classifier(holed) if cfg.condition == "logits" else None
            generated = self.generator(holed, m, cond)
            if (
                cfg.restore_scope == "full"
            ):  # G also re-renders the kept pixels (the trivial attack is its input)
                return generated.to(x.dtype)
            return compose(x, generated, m)

    def purify(self, x: Tensor) -> Tensor:
        """Purified images: same shape, dtype and device as ``x``, in [0, 1].

        Gradients (if ``x`` requires them) flow through the fill and ``G`` with the mask constant.
        """
        return self.restore(x, self.mask(x))

    def forward(self, x: Tensor) -> Tensor:
        x_p = self.purify(x)
        with eval_mode(self.classifier):
            return self.classifier(x_p.to(self._param_like(x).dtype))

    def bpda(self, mode: str = "identity") -> nn.Module:
        """A view with the same forward and a backward for adaptive attacks (see module docstring)."""
        return BPDAView(self, mode)

    # ---------------- persistence ----------------
    def state(self) -> dict[str, Any]:
        """The checkpoint dict. The classifier's weights are always in it; its registry name and
        kwargs (``classifier_spec``) too when known, so that :meth:`load` rebuilds it alone. A model
        of your own is saved by its weights and class name: load it with ``PSSR.load(path,
        classifier=model)``."""
        from pssr.models.common import describe_model

        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
        spec = self.classifier_spec or {"name": None, "kwargs": {}}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": asdict(self.config),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "classifier": {
                **spec,
                "class": describe_model(self.classifier),
                "state_dict": cpu(self.classifier.state_dict()),
            },
            "scorer": {
                "name": self.config.scorer,
                "kwargs": dict(getattr(self.scorer, "kwargs", {})),
                "state_dict": cpu(self.scorer.state_dict()),
            },
            "generator": None
            if self.generator is None
            else {"kwargs": dict(self.generator.kwargs), "state_dict": cpu(self.generator.state_dict())},
            "metrics": _plain(dict(self.metrics)),
            "metadata": _plain(run_metadata()),
        }

    def save(self, path: str | Path) -> Path:
        """One self-describing checkpoint (plain tensors and types; ``torch.load(weights_only=True)``)."""
        return save_checkpoint(path, self.state())

    @classmethod
    def from_state(
        cls,
        ck: dict[str, Any],
        device: str | torch.device | None = None,
        classifier: nn.Module | None = None,
    ) -> PSSR:
        """Rebuild from :meth:`state`'s dict; ``classifier``: the module to load the saved classifier
        weights into (required when the checkpoint's classifier is not a registered model)."""
        if ck.get("format") != FORMAT:
            raise ValueError(f"not a PSSR checkpoint (format={ck.get('format')!r}, expected {FORMAT!r})")
        if int(ck.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(
                f"PSSR checkpoint format_version {ck['format_version']} is newer than this pssr ({FORMAT_VERSION})"
            )
        cfg = build(PSSRConfig, ck["config"])
        clf, spec = _classifier_from_state(ck["classifier"], classifier)
        if getattr(clf, "image_shape", None) is None:  # the shape it serves, for check_input_shape
            clf.image_shape = tuple(int(s) for s in ck["image_shape"])
        clf.eval()
        scorer = create_scorer(ck["scorer"]["name"], **ck["scorer"]["kwargs"])
        scorer.load_state_dict(ck["scorer"]["state_dict"])
        gen = None
        if ck.get("generator") is not None:
            gen = Regenerator(**ck["generator"]["kwargs"])
            gen.load_state_dict(ck["generator"]["state_dict"])
        model = cls(
            clf,
            cfg,
            image_shape=tuple(ck["image_shape"]),
            num_classes=int(ck["num_classes"]),
            scorer=scorer,
            generator=gen,
            classifier_spec=spec,
        )
        model.metrics = dict(ck.get("metrics", {}))
        model.eval()
        return model.to(device) if device is not None else model

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, classifier: nn.Module | None = None
    ) -> PSSR:
        """Rebuild a PSSR from a checkpoint written by :meth:`save`, its classifier included.

        ``classifier``: your own model (any ``nn.Module`` of the saved architecture); the saved
        classifier weights are loaded into it. Needed when the checkpoint's classifier is not a
        registered pssr model; its parameter names and shapes must match the saved ones."""
        try:
            return cls.from_state(load_checkpoint(path), device=device, classifier=classifier)
        except ValueError as e:
            if str(path) in str(e):
                raise
            raise ValueError(f"{path}: {e}") from e


def _classifier_from_state(
    saved: dict[str, Any], classifier: nn.Module | None
) -> tuple[nn.Module, dict[str, Any] | None]:
    """(classifier with the saved weights, its ``{"name", "kwargs"}`` or None for a model of your own)."""
    from pssr.models import create_model, load_matching_weights

    name, kwargs = saved.get("name"), dict(saved.get("kwargs") or {})
    spec = {"name": name, "kwargs": kwargs} if name else None
    if classifier is None:
        if not name:
            raise ValueError(
                f"the checkpoint's classifier is a model of your own ({saved.get('class', 'class unknown')}), "
                "which pssr cannot rebuild alone; load it in Python with PSSR.load(path, classifier=model)"
            )
        classifier = create_model(name, **kwargs)
    elif not isinstance(classifier, nn.Module):
        raise ValueError(f"classifier must be an nn.Module, got {type(classifier).__name__}")
    else:
        spec = classifier_spec_of(classifier) or spec
    what = (
        f"the checkpoint's classifier ({saved['class']})"
        if saved.get("class")
        else "the checkpoint's classifier"
    )
    load_matching_weights(classifier, saved["state_dict"], what)
    if spec is not None:
        classifier.pssr_spec = spec
    return classifier, spec


def _plain(obj: Any) -> Any:
    """Plain JSON types only (``torch.__version__`` is a str subclass that weights_only loading refuses)."""
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, Tensor) else str(o)))


class BPDAView(nn.Module):
    """``defense.bpda(mode)``: same outputs as ``defense(x)``; backward per ``mode``.

    * ``"identity"``: d purify(x) / dx := I (BPDA with the identity approximation).
    * ``"mask-constant"``: exact gradient through the fill and ``G`` with the mask held fixed.
    """

    def __init__(self, defense: PSSR, mode: str = "identity") -> None:
        super().__init__()
        if mode not in BPDA_MODES:
            raise ValueError(f"bpda mode={mode!r} not supported; choose from {BPDA_MODES}")
        self.defense, self.mode = defense, mode

    def forward(self, x: Tensor) -> Tensor:
        d = self.defense
        if self.mode == "identity":
            with torch.no_grad():
                x_pure = d.purify(x.detach())
            x_in = straight_through(x, x_pure)  # forward: x_pure exactly
        else:
            with torch.no_grad():
                m = d.mask(x.detach())
            x_in = d.restore(x, m)
        with eval_mode(d.classifier):
            return d.classifier(x_in.float())


# files in, files out (pssr purify) live in pssr.defense.files; these names stay importable from here
from pssr.defense.files import purify_files, read_image, write_image  # noqa: E402, F401
