"""MACMemoryBlock in real LlamaIndex engines and agents: old turns leave the prompt and reach answers as modulations.

``Memory`` hands messages to its blocks only once the short-term queue overflows ``token_limit *
chat_history_token_ratio`` (P-19), so the conversations here use a small ``token_limit``. With untrained
tiny networks the generated text is noise; the tests follow the remembered fact deterministically: it is
stored as a MAC record when flushed, it is absent from every message the LLM receives, it is among the
sources of the next answer, and deleting it changes the frozen LM's next-token distribution.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from llama_index.core.chat_engine import ContextChatEngine, SimpleChatEngine
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory
from llama_index.llms.mac_memory import MACMemoryLLM
from llama_index.memory.mac_memory import MACMemoryBlock
from llama_index.retrievers.mac_memory import MACMemoryRetriever

FACT = "My locker code is 4312."
FACT_RECORD = f"User: {FACT}"
QUESTION = "What is my locker code?"
DISTRACTORS = [
    "Brindlecorp builds wind turbines near the coast.",
    "Velmora Quistan was born in Ostravel in 1961.",
    "The Ostravel orchestra rehearses on Thursdays.",
    "Kado Fen plays the violin.",
]
FILLERS = [
    "The weather in Ostravel is mild in spring and often rainy in autumn.",
    "Tell me something about wind turbines and the people who build them.",
    "I am planning a trip to the coast next month with two friends.",
    "Which books would you recommend for a long train journey?",
]


def _words(text: str) -> list[str]:
    """A deterministic tokenizer for Memory's token counting (no download, no tiktoken)."""
    return text.split()


def _chat_memory(block: MACMemoryBlock, session_id: str, token_limit: int = 40, **kwargs: Any) -> Memory:
    return Memory.from_defaults(
        session_id=session_id, token_limit=token_limit, tokenizer_fn=_words, memory_blocks=[block], **kwargs
    )


def _chat_events(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, LLMChatEndEvent)]


def _source_ids(event: Any) -> list[str]:
    return [s["id"] for s in event.response.additional_kwargs["sources"]]


def _fact_id(memory: Any, namespace: str) -> str:
    """The id of the stored fact turn, found by its exact text (similarity search puts it first)."""
    top = memory.retrieve(QUESTION, k=1, namespace=namespace)[0]
    assert top.text == FACT_RECORD
    return top.id


def _next_token_logits(memory: Any, prompt: str, prefix: Any) -> torch.Tensor:
    lm = memory.mac.lm
    ids, mask = lm.tokenize([prompt])
    with torch.no_grad():
        return lm.forward(ids, mask, prefix=prefix).logits[0, -1]


# ----------------------------------------------------------------------------- the block alone


def test_block_stores_user_and_assistant_turns_with_the_session(make_memory: Any) -> None:
    memory = make_memory()
    block = MACMemoryBlock(memory, namespace="u1")
    messages = [
        ChatMessage(role="system", content="You are helpful."),
        ChatMessage(role="user", content=FACT),
        ChatMessage(role="assistant", content="Got it."),
        ChatMessage(role="tool", content="tool plumbing"),
        ChatMessage(role="assistant", content=""),
    ]
    asyncio.run(block.aput(messages, from_short_term_memory=True, session_id="session-7"))

    assert memory.count("u1") == 2 and memory.count("default") == 0
    stored = {h.text: h.metadata for h in memory.retrieve(FACT, k=5, namespace="u1")}
    assert set(stored) == {FACT_RECORD, "Assistant: Got it."}
    assert stored[FACT_RECORD]["conversation_id"] == "session-7"
    assert stored[FACT_RECORD]["kind"] == "message" and stored[FACT_RECORD]["role"] == "user"
    # Nothing goes back into the prompt by default; a note is opt-in.
    assert asyncio.run(block.aget()) == ""
    noted = MACMemoryBlock(memory, namespace="u1", note="Older turns are remembered.")
    assert asyncio.run(noted.aget()) == "Older turns are remembered."
    # A block that refuses short-term flushes stores nothing.
    refusing = MACMemoryBlock(memory, namespace="u2", accept_short_term_memory=False)
    asyncio.run(refusing.aput(messages, from_short_term_memory=True))
    assert memory.count("u2") == 0


