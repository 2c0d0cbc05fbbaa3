"""MACMemoryRetriever: LlamaIndex nodes in and out of a MAC memory.

Ingestion (:meth:`MACMemoryRetriever.add_nodes`, :meth:`~MACMemoryRetriever.add_documents`) stores each
node's text as a MAC record under the node's own id, with its metadata and its source document id, and
amortizes it into a modulation. Retrieval returns the candidates a ``MACMemoryLLM`` would aggregate for
the same query, as ``NodeWithScore``: the node's id, text and metadata back, ``score`` the similarity,
and ``metadata["weight"]`` the share of the aggregated modulation the record gets for this query.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from mac_memory.errors import EmptyInputError, InputTypeError, InvalidInputError, InvalidMetadataError
from mac_memory.memory import Hit, MACMemory
from mac_memory.memory.store import check_namespace

logger = logging.getLogger(__name__)

__all__ = ["MAC_METADATA_KEYS", "REF_DOC_ID_KEY", "MACMemoryRetriever"]

# Stored with a node's metadata: the id of the document it came from (restored as its SOURCE relation).
REF_DOC_ID_KEY = "ref_doc_id"
# What retrieval adds to a node's metadata; kept out of the text LlamaIndex embeds or shows an LLM.
MAC_METADATA_KEYS = ("weight", "namespace", "parent_id", "chunk_index", "ingested_at")


class MACMemoryRetriever(BaseRetriever):
    """Retrieve the records a MAC memory would aggregate for a query, as LlamaIndex nodes.

    Args:
        memory: the :class:`~mac_memory.memory.MACMemory` to read from and write to.
        k: records returned per query (the aggregation candidates).
        namespace: the memory's namespace (None: its default namespace).
        where: a Chroma metadata filter on the candidates (e.g. ``{"source": "wiki"}``).
        prefer_newest: drop candidates a newer near-duplicate record supersedes.
        with_weights: run the aggregation network to report each node's ``weight`` (False: similarity
            search only, faster, and ``weight`` is left out).
        callback_manager, verbose: as for any LlamaIndex retriever.

    A record's ``weight`` comes from aggregating exactly the returned candidates for this query, as
    ``MACMemoryLLM`` does with the same ``k``, ``namespace`` and ``where``; weights sum to 1.

    Example:
        >>> from llama_index.core import Document                                            # doctest: +SKIP
        >>> retriever = MACMemoryRetriever(memory, k=4)                                       # doctest: +SKIP
        >>> retriever.add_documents([Document(text="Kado Fen plays the violin.", id_="kado")])  # doctest: +SKIP
        ['kado']
        >>> hit = retriever.retrieve("What does Kado Fen play?")[0]                           # doctest: +SKIP
        >>> hit.node.node_id, hit.node.metadata["weight"]                                     # doctest: +SKIP
        ('kado', 1.0)
    """

    def __init__(
        self,
        memory: MACMemory,
        k: int = 4,
        *,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        prefer_newest: bool = False,
        with_weights: bool = True,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(memory, MACMemory):
            raise InputTypeError(
                f"MACMemoryRetriever needs a mac_memory.memory.MACMemory, got {type(memory).__name__}."
            )
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise InvalidInputError(f"k={k!r} is invalid: give a positive integer (records per query).")
        if where is not None and not isinstance(where, Mapping):
            raise InvalidInputError(f"where must be a dict of Chroma filters, got {type(where).__name__}.")
        self.memory = memory
        self.k = k
        self.namespace = None if namespace is None else check_namespace(namespace)
        self.where = dict(where) if where is not None else None
        self.prefer_newest = prefer_newest
        self.with_weights = with_weights
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    # ------------------------------------------------------------------ retrieval
    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        search = {"namespace": self.namespace, "where": self.where, "prefer_newest": self.prefer_newest}
        if self.with_weights:
            recall = self.memory.recall(query, self.k, **search)
            weights = recall.weights.tolist() if recall.weights is not None else [None] * len(recall.hits)
            hits: Sequence[Hit] = recall.hits
        else:
            hits = self.memory.retrieve(query, self.k, **search)
            weights = [None] * len(hits)
        return [NodeWithScore(node=_node(hit, weight), score=hit.score) for hit, weight in zip(hits, weights)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)

    # ------------------------------------------------------------------ ingestion
    def add_nodes(self, nodes: Sequence[BaseNode], *, namespace: str | None = None) -> list[str]:
        """Amortize and store ``nodes`` (e.g. an ``IngestionPipeline``'s output); returns their ids.

        Each node becomes a record with the node's id, its text (without metadata), its metadata and
        its source document id (``ref_doc_id``). Re-adding an id replaces that record. A node longer
        than the amortizer reads is split into records ``<node id>#<i>`` whose ``parent_id`` is the node
        id. Metadata must be flat (str, int, float, bool, None or a flat list of one of them).
        """
        texts, metadatas, ids = _records(nodes)
        return self.memory.add_texts(texts, metadatas, ids, namespace=self._namespace(namespace))

    async def aadd_nodes(self, nodes: Sequence[BaseNode], *, namespace: str | None = None) -> list[str]:
        """:meth:`add_nodes` in a worker thread."""
        texts, metadatas, ids = _records(nodes)
        return await self.memory.aadd_texts(texts, metadatas, ids, namespace=self._namespace(namespace))

    def add_documents(self, documents: Sequence[BaseNode], *, namespace: str | None = None) -> list[str]:
        """Store LlamaIndex ``Document`` s whole (MAC chunks long ones itself); returns their ids."""
        return self.add_nodes(documents, namespace=namespace)

    async def aadd_documents(
        self, documents: Sequence[BaseNode], *, namespace: str | None = None
    ) -> list[str]:
        """:meth:`add_documents` in a worker thread."""
        return await self.aadd_nodes(documents, namespace=namespace)

    def delete(self, ids: Sequence[str], *, namespace: str | None = None) -> int:
        """Delete the records of these node/document ids; returns how many records went."""
        return self.memory.delete(list(ids), namespace=self._namespace(namespace))

    def _namespace(self, namespace: str | None) -> str | None:
        return self.namespace if namespace is None else namespace


def _records(nodes: Sequence[BaseNode]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """``(texts, metadatas, ids)`` of nodes, checked so that errors name the node."""
    if isinstance(nodes, BaseNode) or not isinstance(nodes, Sequence):
        raise InputTypeError(
            f"Expected a list of LlamaIndex nodes/documents, got {type(nodes).__name__}; "
            "wrap a single node in a list."
        )
    if not nodes:
        raise EmptyInputError("Got an empty list of nodes.")
    texts, metadatas, ids = [], [], []
    for i, node in enumerate(nodes):
        if not isinstance(node, BaseNode):
            raise InputTypeError(
                f"nodes[{i}] must be a LlamaIndex node or Document, got {type(node).__name__}."
            )
        text = node.get_content(metadata_mode=MetadataMode.NONE)
        if not text or not text.strip():
            raise EmptyInputError(f"Node {node.node_id!r} (nodes[{i}]) has no text to store.")
        metadata = dict(node.metadata)
        clash = sorted(set(metadata) & ({REF_DOC_ID_KEY} | set(MAC_METADATA_KEYS)))
        if clash:
            raise InvalidMetadataError(
                f"Node {node.node_id!r} (nodes[{i}]) has metadata keys {clash}, which MACMemoryRetriever "
                "sets itself on retrieval; rename them."
            )
        if node.ref_doc_id is not None:
            metadata[REF_DOC_ID_KEY] = node.ref_doc_id
        texts.append(text)
        metadatas.append(metadata)
        ids.append(node.node_id)
    return texts, metadatas, ids


def _node(hit: Hit, weight: float | None) -> TextNode:
    """A retrieved record as the node it was ingested from, plus where it lives in the memory."""
    metadata = dict(hit.metadata)
    ref_doc_id = metadata.pop(REF_DOC_ID_KEY, None)
    mac: dict[str, Any] = {
        "namespace": hit.namespace,
        "parent_id": hit.parent_id,
        "chunk_index": hit.chunk_index,
        "ingested_at": hit.ingested_at,
    }
    if weight is not None:
        mac["weight"] = float(weight)
    relationships = {}
    if ref_doc_id is not None:
        relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=str(ref_doc_id))
    return TextNode(
        id_=hit.id,
        text=hit.text,
        metadata={**metadata, **mac},
        relationships=relationships,
        excluded_embed_metadata_keys=list(mac),
        excluded_llm_metadata_keys=list(mac),
    )
