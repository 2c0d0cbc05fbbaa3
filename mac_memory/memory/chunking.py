"""Split long documents into chunks the amortization network can read in one pass.

The amortizer reads at most ``max_length`` tokens of a text (the base LM's tokenizer for the
KV-anchored kind, the backbone's for T5/encoder kinds) and silently truncates the rest, so a longer
document is split into overlapping windows of whole tokens, each stored as its own record that points
back at its parent document. Chunks are exact character spans of the parent (``text[start:end]``,
surrounding whitespace trimmed), so nothing is re-written or lost between chunks.

Example:
    >>> chunker = Chunker(size=20, overlap=5, unit="char")
    >>> [c.text for c in chunker.split("The quick brown fox jumps over the lazy dog.")]
    ['The quick brown fox', 'fox jumps over the', 'the lazy dog.']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["Chunk", "Chunker"]

UNITS = ("token", "char")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: its text, position among the parent's chunks and character span."""

    text: str
    index: int
    start: int
    end: int


class Chunker:
    """Windows of ``size`` tokens (or characters) that overlap by ``overlap``.

    Args:
        size: tokens (``unit="token"``) or characters (``unit="char"``) per chunk.
        overlap: how much consecutive chunks share, so a fact cut at a boundary is whole in one of them.
        tokenizer: a *fast* HuggingFace tokenizer (offsets are needed); required for ``unit="token"``.
        unit: ``"token"`` or ``"char"``.
    """

    def __init__(self, size: int, overlap: int = 0, *, tokenizer: Any = None, unit: str = "token") -> None:
        if unit not in UNITS:
            raise ConfigError(f"Chunker.unit={unit!r} is invalid: choose one of {UNITS}.")
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ConfigError(f"Chunker.size={size!r} is invalid: must be a positive integer.")
        if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < size:
            raise ConfigError(
                f"Chunker.overlap={overlap!r} is invalid: must be an integer in [0, size={size})."
            )
        if unit == "token":
            if tokenizer is None:
                raise ConfigError("Chunker(unit='token') needs the tokenizer whose tokens it counts.")
            if not getattr(tokenizer, "is_fast", False):
                raise ConfigError(
                    f"Chunker(unit='token') needs a fast tokenizer (character offsets); "
                    f"{type(tokenizer).__name__} is not one. Use unit='char' instead."
                )
        self.size, self.overlap, self.tokenizer, self.unit = size, overlap, tokenizer, unit

    def __repr__(self) -> str:
        return f"Chunker(size={self.size}, overlap={self.overlap}, unit={self.unit!r})"

    def split(self, text: str) -> list[Chunk]:
        """The chunks of ``text`` in order (one chunk, the whole stripped text, when it fits)."""
        spans = self._token_spans(text) if self.unit == "token" else self._char_spans(text)
        chunks: list[Chunk] = []
        for start, end in spans:
            # Trim whitespace off the span (keeping offsets exact) and drop whitespace-only windows.
            piece = text[start:end]
            lead = len(piece) - len(piece.lstrip())
            piece = piece.strip()
            if piece:
                chunks.append(Chunk(piece, len(chunks), start + lead, start + lead + len(piece)))
        return chunks

    def _token_spans(self, text: str) -> list[tuple[int, int]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        n = len(offsets)
        if n <= self.size:
            return [(0, len(text))]
        spans, step = [], self.size - self.overlap
        for first in range(0, n, step):
            last = min(first + self.size, n) - 1
            # The final window runs to the end of the text so trailing characters are never lost.
            end = len(text) if last == n - 1 else offsets[last][1]
            spans.append((0 if first == 0 else offsets[first][0], end))
            if last == n - 1:
                break
        return spans

    def _char_spans(self, text: str) -> list[tuple[int, int]]:
        n = len(text)
        if n <= self.size:
            return [(0, n)]
        spans, start = [], 0
        while True:
            end = min(start + self.size, n)
            if end < n:
                # Prefer to cut at whitespace in the second half of the window, not inside a word.
                cut = text.rfind(" ", start + self.size // 2, end + 1)
                cut = max(cut, text.rfind("\n", start + self.size // 2, end + 1))
                if cut > start:
                    end = cut
            spans.append((start, end))
            if end >= n:
                return spans
            nxt = max(end - self.overlap, start + 1)
            # Start the next window at a word boundary too (inside the overlap), when there is one.
            space = text.find(" ", nxt, end)
            start = space + 1 if space != -1 and self.overlap else nxt
