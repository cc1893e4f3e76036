"""Models from the command line: checkpoint paths and baseline specs, and an end-to-end evaluation.

Model spec syntax (one per ``--checkpoint``)::

    [NAME=]PATH                               a checkpoint written by pssr
    [NAME=]BASELINE[:KEY=VALUE[,KEY=VALUE]]@PATH   an input-transform baseline around PATH's classifier

* ``PATH`` is a PSSR checkpoint (``PSSR.save``; loaded with :meth:`pssr.defense.pssr.PSSR.load`), a
  training checkpoint of a classifier / adversarially trained model (loaded with
  :func:`pssr.train.classifier.load_classifier`), or the name of a pretrained model of the zoo
  (``fashion-mnist/pssr``, ``pssr zoo list``), verified and read from its local copy. For a baseline on a PSSR checkpoint, the baseline
  wraps the PSSR's classifier.
* ``BASELINE`` is a name of :data:`pssr.defense.baselines.BASELINES` (``jpeg``, ``bit-depth``,
  ``median``, ``tvm``, ``identity``); values are parsed as int, float, true/false, else kept as text.
* ``NAME`` labels the model in the report; default: ``pssr`` for a PSSR checkpoint, the file stem
  for a classifier, ``jpeg(quality=60)`` style for a baseline.

Examples: ``runs/digits/classifier.pt``, ``none=runs/digits/classifier.pt``,
``jpeg:quality=60@runs/digits/classifier.pt``, ``tvm:lam=0.1,keep=0.5@runs/digits/classifier.pt``.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from torch import nn

from pssr.utils import load_checkpoint

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^([A-Za-z0-9_.()\-]+)=(.+)$")


def parse_value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_eps(text: str) -> list[float]:
    """``"0.1,8/255"`` -> ``[0.1, 0.0313...]`` (fractions allowed)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(float(Fraction(part)))
        except (ValueError, ZeroDivisionError) as e:
            raise ValueError(
                f"--eps: cannot read {part!r} as a number or fraction (e.g. 0.3 or 8/255)"
            ) from e
    if not out:
        raise ValueError(f"--eps: no values in {text!r}")
    return out


def _load_path(path: str) -> tuple[nn.Module, str, dict[str, Any]]:
    """(model, kind, checkpoint) for a PSSR or training checkpoint, or a zoo model's name
    (``fashion-mnist/pssr``: its verified fp32 copy, see :mod:`pssr.zoo`)."""
    from pssr.zoo import resolve

    path = resolve(path) if not Path(path).exists() else path
    ck = load_checkpoint(path)
    from pssr.defense.pssr import FORMAT, PSSR

    if ck.get("format") == FORMAT:
        return PSSR.from_state(ck), "pssr", ck
    if "model" in ck and "state_dict" in ck:
        from pssr.train.classifier import load_classifier

        return load_classifier(path, device=None), "classifier", ck
    raise ValueError(
        f"{path}: neither a PSSR checkpoint nor a pssr training checkpoint (keys: {sorted(ck)[:8]})"
    )


def load_model_spec(spec: str) -> tuple[str, nn.Module, dict[str, Any]]:
    """``(name, model, info)`` for one model spec (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty model spec {spec!r}")
    spec = spec.strip()
    name = None
    m = _NAME_RE.match(spec)
    if m and not Path(spec).exists():
        name, spec = m.group(1), m.group(2)
    if "@" in spec and not Path(spec).exists():
        head, _, path = spec.partition("@")
        base, _, args = head.partition(":")
        kw = {}
        for item in filter(None, (a.strip() for a in args.split(","))):
            k, eq, v = item.partition("=")
            if not eq or not k.strip():
                raise ValueError(f"baseline argument {item!r} in {spec!r} is not KEY=VALUE")
            kw[k.strip()] = parse_value(v)
        from pssr.defense.baselines import create_baseline, list_baselines

        if base.strip().lower() not in list_baselines():
            raise ValueError(
                f"unknown baseline {base!r} in {spec!r}; available: {', '.join(list_baselines())}"
            )
        inner, kind, ck = _load_path(path)
        clf = inner.classifier if kind == "pssr" else inner
        model = create_baseline(base.strip().lower(), clf, **kw)
        default = base.strip().lower() + (f"({','.join(f'{k}={v}' for k, v in kw.items())})" if kw else "")
        return (
            name or default,
            model,
            {"kind": f"baseline:{base}", "path": path, "checkpoint": ck, "kwargs": kw},
        )
    model, kind, ck = _load_path(spec)
    zoo_name = not Path(spec).exists()  # a zoo name such as fashion-mnist/pssr
    return (
        name or (spec.replace("/", "-") if zoo_name else "pssr" if kind == "pssr" else Path(spec).stem),
        model,
        {"kind": kind, "path": spec, "checkpoint": ck},
    )


def load_models(specs: Sequence[str]) -> tuple[dict[str, nn.Module], dict[str, dict[str, Any]]]:
    models: dict[str, nn.Module] = {}
    infos: dict[str, dict[str, Any]] = {}
    for s in specs:
        name, model, info = load_model_spec(s)
        if name in models:
            raise ValueError(f"two models are named {name!r}; name them with NAME=SPEC")
        models[name], infos[name] = model, info
    return models, infos


def checkpoint_data(infos: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The [data] settings stored in the first checkpoint that has them (a training checkpoint's
    ``data``; a PSSR checkpoint's ``metrics["data"]``, written by ``pssr train-pssr``)."""
    for info in infos.values():
        ck = info["checkpoint"]
        metrics = ck.get("metrics")
        for d in (ck.get("data"), metrics.get("data") if isinstance(metrics, dict) else None):
            if isinstance(d, dict) and d.get("name"):
                return d
    return {}


