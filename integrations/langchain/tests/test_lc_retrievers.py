"""MACMemoryRetriever: LangChain's standard retriever suite, and what a user of the retriever notices."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests
from lc_support import DISTRACTORS, FACT, QUESTION, new_memory
from mac_memory.errors import EmptyInputError, InvalidInputError
from pydantic import ValidationError

from langchain_mac_memory import MACMemoryRetriever


@functools.cache
def _suite_memory() -> Any:
    memory = new_memory()
    memory.add_texts([FACT, *DISTRACTORS])
    return memory


class TestMACMemoryRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[MACMemoryRetriever]:
        return MACMemoryRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"memory": _suite_memory()}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


def test_added_fact_comes_first_with_its_weight(facts_memory: Any) -> None:
    memory = facts_memory.memory
    docs = MACMemoryRetriever(memory=memory, k=4).invoke(QUESTION)

    assert all(isinstance(d, Document) for d in docs)
    assert docs[0].id == facts_memory.fact_id
    assert docs[0].page_content == FACT
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)
    recall = memory.recall(QUESTION, 4)
    weights = dict(zip([h.id for h in recall.hits], recall.weights.tolist()))
    assert {d.id: d.metadata["weight"] for d in docs} == pytest.approx(weights)
    assert sum(d.metadata["weight"] for d in docs) == pytest.approx(1.0, abs=1e-4)
    assert docs[0].metadata["namespace"] == "default"
    assert docs[0].metadata["parent_id"] == facts_memory.fact_id


def test_metadata_keeps_the_records_own_keys(memory: Any) -> None:
    [doc_id] = memory.add_texts([FACT], metadatas=[{"source": "wiki", "year": 1871}], namespace="u1")
    [doc] = MACMemoryRetriever(memory=memory, namespace="u1").invoke(QUESTION)
    assert doc.id == doc_id
    assert doc.metadata["source"] == "wiki" and doc.metadata["year"] == 1871


def test_without_weights_same_order_no_weight(facts_memory: Any) -> None:
    memory = facts_memory.memory
    weighted = MACMemoryRetriever(memory=memory, k=3).invoke(QUESTION)
    plain = MACMemoryRetriever(memory=memory, k=3, with_weights=False).invoke(QUESTION)
    assert [d.id for d in plain] == [d.id for d in weighted]
    assert all("weight" not in d.metadata for d in plain)


def test_namespace_where_and_per_call_options(memory: Any) -> None:
    [fact] = memory.add_texts([FACT], metadatas=[{"topic": "people"}], namespace="u1")
    memory.add_texts(DISTRACTORS, metadatas=[{"topic": "places"}] * len(DISTRACTORS), namespace="u1")
    retriever = MACMemoryRetriever(memory=memory, namespace="u1", k=4)
    assert len(retriever.invoke(QUESTION)) == 4
    assert [d.id for d in retriever.invoke(QUESTION, where={"topic": "people"})] == [fact]
    assert retriever.invoke(QUESTION, namespace="nobody") == []
    assert MACMemoryRetriever(memory=memory).invoke(QUESTION) == []  # default namespace is empty


def test_async_matches_sync(facts_memory: Any) -> None:
    retriever = MACMemoryRetriever(memory=facts_memory.memory, k=3)
    sync = retriever.invoke(QUESTION)
    result = asyncio.run(retriever.ainvoke(QUESTION, k=2))
    assert [d.id for d in result] == [d.id for d in sync[:2]]


def test_bad_input_gives_specific_errors(facts_memory: Any) -> None:
    retriever = MACMemoryRetriever(memory=facts_memory.memory)
    with pytest.raises(InvalidInputError, match="k=0"):
        retriever.invoke(QUESTION, k=0)
    with pytest.raises(EmptyInputError):
        retriever.invoke("   ")
    with pytest.raises(TypeError):
        retriever.invoke(QUESTION, namesapce="u1")
    with pytest.raises(ValidationError):
        MACMemoryRetriever(memory=facts_memory.memory, k=-1)
    with pytest.raises(ValidationError, match="namespace"):
        MACMemoryRetriever(memory=facts_memory.memory, namespace="a/b")
