"""MACMemoryChatMessageHistory: turns are amortized into the memory, round-trip in order, clear() removes them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from mac_memory.errors import InputTypeError, InvalidInputError

from langchain_mac_memory import ChatMACMemory, MACMemoryChatMessageHistory


def test_messages_round_trip_in_order(memory: Any) -> None:
    history = MACMemoryChatMessageHistory(memory, "sess-1")
    sent = [
        HumanMessage("My sister lives in Ostravel.", name="ada"),
        AIMessage("Noted.", response_metadata={"sources": [{"id": "x", "weight": 1.0}]}),
        ToolMessage("42", tool_call_id="call-1"),
        ChatMessage(role="critic", content="Too short."),
    ]
    history.add_messages(sent[:2])
    history.add_messages(sent[2:])
    history.add_message(HumanMessage("thanks"))
    history.add_message(HumanMessage("thanks"))  # a repeated turn is a new turn, not a refresh
    got = history.messages
    assert got == [*sent, HumanMessage("thanks"), HumanMessage("thanks")]


def test_turns_are_amortized_records_the_memory_answers_from(memory: Any) -> None:
    history = MACMemoryChatMessageHistory(memory, "sess-1")
    history.add_user_message("My sister lives in Ostravel.")
    history.add_ai_message("Noted.")
    assert memory.count("sess-1") == 2
    [hit] = memory.retrieve("Where does my sister live?", k=1, namespace="sess-1")
    assert hit.text == "User: My sister lives in Ostravel."
    assert hit.metadata["kind"] == "message" and hit.metadata["role"] == "user"
    assert hit.metadata["conversation_id"] == "sess-1"
    reply = ChatMACMemory(memory=memory, namespace=history.namespace).invoke("Where does my sister live?")
    assert hit.id in {s["id"] for s in reply.response_metadata["sources"]}


def test_system_messages_are_not_stored(memory: Any) -> None:
    history = MACMemoryChatMessageHistory(memory, "sess-1")
    history.add_messages([SystemMessage("Be terse."), HumanMessage("hi")])
    assert history.messages == [HumanMessage("hi")]
    assert memory.count("sess-1") == 1


def test_a_new_instance_continues_the_same_session(memory: Any) -> None:
    MACMemoryChatMessageHistory(memory, "sess-1").add_user_message("first")
    again = MACMemoryChatMessageHistory(memory, "sess-1")
    again.add_ai_message("second")
    again.add_user_message("third")
    assert [m.content for m in MACMemoryChatMessageHistory(memory, "sess-1").messages] == [
        "first",
        "second",
        "third",
    ]


def test_long_turns_are_chunked_and_still_round_trip(memory: Any) -> None:
    long = " ".join(f"Sentence {i} about the Halden bridge over the Sorn river." for i in range(60))
    history = MACMemoryChatMessageHistory(memory, "sess-1")
    history.add_messages([HumanMessage(long), AIMessage("ok")])
    assert memory.count("sess-1") > 2  # the long turn became several records
    assert history.messages == [HumanMessage(long), AIMessage("ok")]


def test_clear_removes_only_this_session(memory: Any) -> None:
    memory.add_texts(["A document in the shared namespace."], namespace="shared")
    mine = MACMemoryChatMessageHistory(memory, "s1", namespace="shared")
    theirs = MACMemoryChatMessageHistory(memory, "s2", namespace="shared")
    mine.add_messages([HumanMessage("mine 1"), AIMessage("mine 2")])
    theirs.add_user_message("theirs")
    assert memory.count("shared") == 4

    mine.clear()
    assert mine.messages == []
    assert [m.content for m in theirs.messages] == ["theirs"]
    assert memory.count("shared") == 2
    assert all("mine" not in h.text for h in memory.retrieve("mine", k=5, namespace="shared"))


def test_async_interface(memory: Any) -> None:
    history = MACMemoryChatMessageHistory(memory, "sess-1")

    async def run() -> list[Any]:
        await history.aadd_messages([HumanMessage("a"), AIMessage("b")])
        got = await history.aget_messages()
        await history.aclear()
        return got

    assert [m.content for m in asyncio.run(run())] == ["a", "b"]
    assert history.messages == []


def test_bad_input_gives_specific_errors(memory: Any) -> None:
    with pytest.raises(InvalidInputError, match="session_id"):
        MACMemoryChatMessageHistory(memory, "  ")
    with pytest.raises(InvalidInputError, match="pass namespace="):
        MACMemoryChatMessageHistory(memory, "a/b")
    assert MACMemoryChatMessageHistory(memory, "a/b", namespace="ab").namespace == "ab"
    with pytest.raises(InputTypeError, match="MACMemory"):
        MACMemoryChatMessageHistory("memory", "s")  # type: ignore[arg-type]
    history = MACMemoryChatMessageHistory(memory, "s")
    with pytest.raises(InputTypeError, match=r"messages\[1\]"):
        history.add_messages([HumanMessage("ok"), "not a message"])  # type: ignore[list-item]
    assert history.messages == []  # nothing was written
