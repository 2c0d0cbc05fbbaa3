"""CLI wiring of the training and evaluation commands (``train-base``, ``train``, ``eval``)."""

from __future__ import annotations

import argparse
from typing import Any

from ..cli import add_dataclass_arguments, dataclass_from_args


def _train_base_args(parser: argparse.ArgumentParser) -> None:
    from .base_lm import BaseTrainConfig

    add_dataclass_arguments(parser, BaseTrainConfig)


def _train_base(ns: argparse.Namespace) -> int:
    from .base_lm import BaseTrainConfig, train_base

    path = train_base(dataclass_from_args(BaseTrainConfig, ns))
    print(f"base LM written to {path}")
    return 0


def _train_args(parser: argparse.ArgumentParser) -> None:
    from .meta import MetaTrainConfig

    add_dataclass_arguments(parser, MetaTrainConfig)


def _train(ns: argparse.Namespace) -> int:
    from .meta import MetaTrainConfig, train_mac

    path = train_mac(dataclass_from_args(MetaTrainConfig, ns))
    print(f"MAC checkpoint written to {path}")
    return 0


COMMANDS: dict[str, tuple[str, Any, Any]] = {
    "train-base": ("Prepare the frozen base LM: QA warm-up of an existing LM, or a small LM from scratch.",
                   _train_base_args, _train_base),
    "train": ("Meta-train the amortization and aggregation networks on a frozen base LM.", _train_args, _train),
}
