"""Pretrained models, ready offline: ``pssr.zoo.load("fashion-mnist/pssr")``.

The zoo's model cards are data (``cards.json`` beside this file, in the spirit of RobustBench's
model cards): each names a model ``"<dataset>/<kind>"`` (kind ``classifier``, ``pgd-at`` or
``pssr``), its file, sha256 and size, the commands that trained it and the accuracies measured on
the shipped file. Small files ship inside the package (``weights/``, half precision); a card may
instead name a ``url``, fetched into ``$PSSR_CACHE/zoo`` (default ``~/.cache/pssr/zoo``) and
verified before use (see docs/zoo.md). Every file is checked against its card's sha256 and read
with ``torch.load(weights_only=True)`` before a model is built in fp32::

    import pssr.zoo
    pssr.zoo.list_models()                     # ['digits/classifier', ..., 'fashion-mnist/pssr']
    defense = pssr.zoo.load("fashion-mnist/pssr")   # a pssr.PSSR (an nn.Module), eval mode
    x_pure = defense.purify(x)                      # x: (N, 1, 28, 28) in [0, 1]
    pssr.zoo.resolve("fashion-mnist/pssr")          # an fp32 checkpoint path for any pssr loader
"""

from __future__ import annotations

from pssr.zoo.store import (
    KINDS,
    ZooError,
    card,
    cards,
    is_model_name,
    list_models,
    load,
    path,
    read,
    resolve,
    zoo_cache_dir,
)

__all__ = [
    "KINDS",
    "ZooError",
    "card",
    "cards",
    "is_model_name",
    "list_models",
    "load",
    "path",
    "read",
    "resolve",
    "zoo_cache_dir",
]
