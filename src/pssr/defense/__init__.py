"""PSSR defense: Pixel Surgery (scoring + top-k removal) and Semantic Regeneration.

``PSSR(classifier, PSSRConfig(...))`` is the module (``forward = classifier(purify(x))``); its
``config`` is a ``DefenseConfig`` (what purify needs), its ``training_config`` a ``PSSRTrainConfig``
(how it was trained), and ``PSSRConfig`` the recipe holding both;
``pssr.train_pssr`` trains it. Building blocks: ``create_scorer`` / ``list_scorers``
(learned, gradient, random), ``topk_mask``, ``threshold_mask``, ``apply_fill``, ``Regenerator``.
"""

from pssr.defense.config import DefenseConfig, PSSRConfig, PSSRTrainConfig
from pssr.defense.pssr import PSSR, BPDAView
from pssr.defense.regeneration import Regenerator, UNet, compose
from pssr.defense.scoring import SCORERS, attack_share_target, create_scorer, list_scorers
from pssr.defense.surgery import FILLS, apply_fill, list_fills, threshold_mask, topk_mask

__all__ = [
    "FILLS",
    "PSSR",
    "SCORERS",
    "BPDAView",
    "DefenseConfig",
    "PSSRConfig",
    "PSSRTrainConfig",
    "Regenerator",
    "UNet",
    "apply_fill",
    "attack_share_target",
    "compose",
    "create_scorer",
    "list_fills",
    "list_scorers",
    "threshold_mask",
    "topk_mask",
]