def test_memory_flushes_only_on_overflow_and_keeps_the_note_out_by_default(make_memory: Any) -> None:
    memory = make_memory()
    chat_memory = _chat_memory(MACMemoryBlock(memory, namespace="u1"), "s-flush", token_limit=20)
    chat_memory.put(ChatMessage(role="user", content=FACT))  # 5 words: below 20 * 0.7
    chat_memory.put(ChatMessage(role="assistant", content="Noted, I will remember it."))
    assert memory.count("u1") == 0
    for filler in FILLERS[:2]:
        chat_memory.put(ChatMessage(role="user", content=filler))
        chat_memory.put(ChatMessage(role="assistant", content="Okay."))
    assert memory.count("u1") >= 2  # the oldest turns overflowed into the block
    assert _fact_id(memory, "u1")
    active = chat_memory.get()
    assert all(FACT not in (m.content or "") for m in active)
    assert all("<memory>" not in (m.content or "") for m in active)


# ----------------------------------------------------------------------------- SimpleChatEngine


def test_simple_chat_engine_remembers_flushed_turns_through_the_modulation(
    make_memory: Any, llm_events: list[Any]
) -> None:
    memory = make_memory()
    memory.add_texts(DISTRACTORS, namespace="u1")
    block = MACMemoryBlock(memory, namespace="u1")
    llm = MACMemoryLLM(memory, namespace="u1", k=2, max_new_tokens=6)
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=_chat_memory(block, "s-simple"))

    engine.chat(FACT)
    assert memory.count("u1") == len(DISTRACTORS)  # the fact is still short-term
    # Its own turn already answered under the memory: the distractors were its candidates.
    assert _source_ids(_chat_events(llm_events)[-1])
    for filler in FILLERS:
        if memory.count("u1") > len(DISTRACTORS):
            break
        engine.chat(filler)
    assert memory.count("u1") > len(DISTRACTORS), "the conversation never overflowed into the block"
    fact_id = _fact_id(memory, "u1")

    response = engine.chat(QUESTION)
    event = _chat_events(llm_events)[-1]
    assert str(response) == event.response.message.content
    # The flushed fact is not in any message the LLM received, nor in the frozen LM's prompt ...
    assert all("4312" not in (m.content or "") for m in event.messages)
    assert "4312" not in event.response.raw["prompt"]
    # ... but it is one of the 2 records aggregated into the prefix the LM answered under.
    assert fact_id in _source_ids(event)

    # Forgetting the fact changes what the frozen LM would say next.
    prompt = event.response.raw["prompt"]
    before = _next_token_logits(memory, prompt, memory.recall(QUESTION, 2, namespace="u1").prefix)
    assert memory.delete([fact_id], namespace="u1") == 1
    engine.chat(QUESTION)
    assert fact_id not in _source_ids(_chat_events(llm_events)[-1])
    after = _next_token_logits(memory, prompt, memory.recall(QUESTION, 2, namespace="u1").prefix)
    assert not torch.allclose(before, after)


def test_simple_chat_engine_streams_and_records_the_reply(make_memory: Any) -> None:
    memory = make_memory()
    memory.add_texts(DISTRACTORS)
    llm = MACMemoryLLM(memory, k=2, max_new_tokens=8)
    chat_memory = _chat_memory(MACMemoryBlock(memory), "s-stream", token_limit=400)
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=chat_memory)

    streamed = engine.stream_chat(QUESTION)
    text = "".join(streamed.response_gen)
    expected = llm.chat([ChatMessage(role="user", content=QUESTION)]).message.content
    assert text == expected and text
    streamed.write_response_to_history_thread.join() if streamed.write_response_to_history_thread else None
    history = chat_memory.get_all()
    assert [m.role.value for m in history] == ["user", "assistant"]
    assert history[-1].content == expected


# ----------------------------------------------------------------------------- ContextChatEngine


