"""``train-base``, ``train``, ``train-default`` and ``eval``: training and evaluation from the shell."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from . import add_dataclass_arguments, dataclass_from_args


def _config_command(module: str, config: str, func: str, done: str) -> tuple[Any, Any]:
    """(add-arguments, run) for a command that is ``func(ConfigDataclass)`` in ``module`` (imported lazily)."""

    def add(parser: argparse.ArgumentParser) -> None:
        add_dataclass_arguments(parser, getattr(importlib.import_module(module), config))

    def run(ns: argparse.Namespace) -> int:
        mod = importlib.import_module(module)
        result = getattr(mod, func)(dataclass_from_args(getattr(mod, config), ns))
        print(done.format(result))
        return 0

    return add, run


def _train_default_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=None, help="directory to train into (default: the user cache)")
    parser.add_argument("--base-steps", type=int, default=None, help="train the base LM for N steps in one phase (instead of the recipe's two)")
    parser.add_argument("--gold-steps", type=int, default=None,
                        help="train the gold-memory MAC rung for N steps in one phase (0 = skip that rung)")
    parser.add_argument("--mac-steps", type=int, default=None, help="add (or resize) the batch-memory MAC rung after the gold one: N steps")
    parser.add_argument("--package", action="store_true",
                        help="then store it in float16 inside the package (mac_memory/assets/default), "
                             "the copy `MACMemory()` and `mac-memory demo` use first")


def _train_default(ns: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..training.default import RECIPE, cache_dir, train_default

    recipe = RECIPE
    if ns.base_steps:
        recipe = replace(recipe, base=replace(recipe.base, steps=ns.base_steps), base_continue=())
    if ns.gold_steps is not None:
        gold = replace(recipe.mac_gold, steps=ns.gold_steps) if ns.gold_steps and recipe.mac_gold else None
        recipe = replace(recipe, mac_gold=gold, mac_gold_continue=())
    if ns.mac_steps:
        from ..training.default import BATCH_RUNG

        recipe = replace(recipe, mac=replace(recipe.mac or BATCH_RUNG, steps=ns.mac_steps))
    paths = train_default(recipe, Path(ns.out) if ns.out else cache_dir())
    if ns.package:
        from ..training.default import package_default

        paths = package_default(paths)
    print(f"default base LM: {paths.base_lm}\ndefault MAC checkpoint: {paths.checkpoint}")
    return 0


def _eval_args(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.protocol import EvalConfig

    add_dataclass_arguments(parser, EvalConfig)


def _eval(ns: argparse.Namespace) -> int:
    """Evaluate, write the report, print its Markdown table."""
    from ..evaluation.protocol import EvalConfig, evaluate
    from ..evaluation.report import markdown_table

    config = dataclass_from_args(EvalConfig, ns)
    print(markdown_table(evaluate(config)))
    if config.out:
        out = Path(config.out)
        print(f"\nreport: {out} ({out.with_suffix('.md').name}, {out.with_suffix('.png').name})")
    return 0


def _calibrate_args(parser: argparse.ArgumentParser) -> None:
    from ..evaluation.calibrate import CalibrateConfig

    add_dataclass_arguments(parser, CalibrateConfig)


def _calibrate(ns: argparse.Namespace) -> int:
    """Sweep the retrieval prior's temperature, write the checkpoint, print the sweep."""
    from ..evaluation.calibrate import CalibrateConfig, calibrate

    result = calibrate(dataclass_from_args(CalibrateConfig, ns))
    print(f"mac (k={result['k']}) on {result['n_questions']} questions, {result['n_documents']} documents:")
    print("| retrieval temperature | EM | F1 |\n|---|---|---|")
    for row in result["sweep"]:
        name = "no prior" if row["temperature"] is None else row["temperature"]
        print(f"| {name} | {row['em']:.2f} | {row['f1']:.2f} |")
    print(f"chosen: {result['chosen']} → {result['checkpoint']}")
    return 0


COMMANDS: dict[str, tuple[str, Any, Any]] = {
    "train-base": ("Prepare the frozen base LM: QA warm-up of an existing LM, or a small LM from scratch.",
                   *_config_command("mac_memory.training.base_lm", "BaseTrainConfig", "train_base",
                                    "base LM written to {}")),
    "train-default": ("Train (once) the embedded default: small base LM + MAC on the synthetic world.",
                      _train_default_args, _train_default),
    "train": ("Meta-train the amortization and aggregation networks on a frozen base LM.",
              *_config_command("mac_memory.training.meta", "MetaTrainConfig", "train_mac",
                               "MAC checkpoint written to {}")),
    "eval": ("Online-adaptation evaluation: MAC vs no memory, RAG and online fine-tuning (EM/F1, retention, time).",
             _eval_args, _eval),
    "calibrate": ("Choose the retrieval prior's temperature for a checkpoint on validation questions.",
                  _calibrate_args, _calibrate),
}
