"""``pssr train-adversarial``: an adversarial-training baseline (PGD-AT, TRADES) trained from a TOML
config file ([data] + [adv_train]); the options are the training commands' (:mod:`pssr.cli.training`)."""

from __future__ import annotations

import argparse
from typing import Any

from pssr.cli.training import add_output_options, add_training_options, train_from_config


def _train_adversarial(args: argparse.Namespace) -> int:
    from pssr.experiments.adversarial import run_from_config

    return train_from_config(args, "adv_train", run_from_config)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-adversarial",
        help="adversarial training baseline (PGD-AT, TRADES)",
        description="Adversarial training ([data] + [adv_train] tables of a TOML config).",
    )
    add_training_options(p, "adv_train", "configs/digits.toml")
    add_output_options(p, "<method>.pt and <method>.json")
    p.set_defaults(func=_train_adversarial)