def test_context_chat_engine_sources_match_the_modulated_records(
    make_memory: Any, llm_events: list[Any]
) -> None:
    from llama_index.core import Document

    memory = make_memory()
    retriever = MACMemoryRetriever(memory, k=2, namespace="kb")
    retriever.add_documents(
        [Document(text=t, id_=f"doc-{i}", metadata={"n": i}) for i, t in enumerate(DISTRACTORS)]
    )
    llm = MACMemoryLLM(memory, namespace="kb", k=2, max_new_tokens=6)
    chat_memory = _chat_memory(MACMemoryBlock(memory, namespace="kb"), "s-context", token_limit=400)
    engine = ContextChatEngine.from_defaults(retriever=retriever, llm=llm, memory=chat_memory)

    response = engine.chat("Which instrument does Kado Fen play?")
    assert response.source_nodes[0].node.node_id == "doc-3"
    assert all("weight" in n.node.metadata for n in response.source_nodes)
    event = _chat_events(llm_events)[-1]
    # The retriever's nodes are exactly the records aggregated into the LLM's prefix, with the same weights.
    weights = {s["id"]: s["weight"] for s in event.response.additional_kwargs["sources"]}
    assert weights == pytest.approx(
        {n.node.node_id: n.node.metadata["weight"] for n in response.source_nodes}
    )
    # LlamaIndex wrote the retrieved text into the system message; the frozen LM's prompt does not hold it.
    assert any(
        "Kado Fen plays the violin." in (m.content or "") for m in event.messages if m.role == "system"
    )
    assert "violin." not in event.response.raw["prompt"]
    assert str(response) == event.response.message.content


def test_context_chat_engine_async_and_streaming(make_memory: Any) -> None:
    from llama_index.core import Document

    memory = make_memory()
    retriever = MACMemoryRetriever(memory, k=2)
    retriever.add_documents([Document(text=t, id_=f"doc-{i}") for i, t in enumerate(DISTRACTORS)])
    llm = MACMemoryLLM(memory, k=2, max_new_tokens=6)

    def engine() -> ContextChatEngine:
        chat_memory = _chat_memory(MACMemoryBlock(memory), f"s-{id(object())}", token_limit=400)
        return ContextChatEngine.from_defaults(retriever=retriever, llm=llm, memory=chat_memory)

    question = "Where was Velmora Quistan born?"
    sync = engine().chat(question)
    async_response = asyncio.run(engine().achat(question))
    assert str(async_response) == str(sync)
    assert [n.node.node_id for n in async_response.source_nodes] == [
        n.node.node_id for n in sync.source_nodes
    ]
    assert sync.source_nodes[0].node.node_id == "doc-1"

    streamed = engine().stream_chat(question)
    assert "".join(streamed.response_gen) == str(sync)
    assert [n.node.node_id for n in streamed.source_nodes] == [n.node.node_id for n in sync.source_nodes]


# ----------------------------------------------------------------------------- ReActAgent workflow


# Upstream noise, not ours: llama-index-workflows walks the agent with inspect.getmembers (touching
# pydantic's deprecated attributes) and ReActAgent still calls ctx.is_running inside a step.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211")
@pytest.mark.filterwarnings("ignore:is_running called from within a step:DeprecationWarning")
def test_react_agent_remembers_flushed_turns(make_memory: Any, llm_events: list[Any]) -> None:
    from llama_index.core.agent.workflow import AgentOutput, ReActAgent
    from llama_index.core.tools import FunctionTool

    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    memory = make_memory()
    memory.add_texts(DISTRACTORS, namespace="agent")
    llm = MACMemoryLLM(memory, namespace="agent", k=2, max_new_tokens=8)
    earlier = [ChatMessage(role="user", content=FACT), ChatMessage(role="assistant", content="Noted.")]
    for filler in FILLERS[:3]:
        earlier += [ChatMessage(role="user", content=filler), ChatMessage(role="assistant", content="Okay.")]
    chat_memory = _chat_memory(
        MACMemoryBlock(memory, namespace="agent"), "s-agent", token_limit=40, chat_history=earlier
    )
    assert memory.count("agent") == len(DISTRACTORS)  # a preset history is not flushed until a put
    agent = ReActAgent(tools=[FunctionTool.from_defaults(fn=multiply)], llm=llm)

    async def run() -> Any:
        return await agent.run(user_msg=QUESTION, memory=chat_memory, max_iterations=4)

    output = asyncio.run(run())
    assert isinstance(output, AgentOutput)
    fact_id = _fact_id(memory, "agent")  # the agent's put overflowed the queue: the fact was amortized
    calls = _chat_events(llm_events)
    assert calls, "the agent never called the LLM"
    first = calls[0]
    # The ReAct prompt (tools, format rules) reached the LLM as a system message; the fact did not.
    assert any("multiply" in (m.content or "") for m in first.messages)
    assert all("4312" not in (m.content or "") for m in first.messages)
    assert fact_id in _source_ids(first)
    assert first.response.raw["question"] == QUESTION
