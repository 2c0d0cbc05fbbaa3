"""SQuAD-style answer metrics: exact match and token F1, max over reference answers.

The normalisation follows the SQuAD v1.1 evaluation script's description (lowercase, drop ASCII
punctuation, drop the articles a/an/the, collapse whitespace), so scores compare with the MAC paper's.
One deliberate difference: an empty prediction against an empty reference scores F1 = 1 (v1.1 gives 0),
as in SQuAD v2.0 — "nothing" correctly predicted is a match.

Example:
    >>> exact_match("The Cat!", ["cat"])
    1.0
    >>> round(f1_score("the big red dog", ["red dog house"]), 3)
    0.667
    >>> score_predictions(["Paris", "1999"], [["paris"], ["in 1998"]])
    Scores(em=50.0, f1=50.0, n=2)
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["Scores", "exact_match", "f1_score", "normalize_answer", "score_predictions"]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, remove punctuation, remove articles (a, an, the), collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    # Punctuation goes first so "the-cat" -> "thecat" as in SQuAD, and "(the) cat" -> "cat".
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _references(references: str | Sequence[str]) -> Sequence[str]:
    # A bare string is one reference, not a sequence of one-character references.
    refs = [references] if isinstance(references, str) else references
    if len(refs) == 0:
        raise ValueError("references must hold at least one reference answer")
    return refs


def _em(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def _f1(prediction: str, reference: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)  # both empty: 1.0; one empty: 0.0
    common = Counter(pred_tokens) & Counter(ref_tokens)  # multiset intersection
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    return max(_em(prediction, ref) for ref in _references(references))


def f1_score(prediction: str, references: str | Sequence[str]) -> float:
    """Best token F1 (0-1) of the prediction against any reference, on normalised tokens."""
    return max(_f1(prediction, ref) for ref in _references(references))


@dataclass
class Scores:
    """Aggregate scores of a set of predictions; ``em`` and ``f1`` in percent (0-100)."""

    em: float
    """Mean exact match, percent."""
    f1: float
    """Mean token F1, percent."""
    n: int
    """Number of questions scored."""

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict, e.g. for a JSON report."""
        return asdict(self)

    def __str__(self) -> str:
        return f"EM {self.em:.2f} / F1 {self.f1:.2f} (n={self.n})"


def score_predictions(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """Mean EM and F1 (percent) of ``predictions[i]`` against ``references[i]``.

    An empty set of predictions scores 0.0 with ``n=0`` (check ``n`` before trusting a score).
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have the same length, got {len(predictions)} predictions "
            f"and {len(references)} reference lists"
        )
    n = len(predictions)
    if n == 0:
        return Scores(em=0.0, f1=0.0, n=0)
    em = sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True))
    f1 = sum(f1_score(p, r) for p, r in zip(predictions, references, strict=True))
    return Scores(em=100.0 * em / n, f1=100.0 * f1 / n, n=n)


def score_by_group(predictions: Sequence[str], references: Sequence[Sequence[str]],
                   groups: Sequence[str | None]) -> dict[str, Scores]:
    """:func:`score_predictions` of each group (e.g. the kind of fact asked); ``None`` groups are skipped."""
    if not len(predictions) == len(references) == len(groups):
        raise ValueError(f"{len(predictions)} predictions, {len(references)} reference lists and "
                         f"{len(groups)} groups: they must be as many")
    rows: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        if group is not None:
            rows.setdefault(group, []).append(i)
    return {g: score_predictions([predictions[i] for i in r], [references[i] for i in r])
            for g, r in sorted(rows.items())}
