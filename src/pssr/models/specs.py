"""Checkpoint model specs: how a training checkpoint names its model so that it alone rebuilds it.

A pssr training checkpoint (:func:`pssr.train.loop.fit`) stores ``"model": {"name", "kwargs",
"class"}`` beside its ``"state_dict"``: the registry name and the keyword arguments of
:func:`pssr.models.create_model`. :func:`rebuild_model` turns such a checkpoint back into the module;
:func:`attach_spec` records the spec (and the image shape it was trained on) on a live module, so that
a PSSR checkpoint built around it can rebuild it too. Living here, beside the registry, they let
evaluation and the zoo load a classifier without importing the trainers.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def model_spec(model: nn.Module, name: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What :func:`rebuild_model` needs: the registry name and its keyword arguments."""
    return {"name": name, "kwargs": dict(kwargs), "class": type(model).__name__}


def attach_spec(
    model: nn.Module, spec: dict[str, Any] | None, data: dict[str, Any] | None = None
) -> nn.Module:
    """Record ``{"name", "kwargs"}`` on ``model.pssr_spec`` so a PSSR checkpoint can rebuild it, and the
    (C, H, W) it was trained on (a checkpoint's ``data``) on ``model.image_shape``: with it
    :func:`pssr.models.check_input_shape` refuses other images by name (adaptive pooling would otherwise
    let an 8x8 classifier run on 28x28 images without an error)."""
    if isinstance(spec, dict) and spec.get("name"):
        model.pssr_spec = {"name": spec["name"], "kwargs": dict(spec.get("kwargs", {}))}
    shape = (data or {}).get("image_shape")
    if isinstance(shape, (list, tuple)) and len(shape) == 3:
        model.image_shape = tuple(int(s) for s in shape)
    return model


def rebuild_model(ckpt: dict[str, Any]) -> nn.Module:
    """The model a pssr training checkpoint describes, with its weights, in eval mode, on CPU."""
    from pssr.models import create_model

    spec = ckpt.get("model")
    if not isinstance(spec, dict) or "state_dict" not in ckpt:
        raise ValueError("not a pssr training checkpoint (no 'model' spec / 'state_dict')")
    if not spec.get("name"):
        raise ValueError(
            f"the checkpoint holds a custom {spec.get('class')} that is not in the model registry; build the "
            "module yourself and load ckpt['state_dict'] into it"
        )
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    model.load_state_dict(ckpt["state_dict"])
    return attach_spec(model, spec, ckpt.get("data")).eval()


__all__ = ["attach_spec", "model_spec", "rebuild_model"]
