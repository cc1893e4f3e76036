"""``pssr train-classifier``: a classifier trained from a TOML config file ([data] + [classifier]);
the options are the training commands' (:mod:`pssr.cli.training`)."""

from __future__ import annotations

import argparse
from typing import Any

from pssr.cli.training import add_output_options, add_training_options, train_from_config


def _train_classifier(args: argparse.Namespace) -> int:
    from pssr.experiments.classifier import run_from_config

    return train_from_config(args, "classifier", run_from_config)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-classifier",
        help="train a classifier from a config file",
        description="Train a classifier ([data] + [classifier] tables of a TOML config).",
    )
    add_training_options(p, "classifier", "configs/digits.toml")
    add_output_options(p, "classifier.pt and classifier.json")
    p.set_defaults(func=_train_classifier)
