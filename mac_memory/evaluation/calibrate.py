"""``mac-memory calibrate``: choose the retrieval prior's temperature on validation questions.

The deployed path (``mac``) aggregates the top-``k`` candidates of an embedding search. The aggregation
network weighs them by its own question–document match; the retrieval prior adds each candidate's
cosine similarity over a temperature to its read-out logits (see
:class:`~mac_memory.config.AggregatorConfig`). Calibration streams a validation split into a memory
exactly as ``mac-memory eval`` does, answers its questions with ``mac`` once without the prior and once
per candidate temperature, and writes the checkpoint back with the temperature of the best F1 (or with
no prior, when none helps). One scalar is fitted on held-out questions: the networks are untouched.

Example:
    >>> from mac_memory.evaluation.calibrate import CalibrateConfig, calibrate
    >>> result = calibrate(CalibrateConfig(checkpoint="runs/mac/final"))  # doctest: +SKIP
    >>> result["chosen"]                                                  # doctest: +SKIP
    0.02
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..data.stream import Document
    from ..model import MACModel

logger = logging.getLogger(__name__)

__all__ = ["CalibrateConfig", "calibrate"]


@dataclass
class CalibrateConfig:
    """Options of ``mac-memory calibrate``."""

    checkpoint: str | None = None
    """MAC checkpoint directory to calibrate (required unless a model is passed to :func:`calibrate`)."""
    out: str | None = None
    """Where to write the calibrated checkpoint (default: back into ``checkpoint``)."""
    data: str = "synthetic:val"
    """Validation stream: a JSONL(.gz) file, or synthetic:<split> of world_seed/world_entities."""
    world_seed: int = 0
    """synthetic:<split> data: seed of the synthetic world (as in training)."""
    world_entities: int = 4000
    """synthetic:<split> data: entities in the synthetic world (as in training)."""
    k: int = 4
    """Candidates retrieved per question (as the memory will be queried)."""
    temperatures: tuple[float, ...] = (0.1, 0.05, 0.03, 0.02, 0.01, 0.005)
    """Temperatures tried (besides no prior at all)."""
    limit_docs: int | None = None
    """Use the first N documents of the stream as the memory (default: all)."""
    max_questions: int = 256
    """Validation questions (a fixed random sample)."""
    device: str | None = None
    """Device to load the checkpoint on (default: cuda when available, else cpu)."""
    seed: int = 0
    """Random seed (question sample)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""

    def __post_init__(self) -> None:
        if isinstance(self.temperatures, (int, float)):
            self.temperatures = (self.temperatures,)
        self.temperatures = tuple(self.temperatures)
        if not self.temperatures or any(
            isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf")
            for t in self.temperatures
        ):
            raise ConfigError(f"CalibrateConfig.temperatures={self.temperatures!r} is invalid: "
                              "give one or more positive numbers.")
        for name, minimum in (("k", 1), ("max_questions", 1), ("threads", 0), ("world_entities", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"CalibrateConfig.{name}={value!r} is invalid: must be an integer >= {minimum}.")


def calibrate(config: CalibrateConfig, mac: MACModel | None = None, documents: list[Document] | None = None,
              embedder: Any = None, save: bool = True) -> dict[str, Any]:
    """Sweep the temperatures, set the best on ``mac`` and write the checkpoint; returns the sweep.

    Returns ``{"sweep": [{"temperature", "em", "f1"}, ...], "chosen": <temperature or None>, "k",
    "n_questions", "n_documents", "checkpoint": <path written or None>}``. Ties go to the softer prior
    (no prior first, then the larger temperature).
    """
    import torch

    from .metrics import score_predictions
    from .protocol import EvalConfig, _Protocol, load_documents, load_mac
    from .retrieval import default_embedder

    if mac is None and config.checkpoint is None:
        raise ConfigError("CalibrateConfig.checkpoint is required: name the MAC checkpoint to calibrate.")
    eval_config = EvalConfig(data=config.data, checkpoint=config.checkpoint, methods=("mac",), k=config.k,
                             limit_docs=config.limit_docs, max_questions=config.max_questions, retention=False,
                             world_seed=config.world_seed, world_entities=config.world_entities, out=None,
                             device=config.device, seed=config.seed, threads=config.threads)
    if config.threads:
        torch.set_num_threads(config.threads)
    documents = load_documents(eval_config) if documents is None else list(documents)[: config.limit_docs]
    mac = load_mac(eval_config) if mac is None else mac
    embedder = default_embedder(config.threads or None) if embedder is None else embedder
    aggregator = mac.config.aggregator
    before = aggregator.retrieval_temperature
    was_training = mac.training
    mac.eval()
    sweep: list[dict[str, Any]] = []
    try:
        protocol = _Protocol(eval_config, mac, documents, embedder)
        references = [it.qa.answers for it in protocol.items]
        # Softest first, so that ties (max keeps the first) go to the gentler prior.
        for temperature in (None, *sorted(set(config.temperatures), reverse=True)):
            aggregator.retrieval_temperature = temperature
            preds, _ = protocol.run_method("mac")
            scores = score_predictions(preds, references)
            sweep.append({"temperature": temperature, "em": scores.em, "f1": scores.f1})
            logger.info("retrieval temperature %s: %s", temperature, scores)
    except BaseException:
        aggregator.retrieval_temperature = before
        raise
    finally:
        mac.train(was_training)
    best = max(sweep, key=lambda row: row["f1"])
    aggregator.retrieval_temperature = best["temperature"]
    result: dict[str, Any] = {"sweep": sweep, "chosen": best["temperature"], "k": config.k,
                              "n_questions": len(protocol.items), "n_documents": len(documents),
                              "data": config.data, "checkpoint": None}
    target = config.out or config.checkpoint
    if save and target is not None:
        path = mac.save_pretrained(Path(target))
        (path / "calibration.json").write_text(json.dumps(result | {"checkpoint": str(path)}, indent=2))
        result["checkpoint"] = str(path)
    return result
