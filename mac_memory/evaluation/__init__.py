"""Evaluation of mac-memory: SQuAD-style EM/F1, the online-adaptation protocol, baselines and reports.

The metrics are imported eagerly (pure Python); the protocol, baselines, retrieval index and report
writer load torch / sentence-transformers / matplotlib, so they are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .metrics import Scores, exact_match, f1_score, normalize_answer, score_predictions

_LAZY = {
    "EvalConfig": "protocol",
    "METHODS": "protocol",
    "evaluate": "protocol",
    "load_documents": "protocol",
    "retention_plan": "protocol",
    "OnlineFineTuner": "baselines",
    "EmbeddingIndex": "retrieval",
    "default_embedder": "retrieval",
    "markdown_table": "report",
    "plot_report": "report",
    "write_report": "report",
}

if TYPE_CHECKING:  # pragma: no cover
    from .baselines import OnlineFineTuner
    from .protocol import METHODS, EvalConfig, evaluate, load_documents, retention_plan
    from .report import markdown_table, plot_report, write_report
    from .retrieval import EmbeddingIndex, default_embedder

__all__ = [
    "METHODS",
    "EmbeddingIndex",
    "EvalConfig",
    "OnlineFineTuner",
    "Scores",
    "default_embedder",
    "evaluate",
    "exact_match",
    "f1_score",
    "load_documents",
    "markdown_table",
    "normalize_answer",
    "plot_report",
    "retention_plan",
    "score_predictions",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
