"""MACMemoryRetriever: LlamaIndex documents/nodes in (ids and metadata kept), NodeWithScore out with weights."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core import Document
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode
from llama_index.retrievers.mac_memory import MAC_METADATA_KEYS, MACMemoryRetriever

from mac_memory.errors import EmptyInputError, InputTypeError, InvalidMetadataError

DOCS = [
    Document(
        text="Kado Fen plays the violin in the Ostravel orchestra.", id_="kado", metadata={"source": "wiki"}
    ),
    Document(
        text="Velmora Quistan was born in Ostravel in 1961.", id_="velmora", metadata={"source": "wiki"}
    ),
    Document(
        text="Brindlecorp builds wind turbines near the coast.", id_="brindle", metadata={"source": "news"}
    ),
]


def test_documents_round_trip_with_ids_metadata_and_weights(make_memory: Any) -> None:
    memory = make_memory()
    retriever = MACMemoryRetriever(memory, k=3)
    assert retriever.add_documents(DOCS) == ["kado", "velmora", "brindle"]

    results = retriever.retrieve("Which instrument does Kado Fen play?")
    assert all(isinstance(r, NodeWithScore) and isinstance(r.node, TextNode) for r in results)
    first = results[0]
    assert first.node.node_id == "kado"
    assert first.node.text == DOCS[0].text
    assert first.node.metadata["source"] == "wiki"
    # Similarity scores, nearest first, equal to the memory's own search.
    hits = memory.retrieve("Which instrument does Kado Fen play?", k=3)
    assert [r.node.node_id for r in results] == [h.id for h in hits]
    assert [r.score for r in results] == pytest.approx([h.score for h in hits])
    # Aggregation weights: the same as the memory's recall for this query, summing to 1.
    recall = memory.recall("Which instrument does Kado Fen play?", 3)
    assert [r.node.metadata["weight"] for r in results] == pytest.approx(recall.weights.tolist())
    assert sum(r.node.metadata["weight"] for r in results) == pytest.approx(1.0, abs=1e-5)
    md = first.node.metadata
    assert (
        md["namespace"] == memory.default_namespace and md["parent_id"] == "kado" and md["chunk_index"] == 0
    )
    # MAC bookkeeping stays out of what LlamaIndex shows an LLM or embeds.
    for mode in (MetadataMode.LLM, MetadataMode.EMBED):
        content = first.node.get_content(metadata_mode=mode)
        assert "source: wiki" in content
        assert not any(f"{key}:" in content for key in MAC_METADATA_KEYS)


def test_ingestion_pipeline_nodes_keep_ids_and_source_document(make_memory: Any) -> None:
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter

    doc = Document(
        text="Kado Fen plays the violin. " * 3 + "Velmora Quistan was born in Ostravel. " * 3,
        id_="story",
        metadata={"author": "anon"},
    )
    nodes = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=24, chunk_overlap=0)]).run(
        documents=[doc]
    )
    assert len(nodes) > 1
    retriever = MACMemoryRetriever(memory := make_memory(), k=len(nodes), namespace="books")
    assert retriever.add_nodes(nodes) == [n.node_id for n in nodes]
    assert memory.count("books") == len(nodes)

    results = retriever.retrieve("Where was Velmora Quistan born?")
    assert {r.node.node_id for r in results} == {n.node_id for n in nodes}
    assert "Velmora" in results[0].node.text
    for r in results:
        assert r.node.ref_doc_id == "story"  # the SOURCE relationship is restored
        assert r.node.metadata["author"] == "anon" and r.node.metadata["namespace"] == "books"
        assert "ref_doc_id" not in r.node.metadata
    # Deleting by node id removes exactly that record.
    assert retriever.delete([nodes[0].node_id]) == 1
    assert memory.count("books") == len(nodes) - 1


def test_namespaces_filters_and_similarity_only_mode(make_memory: Any) -> None:
    memory = make_memory()
    MACMemoryRetriever(memory).add_documents(DOCS)
    other = MACMemoryRetriever(memory, namespace="elsewhere")
    assert other.retrieve("Kado Fen") == []

    news = MACMemoryRetriever(memory, k=3, where={"source": "news"})
    assert [r.node.node_id for r in news.retrieve("Kado Fen")] == ["brindle"]

    plain = MACMemoryRetriever(memory, k=2, with_weights=False)
    results = plain.retrieve("Kado Fen's violin")
    assert results[0].node.node_id == "kado"
    assert all("weight" not in r.node.metadata for r in results)


def test_async_retrieve_and_ingest(make_memory: Any) -> None:
    memory = make_memory()
    retriever = MACMemoryRetriever(memory, k=2)

    async def run() -> list[NodeWithScore]:
        await retriever.aadd_documents(DOCS[:2])
        await retriever.aadd_nodes([TextNode(text="Ostravel lies on a river delta.", id_="delta")])
        return await retriever.aretrieve("Ostravel river delta")

    results = asyncio.run(run())
    assert memory.count() == 3
    assert results[0].node.node_id == "delta"
    assert [r.node.node_id for r in results] == [
        r.node.node_id for r in retriever.retrieve("Ostravel river delta")
    ]


def test_bad_nodes_are_refused_before_anything_is_written(make_memory: Any) -> None:
    memory = make_memory()
    retriever = MACMemoryRetriever(memory)
    with pytest.raises(InputTypeError, match="wrap a single node"):
        retriever.add_nodes(DOCS[0])  # type: ignore[arg-type]
    with pytest.raises(EmptyInputError):
        retriever.add_nodes([])
    with pytest.raises(InputTypeError, match=r"nodes\[1\]"):
        retriever.add_nodes([DOCS[0], "plain text"])  # type: ignore[list-item]
    with pytest.raises(EmptyInputError, match="'blank'"):
        retriever.add_nodes([DOCS[0], TextNode(text="  ", id_="blank")])
    with pytest.raises(InvalidMetadataError, match="weight"):
        retriever.add_nodes([TextNode(text="A heavy box.", id_="box", metadata={"weight": 3.5})])
    with pytest.raises(InvalidMetadataError, match="nested dict"):
        retriever.add_nodes([TextNode(text="Nested.", id_="n", metadata={"a": {"b": 1}})])
    assert memory.count() == 0
