"""The embedded default: a small base LM + MAC networks trained by this project on its synthetic world.

No pretrained causal LM can be downloaded on an offline machine, so ``MACMemory()`` and ``mac-memory
demo`` use a model this project trains itself. :func:`default_paths` finds it, in this order:

1. ``$MAC_MEMORY_CHECKPOINT`` (a MAC checkpoint dir; its recorded base LM is loaded);
2. the copy shipped inside the package (``mac_memory/assets/default/{base_lm,mac}``), when present;
3. the user cache (``$MAC_MEMORY_HOME`` or ``~/.cache/mac-memory``)/``default-v6/{base_lm,mac}``;
4. otherwise, with ``train=True``, it is trained once with :data:`RECIPE` (progress bars; an interrupted
   run resumes where it stopped) and cached; without, a clear error says how to get it.

``mac-memory train-default`` reproduces it (e.g. with more steps on a GPU) into the cache or ``--out``.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..data.synthetic import YEARS
from ..errors import CheckpointError
from ..evaluation.calibrate import CalibrateConfig, calibrate
from .base_lm import BaseTrainConfig, train_base
from .meta import MetaTrainConfig, train_mac

logger = logging.getLogger(__name__)

VERSION = "default-v6"  # v6: base LM to 18,000 steps (5 phases; the 5th adds one token per year), 9,000 gold MAC steps, calibrated prior
PACKAGED = Path(__file__).resolve().parent.parent / "assets" / "default"


@dataclass(frozen=True)
class DefaultPaths:
    """Where the default base LM and MAC checkpoint live."""

    base_lm: Path
    checkpoint: Path


_BASE = BaseTrainConfig(
    world_entities=4000, vocab_size=1024, hidden_size=128, num_layers=3, num_heads=4, num_kv_heads=2,
    steps=3000, batch_size=16, lr=2e-3, warmup=100, eval_every=500, max_length=256,
    reading_questions=7, text_weight=0.25, reading_fraction=0.85, qa_fraction=0.08)


@dataclass
class DefaultRecipe:
    """How the embedded default is trained (about 3 h 40 min on a 2-core CPU; the shipped copy saves that)."""

    base: BaseTrainConfig = field(default_factory=lambda: _BASE)
    base_continue: tuple[BaseTrainConfig, ...] = ()
    """Then resume the same base-LM run, phase after phase, to more steps with a new peak learning rate
    each (warm restarts of the cosine schedule; () = one phase). Reading kept improving after each."""
    mac_gold: MetaTrainConfig | None = field(default_factory=lambda: _GOLD)
    """First rung of the ladder: each question sees only its own document (None = skip)."""
    mac_gold_continue: tuple[MetaTrainConfig, ...] = ()
    """More gold-memory phases, each starting from the one before (lower peak learning rates, other seeds;
    () = none). Run directories ``mac-gold2-run``, ``mac-gold3-run``..."""
    mac: MetaTrainConfig | None = field(default_factory=lambda: BATCH_RUNG)
    """Then the paper's objective: the batch's documents are the memory (starts from ``mac_gold``; None =
    ship the gold rung)."""
    calibration: CalibrateConfig | None = field(default_factory=CalibrateConfig)
    """Last, the retrieval prior's temperature, chosen on the world's validation split (None = no prior)."""


_GOLD = MetaTrainConfig(
    world_entities=4000, num_tokens=8, d_mem=128, agg_layers=2, agg_heads=4, window=16, memory="gold",
    readout="slot", steps=3000, batch_size=16, lr=3e-3, warmup=60, eval_every=500, eval_questions=64)

BATCH_RUNG = MetaTrainConfig(
    world_entities=4000, num_tokens=8, d_mem=128, agg_layers=2, agg_heads=4, window=16, memory="batch",
    readout="slot", steps=1500, batch_size=16, lr=1e-3, warmup=50, eval_every=500, eval_questions=64)
"""The batch rung as tried for v3: 1,500 steps from the gold rung did not learn to select (validation F1
with the batch as memory 7.8 → 9.4) and cost gold-memory F1 (57.8 → 54.7), so v3 ships the gold rung."""

RECIPE = DefaultRecipe(base_continue=(replace(_BASE, steps=6000, lr=1e-3), replace(_BASE, steps=9000, lr=5e-4),
                                      replace(_BASE, steps=13500, lr=2e-3),
                                      replace(_BASE, steps=18000, lr=3e-3, number_tokens=f"{YEARS[0]}-{YEARS[-1]}")),
                       mac_gold_continue=(replace(_GOLD, lr=1.5e-3, seed=1), replace(_GOLD, lr=1e-3, seed=2)), mac=None)
"""v5: phase 4 (9,000 → 13,500 steps, a warm restart at a higher peak rate) taught the LM to read colours
(10 → 100 F1 on held-out people). v6: phase 5 (→ 18,000) gives every year of the world one token; the LM
had copied a year's first BPE piece and guessed the second (birth year 8 F1) — 500 steps later it read
years (43, then 93 at 1,000 steps). The same phase without the year tokens (→ 17,000) had not helped.
A third gold-memory MAC phase (lr 1e-3, seed 2) was still gaining on the stronger LM."""


def cache_dir() -> Path:
    from ..base_lms import cache_root

    return cache_root() / VERSION


def _complete(paths: DefaultPaths) -> bool:
    return (paths.base_lm / "config.json").is_file() and (paths.checkpoint / "mac_manifest.json").is_file()


def default_paths(train: bool = False, recipe: DefaultRecipe | None = None, out: Path | None = None
                  ) -> DefaultPaths:
    """The default base LM and checkpoint, training them once (``train=True``) when none exists yet."""
    env = os.environ.get("MAC_MEMORY_CHECKPOINT")
    if env:
        from ..config import MACConfig

        ckpt = Path(env)
        return DefaultPaths(Path(MACConfig.load(ckpt / "mac_config.json").base_lm.name_or_path), ckpt)
    if out is None:
        packaged = DefaultPaths(PACKAGED / "base_lm", PACKAGED / "mac")
        if _complete(packaged):
            return packaged
    root = out or cache_dir()
    cached = DefaultPaths(root / "base_lm", root / "mac")
    if _complete(cached):
        return cached
    if not train:
        raise CheckpointError(
            "There is no default checkpoint yet. Run `mac-memory demo` (trains it once, minutes on a CPU) "
            "or `mac-memory train-default`, or pass checkpoint=<dir> / set MAC_MEMORY_CHECKPOINT."
        )
    return train_default(recipe or RECIPE, root)


def train_default(recipe: DefaultRecipe, root: Path) -> DefaultPaths:
    """Train the base LM, then the MAC networks, into ``root`` (resumable; idempotent once complete)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = DefaultPaths(root / "base_lm", root / "mac")
    if not (paths.base_lm / "config.json").is_file():
        logger.info("Training the default base LM (once) into %s", root)
        final = train_base(replace(recipe.base, out=str(root / "base-run"), resume=True))
        for phase in recipe.base_continue:
            final = train_base(replace(phase, out=str(root / "base-run"), resume=True))
        shutil.copytree(final, paths.base_lm, dirs_exist_ok=True)
    if not (paths.checkpoint / "mac_manifest.json").is_file():
        logger.info("Meta-training the default MAC networks (once) into %s", root)
        final = None
        if recipe.mac_gold is not None:
            final = train_mac(replace(recipe.mac_gold, base_lm=str(paths.base_lm), out=str(root / "mac-gold-run"),
                                      resume=True))
        for number, phase in enumerate(recipe.mac_gold_continue, start=2):
            final = train_mac(replace(phase, base_lm=str(paths.base_lm), out=str(root / f"mac-gold{number}-run"),
                                      resume=True, init=str(final) if final is not None else None))
        if recipe.mac is not None:
            final = train_mac(replace(recipe.mac, base_lm=str(paths.base_lm), out=str(root / "mac-run"),
                                      resume=True, init=str(final) if final is not None else None))
        if final is None:
            raise CheckpointError("The default recipe has no MAC rung to train (mac_gold and mac are both None).")
        if recipe.calibration is not None:
            logger.info("Calibrating the retrieval prior of %s", final)
            calibrate(replace(recipe.calibration, checkpoint=str(final), out=None))
        shutil.copytree(final, paths.checkpoint, dirs_exist_ok=True)
    return paths


