"""Evaluation of mac-memory: SQuAD-style exact match and token F1."""

from __future__ import annotations

from .metrics import Scores, exact_match, f1_score, normalize_answer, score_predictions

__all__ = ["Scores", "exact_match", "f1_score", "normalize_answer", "score_predictions"]