def evaluate_checkpoints(
    specs: Sequence[str],
    out: str | Path,
    data: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    attacks: str = "paper,adaptive",
    eps: str | Sequence[float] | None = None,
    resume: bool = False,
    fresh: bool = False,
    **kwargs: Any,
) -> Any:
    """Load models from ``specs``, evaluate them (state in ``out/state``), save the report in ``out``.

    The dataset defaults to the one recorded in the first training checkpoint (with its split seed
    and validation fraction). A rerun with the same arguments resumes from ``out/state``;
    ``resume=True`` insists that such a state exists, ``fresh=True`` discards it first. Other keyword
    arguments go to :func:`pssr.evaluation.evaluate`. Returns the :class:`Report`.
    """
    import pssr.data
    from pssr import distributed as D
    from pssr.evaluation.harness import evaluate

    if resume and fresh:
        raise ValueError("resume and fresh exclude each other")
    if not specs:
        raise ValueError("give at least one model (--checkpoint)")
    models, infos = load_models(specs)
    stored = checkpoint_data(infos)
    name = data or stored.get("name")
    if not name:
        raise ValueError("no dataset given and none recorded in the checkpoints; pass --data NAME")
    kw: dict[str, Any] = {}
    if stored.get("name") == name:
        kw.update({k: stored[k] for k in ("seed", "val_fraction", "data_dir") if stored.get(k) is not None})
    if data_dir is not None:
        kw["data_dir"] = data_dir
    ds = pssr.data.load(name, **kw)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split={split!r}; choose from train, val, test")
    out = Path(out)
    state_dir = out / "state"
    # Under torchrun: join the process group now (models are loaded on the CPU: gloo unless a CUDA
    # device is asked for), so that rank 0 alone touches OUT; the harness shards the work.
    info = D.init_distributed(_device_of(kwargs.get("device")))

    def prepare_state() -> None:
        if fresh and state_dir.exists():
            if not (state_dir / "state.json").exists():
                raise ValueError(f"{state_dir} is not an evaluation state folder; not deleting it")
            shutil.rmtree(state_dir)
        if resume and not (state_dir / "state.json").exists():
            raise ValueError(f"--resume: no evaluation state in {state_dir}")

    D.on_main(prepare_state, info)  # only rank 0 reads OUT; an error there is raised on every rank
    eps_list = parse_eps(eps) if isinstance(eps, str) else eps
    report = evaluate(
        models,
        getattr(ds, split),
        attacks=attacks,
        eps=eps_list,
        dataset=ds.name,
        state_dir=str(state_dir),
        **kwargs,
    )
    report.config["models_loaded_from"] = {
        k: {"kind": v["kind"], "path": str(v["path"]), **({"kwargs": v["kwargs"]} if "kwargs" in v else {})}
        for k, v in infos.items()
    }
    report.config["split"] = split
    D.on_main(lambda: report.save(out), info)  # rank 0 writes; the others wait for it
    return report


def _device_of(device: Any) -> Any:
    import torch

    from pssr.utils import default_device

    return torch.device("cpu") if device is None else default_device(device)


__all__ = [
    "checkpoint_data",
    "evaluate_checkpoints",
    "load_model_spec",
    "load_models",
    "parse_eps",
    "parse_value",
]


def script_module(path: str | Path) -> Any:
    """The Python file at ``path`` imported as a module (how one ``results/`` script uses another's
    attack list or evaluation instead of a copy of it)."""
    import importlib.util

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"script not found: {path}")
    name = "_".join(path.with_suffix("").parts[-3:]).replace("-", "_").replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
