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


def _train_default_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="directory to train into (default: the user cache)")
    parser.add_argument("--base-steps", type=int, default=None, help="override the recipe's base-LM steps")
    parser.add_argument("--mac-steps", type=int, default=None, help="override the recipe's MAC steps")


def _train_default(ns: argparse.Namespace) -> int:
    from dataclasses import replace
    from pathlib import Path

    from .default import RECIPE, cache_dir, train_default

    recipe = RECIPE
    if ns.base_steps:
        recipe = replace(recipe, base=replace(recipe.base, steps=ns.base_steps))
    if ns.mac_steps:
        recipe = replace(recipe, mac=replace(recipe.mac, steps=ns.mac_steps))
    paths = train_default(recipe, Path(ns.out) if ns.out else cache_dir())
    print(f"default base LM: {paths.base_lm}\ndefault MAC checkpoint: {paths.checkpoint}")
    return 0


def _eval_args(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.protocol import add_arguments

    add_arguments(parser)


def _eval(ns: argparse.Namespace) -> int:
    from ..evaluation.protocol import run

    return run(ns)


COMMANDS: dict[str, tuple[str, Any, Any]] = {
    "train-base": ("Prepare the frozen base LM: QA warm-up of an existing LM, or a small LM from scratch.",
                   _train_base_args, _train_base),
    "train-default": ("Train (once) the embedded default: small base LM + MAC on the synthetic world.",
                      _train_default_args, _train_default),
    "train": ("Meta-train the amortization and aggregation networks on a frozen base LM.", _train_args, _train),
    "eval": ("Online-adaptation evaluation: MAC vs no memory, RAG and online fine-tuning (EM/F1, retention, time).",
             _eval_args, _eval),
}
