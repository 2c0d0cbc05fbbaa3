"""``MACMemoryRetriever``: the records of a MAC memory most similar to a query, as LangChain Documents."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from mac_memory.errors import InvalidInputError
from mac_memory.memory import Hit, MACMemory
from mac_memory.memory.store import check_namespace
from pydantic import ConfigDict, Field, field_validator

__all__ = ["MACMemoryRetriever"]


class MACMemoryRetriever(BaseRetriever):
    """Retrieve records of a :class:`~mac_memory.memory.MACMemory` namespace, nearest first.

    Each :class:`~langchain_core.documents.Document` has the record's id as ``id`` and, next to the
    record's own metadata: ``score`` (cosine similarity to the query), ``weight`` (the record's share of
    the modulation the aggregation network merges from these results for this query; only with
    ``with_weights=True``), ``namespace``, ``parent_id`` (the document a chunk belongs to),
    ``chunk_index`` and ``ingested_at`` (unix seconds).

    ``k``, ``namespace``, ``where`` and ``prefer_newest`` can also be given per call:
    ``retriever.invoke("query", k=2)``.

    Example:
        >>> from langchain_mac_memory import MACMemoryRetriever                      # doctest: +SKIP
        >>> ids = memory.add_texts(["Kado Fen plays the violin."], namespace="u1")  # doctest: +SKIP
        >>> retriever = MACMemoryRetriever(memory=memory, namespace="u1", k=3)       # doctest: +SKIP
        >>> docs = retriever.invoke("What does Kado Fen play?")                      # doctest: +SKIP
        >>> docs[0].id == ids[0], docs[0].metadata["weight"]                         # doctest: +SKIP
        (True, 0.61)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: MACMemory = Field(exclude=True, description="The MAC memory to search.")
    k: int = Field(default=4, gt=0, description="Documents to return.")
    namespace: str | None = Field(
        default=None, description="Namespace to search (default: the memory's default namespace)."
    )
    where: dict[str, Any] | None = Field(default=None, description="Chroma metadata filter.")
    prefer_newest: bool = Field(
        default=False, description="Drop records that a newer near-duplicate supersedes."
    )
    with_weights: bool = Field(
        default=True,
        description="Also run the aggregation network to report each record's weight (one extra forward).",
    )

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str | None) -> str | None:
        return None if value is None else check_namespace(value)

    def _search(
        self,
        query: str,
        k: int | None,
        namespace: str | None,
        where: Mapping[str, Any] | None,
        prefer_newest: bool | None,
    ) -> list[Document]:
        n = self.k if k is None else k
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise InvalidInputError(f"k={n!r} is invalid: give a positive integer (documents to return).")
        options: dict[str, Any] = {
            "namespace": self.namespace if namespace is None else namespace,
            "where": self.where if where is None else where,
            "prefer_newest": self.prefer_newest if prefer_newest is None else prefer_newest,
        }
        if not self.with_weights:
            return [_document(hit, None) for hit in self.memory.retrieve(query, n, **options)]
        recall = self.memory.recall(query, n, **options)
        weights = recall.weights.tolist() if recall.weights is not None else []
        return [_document(hit, weight) for hit, weight in zip(recall.hits, weights, strict=True)]

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        prefer_newest: bool | None = None,
    ) -> list[Document]:
        return self._search(query, k, namespace, where, prefer_newest)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        prefer_newest: bool | None = None,
    ) -> list[Document]:
        # The memory's reads are blocking (Chroma, torch); a worker thread keeps the event loop free.
        return await asyncio.to_thread(self._search, query, k, namespace, where, prefer_newest)


def _document(hit: Hit, weight: float | None) -> Document:
    metadata: dict[str, Any] = {
        **hit.metadata,
        "id": hit.id,
        "score": hit.score,
        "namespace": hit.namespace,
        "parent_id": hit.parent_id,
        "chunk_index": hit.chunk_index,
        "ingested_at": hit.ingested_at,
    }
    if weight is not None:
        metadata["weight"] = float(weight)
    return Document(page_content=hit.text, id=hit.id, metadata=metadata)
