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

Ablation switches (:class:`~pssr.defense.config.DefenseConfig`): ``scorer`` (learned / gradient / random); ``use_surgery=False``
means *regeneration only*: nothing is removed, ``G`` sees the whole image with an all-zero mask
channel, and its output replaces **every** pixel (a full-image learned purifier; with an empty mask
and on-mask replacement it would be the identity, which tests nothing); ``use_regeneration=False``
means *surgery only*: removed pixels keep the non-learned ``fill`` (``local-mean`` inpaints them
from their neighbours).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pssr.attacks.adaptive import straight_through
from pssr.config import asdict, build
from pssr.defense.config import DEFENSE_FIELDS, DefenseConfig, PSSRConfig, PSSRTrainConfig, split_flat
from pssr.defense.regeneration import Regenerator, compose
from pssr.defense.scoring import create_scorer
from pssr.defense.surgery import MASK_MODES, apply_fill
from pssr.utils import eval_mode, load_checkpoint, run_metadata, save_checkpoint

FORMAT = "pssr.defense.PSSR"
FORMAT_VERSION = 2  # 2: the defense's config and its training config apart (1: one flat config)
BPDA_MODES = ("identity", "mask-constant")


def scorer_kwargs(cfg: DefenseConfig, channels: int) -> dict[str, Any]:
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
        config: the defense's :class:`~pssr.defense.config.DefenseConfig`, or a
            :class:`~pssr.defense.config.PSSRConfig` recipe (its ``defense`` part becomes ``config``,
            its ``training`` part ``training``).
        image_shape: (C, H, W) the defense accepts.
        num_classes: classifier outputs (inferred with one forward pass when None).
        scorer, generator: trained modules (built fresh from ``config`` when None).
        classifier_spec: ``{"name", "kwargs"}`` for ``create_model`` so that :meth:`save` can write a
            self-contained checkpoint (default: ``classifier.pssr_spec`` if present).
        training: how this defense was trained (:class:`~pssr.defense.config.PSSRTrainConfig`),
            kept as provenance in ``training_config`` and saved with it; None when unknown (the
            recipe's, when ``config`` is a recipe).

    ``config`` is fixed for the module's life: :meth:`with_config` builds a defense with another
    ratio (or any other field) around the same scorer, generator and classifier.
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
        training: PSSRTrainConfig | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(classifier, nn.Module):
            raise ValueError(
                f"classifier must be an nn.Module returning logits, got {type(classifier).__name__}"
            )
        config = config or DefenseConfig()
        if isinstance(config, PSSRConfig):  # a recipe: the defense keeps its two parts apart
            training = training if training is not None else config.training
            config = config.defense
        if not isinstance(config, DefenseConfig):
            raise ValueError(f"config must be a DefenseConfig or a PSSRConfig, got {type(config).__name__}")
        if training is not None and not isinstance(training, PSSRTrainConfig):
            raise ValueError(f"training must be a PSSRTrainConfig or None, got {type(training).__name__}")
        if len(image_shape) != 3 or any(int(s) < 1 for s in image_shape):
            raise ValueError(f"image_shape must be (C, H, W) of positive ints, got {image_shape!r}")
        self.config = config
        self.training_config = training
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

    def with_config(self, **changes: Any) -> PSSR:
        """A new defense whose config has ``changes`` (e.g. ``ratio=0.05``), around the *same* scorer,
        generator and classifier modules (shared, not copied); this one is left as it is.

        Only what ``purify`` reads at run time may change (``ratio``, ``threshold``, ``mask_mode``,
        ``fill``, ``fill_value``, ``restore_scope``, ...); fields that define the modules' shapes
        (scorer kind and sizes, generator sizes, condition, use_regeneration) raise ValueError."""
        unknown = sorted(set(changes) - set(DEFENSE_FIELDS))
        if unknown:
            raise ValueError(f"with_config: unknown DefenseConfig field(s) {', '.join(unknown)}")
        fixed = sorted(k for k in changes if k in _MODULE_FIELDS and changes[k] != getattr(self.config, k))
        if fixed:
            raise ValueError(
                f"with_config cannot change {', '.join(fixed)}: they define the trained modules; build "
                "and train another PSSR instead"
            )
        other = type(self)(
            self.classifier,
            dataclasses.replace(self.config, **changes),
            image_shape=self.image_shape,
            num_classes=self.num_classes,
            scorer=self.scorer,
            generator=self.generator,
            classifier_spec=self.classifier_spec,
            training=self.training_config,
        )
        other.metrics = dict(self.metrics)
        other.train(self.training)  # nn.Module's train/eval flag
        return other

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
            "training": None if self.training_config is None else asdict(self.training_config),
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
        cfg, training = _configs_from_state(ck)
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
            training=training,
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


# fields that shape the scorer and generator modules: with_config may not change them
_MODULE_FIELDS = (
    "scorer",
    "scorer_width",
    "scorer_depth",
    "gradient_times_input",
    "random_seed",
    "gen_width",
    "gen_depth",
    "condition",
    "use_regeneration",
)


def _configs_from_state(ck: dict[str, Any]) -> tuple[DefenseConfig, PSSRTrainConfig | None]:
    """(defense config, training config or None) of a checkpoint dict; a format-1 checkpoint held
    both in one flat ``config``."""
    if int(ck.get("format_version", 1)) < 2:
        defense, training = split_flat(dict(ck["config"]))
        return build(DefenseConfig, defense), build(PSSRTrainConfig, training)
    training = ck.get("training")
    return build(DefenseConfig, ck["config"]), None if training is None else build(PSSRTrainConfig, training)


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
