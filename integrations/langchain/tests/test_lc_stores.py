"""MACMemoryStore: a LangGraph store whose items are MAC records, alone and under ``create_agent``."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langgraph.store.base import GetOp, InvalidNamespaceError, PutOp, SearchItem, SearchOp
from lc_support import DISTRACTORS, FACT, QUESTION, FakeClock
from mac_memory.errors import InputTypeError, InvalidInputError

from langchain_mac_memory import ChatMACMemory, MACMemoryStore
from langchain_mac_memory.stores import from_mac_namespace, to_mac_namespace

NS = ("users", "u1")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(make_memory: Any, clock: FakeClock) -> MACMemoryStore:
    return MACMemoryStore(make_memory(clock=clock))


def test_put_get_round_trips_the_value(store: MACMemoryStore, clock: FakeClock) -> None:
    value = {"text": FACT, "tags": ["bio", "geo"], "meta": {"year": 1871, "ok": True}, "score": 0.5}
    store.put(NS, "velmora", value)
    item = store.get(NS, "velmora")
    assert item is not None
    assert item.value == value and item.key == "velmora" and item.namespace == NS
    assert item.created_at == item.updated_at == datetime.fromtimestamp(1_000.0, tz=timezone.utc)
    assert store.get(NS, "nobody") is None
    assert store.get(("users", "u2"), "velmora") is None


def test_update_keeps_created_at_and_moves_updated_at(store: MACMemoryStore, clock: FakeClock) -> None:
    store.put(NS, "k", {"text": "first version"})
    clock.now = 2_000.0
    store.put(NS, "k", {"text": "second version"})
    item = store.get(NS, "k")
    assert item is not None and item.value == {"text": "second version"}
    assert item.created_at.timestamp() == 1_000.0 and item.updated_at.timestamp() == 2_000.0
    assert store.memory.count(to_mac_namespace(NS)) == 1


def test_items_are_amortized_records_of_the_mapped_namespace(store: MACMemoryStore) -> None:
    store.put(NS, "velmora", {"text": FACT, "kind": "bio"})
    store.put(NS, "prefs", {"likes": ["tea"], "n": 2})
    ns = to_mac_namespace(NS)
    assert ns == "users.u1" and store.mac_namespace(NS) == ns
    [hit] = store.memory.get(["velmora"], namespace=ns)
    assert hit.text == FACT  # the "text" field is what gets amortized
    assert hit.metadata["kind"] == "bio"  # scalar fields are filterable Chroma metadata
    [prefs] = store.memory.get(["prefs"], namespace=ns)
    assert prefs.text == '{"likes": ["tea"], "n": 2}'  # no text field: the value as JSON
    recall = store.memory.recall(QUESTION, 4, namespace=ns)
    assert recall.prefix is not None and {h.id for h in recall.hits} == {"velmora", "prefs"}


def test_index_fields_choose_the_text(store: MACMemoryStore) -> None:
    store.put(NS, "a", {"memory": {"text": "Ada likes teal."}, "other": "ignored"}, index=["memory.text"])
    [hit] = store.memory.get(["a"], namespace=to_mac_namespace(NS))
    assert hit.text == "Ada likes teal."
    with pytest.raises(InvalidInputError, match="index path"):
        store.put(NS, "b", {"xs": ["a"]}, index=["xs[*]"])


def test_search_with_query_ranks_by_similarity(store: MACMemoryStore) -> None:
    store.put(NS, "fact", {"text": FACT})
    for i, text in enumerate(DISTRACTORS):
        store.put(NS, f"d{i}", {"text": text})
    store.put(("users", "u2"), "other", {"text": FACT})

    results = store.search(NS, query=QUESTION, limit=2)
    assert results[0].key == "fact" and len(results) == 2
    assert all(isinstance(r, SearchItem) for r in results)
    assert results[0].score == pytest.approx(
        store.memory.retrieve(QUESTION, 1, namespace="users.u1")[0].score
    )
    assert results[0].score >= results[1].score
    everywhere = store.search(("users",), query=QUESTION, limit=10)
    assert {(r.namespace, r.key) for r in everywhere} >= {(NS, "fact"), (("users", "u2"), "other")}
    assert len(everywhere) == 5


def test_search_pages_do_not_overlap(store: MACMemoryStore) -> None:
    for i, text in enumerate([FACT, *DISTRACTORS]):
        store.put(NS, f"k{i}", {"text": text})
    ranked = [r.key for r in store.search(NS, query=QUESTION, limit=4)]
    assert [r.key for r in store.search(NS, query=QUESTION, limit=2, offset=1)] == ranked[1:3]


def test_search_without_query_lists_newest_first_and_filters(store: MACMemoryStore, clock: FakeClock) -> None:
    for i, n in enumerate([1, 5, 9]):
        clock.now = 1_000.0 + i
        store.put(NS, f"k{i}", {"text": f"note {i}", "n": n, "tags": {"color": "red" if n > 2 else "blue"}})
    assert [r.key for r in store.search(NS)] == ["k2", "k1", "k0"]
    assert all(r.score is None for r in store.search(NS))
    assert [r.key for r in store.search(NS, filter={"n": {"$gte": 5}})] == ["k2", "k1"]
    assert [r.key for r in store.search(NS, filter={"tags": {"color": "blue"}})] == ["k0"]
    assert [r.key for r in store.search(NS, filter={"n": {"$ne": 5}}, limit=1, offset=1)] == ["k0"]
    assert [r.key for r in store.search(NS, query="note", filter={"n": 9})] == ["k2"]
    with pytest.raises(InvalidInputError, match="not supported"):
        store.search(NS, filter={"n": {"$regex": "x"}})


def test_delete_removes_the_record(store: MACMemoryStore) -> None:
    store.put(NS, "k", {"text": FACT})
    store.put(NS, "keep", {"text": "other"})
    store.delete(NS, "k")
    assert store.get(NS, "k") is None
    assert store.memory.get(["k"], namespace=to_mac_namespace(NS)) == []
    assert [r.key for r in store.search(NS, query=QUESTION)] == ["keep"]


def test_batch_runs_in_order_and_last_put_wins(store: MACMemoryStore) -> None:
    results = store.batch(
        [
            PutOp(NS, "k", {"text": "one"}),
            PutOp(NS, "k", {"text": "two"}),
            GetOp(NS, "k"),
            PutOp(NS, "k", None),
            GetOp(NS, "k"),
            SearchOp(NS),
        ]
    )
    assert results[0] is None and results[1] is None
    assert results[2].value == {"text": "two"}
    assert results[4] is None and results[5] == []


def test_namespaces_escape_and_list(store: MACMemoryStore) -> None:
    odd = ("a/b", "50%", "x y")
    assert from_mac_namespace(to_mac_namespace(odd)) == odd
    assert "/" not in to_mac_namespace(odd)
    store.put(odd, "k", {"text": "odd"})
    store.put(("docs", "v1"), "k", {"text": "d1"})
    store.put(("docs", "v2"), "k", {"text": "d2"})
    assert store.get(odd, "k").value == {"text": "odd"}
    assert store.list_namespaces() == sorted([odd, ("docs", "v1"), ("docs", "v2")])
    assert store.list_namespaces(prefix=("docs",)) == [("docs", "v1"), ("docs", "v2")]
    assert store.list_namespaces(suffix=("v2",)) == [("docs", "v2")]
    assert store.list_namespaces(prefix=("*", "v1")) == [("docs", "v1")]
    assert store.list_namespaces(max_depth=1) == [("a/b",), ("docs",)]
    assert store.list_namespaces(limit=1, offset=1) == [("docs", "v1")]


def test_bad_input_gives_specific_errors(store: MACMemoryStore) -> None:
    with pytest.raises(InvalidNamespaceError, match="labels"):
        store.put(("a.b",), "k", {"text": "x"})
    with pytest.raises(InvalidNamespaceError):
        store.batch([GetOp((), "k")])
    with pytest.raises(InvalidNamespaceError, match="at most 256"):
        store.put(("x" * 300,), "k", {"text": "x"})
    with pytest.raises(InputTypeError, match="JSON"):
        store.put(NS, "k", {"when": datetime.now()})
    with pytest.raises(InputTypeError, match="must be a dict"):
        store.batch([PutOp(NS, "k", ["not", "a", "dict"])])  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="TTL"):
        store.put(NS, "k", {"text": "x"}, ttl=5)
    with pytest.raises(InvalidInputError):
        store.put(NS, "", {"text": "x"})
    with pytest.raises(InputTypeError):
        MACMemoryStore("not a memory")  # type: ignore[arg-type]


def test_async_operations(store: MACMemoryStore) -> None:
    async def run() -> tuple[Any, list[SearchItem]]:
        await store.aput(NS, "fact", {"text": FACT})
        return await store.aget(NS, "fact"), await store.asearch(NS, query=QUESTION)

    item, found = asyncio.run(run())
    assert item.value == {"text": FACT}
    assert [r.key for r in found] == ["fact"]


def test_records_written_by_others_appear_as_items(store: MACMemoryStore) -> None:
    [doc_id] = store.memory.add_texts([FACT], metadatas=[{"source": "wiki"}], namespace="users.u1")
    item = store.get(NS, doc_id)
    assert item is not None and item.value == {"source": "wiki", "text": FACT}


# ----------------------------------------------------------------------------- agents


def test_create_agent_with_the_store_answers_from_what_was_put(make_memory: Any) -> None:
    from langchain.agents import create_agent
    from langgraph.checkpoint.memory import InMemorySaver

    memory = make_memory()
    store = MACMemoryStore(memory)
    store.put(NS, "colour", {"text": "Ada's favourite colour is teal."})
    store.put(NS, "city", {"text": "Ada lives in Ostravel."})
    agent = create_agent(
        model=ChatMACMemory(memory=memory, namespace=store.mac_namespace(NS), max_new_tokens=6),
        tools=[],
        store=store,
        checkpointer=InMemorySaver(),
    )
    config = {"configurable": {"thread_id": "t1"}}
    state = agent.invoke({"messages": [{"role": "user", "content": "What is my favourite colour?"}]}, config)
    reply = state["messages"][-1]
    assert isinstance(reply, AIMessage)
    assert {s["id"] for s in reply.response_metadata["sources"]} == {"colour", "city"}
    assert store.search(NS, query="favourite colour")[0].key == "colour"
    state = agent.invoke({"messages": [{"role": "user", "content": "And my city?"}]}, config)
    assert len(state["messages"]) == 4  # the checkpointer kept the thread


def test_create_agent_remembers_what_the_user_tells_it(make_memory: Any) -> None:
    from langchain.agents import create_agent

    memory = make_memory()
    store = MACMemoryStore(memory)
    agent = create_agent(
        model=ChatMACMemory(
            memory=memory, namespace=store.mac_namespace(NS), remember=True, max_new_tokens=4
        ),
        tools=[],
        store=store,
    )
    agent.invoke({"messages": [{"role": "user", "content": "My name is Ada Quistan."}]})
    found = store.search(NS, query="What is my name?", filter={"role": "user"})
    assert [r.value["text"] for r in found] == ["User: My name is Ada Quistan."]