def package_default(src: DefaultPaths, dest: Path = PACKAGED) -> DefaultPaths:
    """Store a trained default in float16 under ``dest`` (the copy shipped inside the package).

    The base LM is written in float16 (loaded back in float32, it is recognised as the LM the networks
    were trained on: identity check with rounding tolerance); the networks are rounded to float16 too.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..frozen_lm import FrozenLM
    from ..model import MACModel

    out = DefaultPaths(dest / "base_lm", dest / "mac")
    for path in (out.base_lm, out.checkpoint):
        shutil.rmtree(path, ignore_errors=True)
    AutoModelForCausalLM.from_pretrained(src.base_lm, dtype=torch.float16).save_pretrained(out.base_lm)
    AutoTokenizer.from_pretrained(src.base_lm).save_pretrained(out.base_lm)
    mac = MACModel.from_pretrained(src.checkpoint, lm=FrozenLM.from_pretrained(out.base_lm, device="cpu"))
    mac.half().save_pretrained(out.checkpoint)
    return out


def load_default(train: bool = False, device: str | None = None, paths: DefaultPaths | None = None):
    """The default :class:`~mac_memory.model.MACModel` on its base LM (see :func:`default_paths`)."""
    from ..frozen_lm import FrozenLM
    from ..model import MACModel

    paths = paths or default_paths(train=train)
    return MACModel.from_pretrained(paths.checkpoint, lm=FrozenLM.from_pretrained(paths.base_lm, device=device))


def default_checkpoint(train: bool = False) -> Path:
    """Path of the default MAC checkpoint (its base LM: :func:`default_paths`)."""
    return default_paths(train=train).checkpoint
