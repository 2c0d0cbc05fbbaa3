"""MACMemoryLLM: answers come from the memory's modulation, only the question is in the prompt, sources attached.

The tiny networks are untrained, so generated text is noise; the tests assert what is deterministic: the
sources (ids, weights), the exact prompt the frozen LM saw, equality with ``MACMemory``'s own answers,
and streaming/async paths giving the same text as the plain call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.llms.mac_memory import MACMemoryLLM

from mac_memory.errors import EmptyInputError, InvalidInputError
from mac_memory.memory.memory import stream_answer
from mac_memory.prompts import clean_answer, format_chat, format_question

FACTS = [
    "Kado Fen plays the violin in the Ostravel orchestra.",
    "Velmora Quistan was born in Ostravel in 1961.",
    "Brindlecorp builds wind turbines.",
]
QUESTION = "What instrument does Kado Fen play?"


@pytest.fixture
def filled(make_memory: Any) -> tuple[Any, list[str]]:
    memory = make_memory()
    ids = memory.add_texts(FACTS, metadatas=[{"source": "wiki"}, {"source": "wiki"}, {"source": "news"}])
    return memory, ids


def _ids(response: Any) -> list[str]:
    return [s["id"] for s in response.additional_kwargs["sources"]]


def test_complete_answers_from_memory_with_sources(filled: tuple[Any, list[str]]) -> None:
    memory, ids = filled
    llm = MACMemoryLLM(memory, k=2, max_new_tokens=8)
    response = llm.complete(QUESTION)
    expected = memory.answer(QUESTION, 2, max_new_tokens=8)

    assert response.text == expected.text
    assert _ids(response) == [s.id for s in expected.sources]
    sources = response.additional_kwargs["sources"]
    assert len(sources) == 2 and ids[0] in _ids(response)  # the violin fact is a candidate
    weights = [s["weight"] for s in sources]
    assert weights == sorted(weights, reverse=True) and sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert {s["metadata"]["source"] for s in sources} <= {"wiki", "news"}
    # Only the question is in the prompt: no document text.
    assert response.raw["prompt"] == format_question(QUESTION)
    assert "violin" not in response.raw["prompt"]


def test_empty_namespace_answers_unconditioned(filled: tuple[Any, list[str]]) -> None:
    memory, _ = filled
    llm = MACMemoryLLM(memory, k=2, max_new_tokens=8)
    assert llm.complete(QUESTION, namespace="nobody").additional_kwargs["sources"] == []
    # Per-call overrides: k and a metadata filter.
    assert len(_ids(llm.complete(QUESTION, k=1))) == 1
    only_news = llm.complete(QUESTION, where={"source": "news"})
    assert [s["metadata"]["source"] for s in only_news.additional_kwargs["sources"]] == ["news"]


def test_stream_complete_joins_to_complete(filled: tuple[Any, list[str]]) -> None:
    memory, _ = filled
    llm = MACMemoryLLM(memory, k=3, max_new_tokens=12)
    full = llm.complete(QUESTION)
    chunks = list(llm.stream_complete(QUESTION))
    assert full.text, "the tiny LM produced no text; the streaming comparison would be vacuous"
    assert "".join(c.delta for c in chunks) == chunks[-1].text == full.text
    assert all(c.additional_kwargs["sources"] == full.additional_kwargs["sources"] for c in chunks)


def test_chat_renders_recent_turns_and_drops_system_text(filled: tuple[Any, list[str]]) -> None:
    memory, _ = filled
    llm = MACMemoryLLM(memory, k=2, max_new_tokens=8, history_turns=2)
    messages = [
        ChatMessage(role="system", content="<memory>SECRET-CONTEXT</memory>"),
        ChatMessage(role="user", content="Hello there."),
        ChatMessage(role="assistant", content="Hi! How can I help?"),
        ChatMessage(role="tool", content="tool output"),
        ChatMessage(role="user", content="Tell me about music."),
        ChatMessage(role="assistant", content="Gladly."),
        ChatMessage(role="user", content=QUESTION),
    ]
    response = llm.chat(messages)
    turns = [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "Tell me about music."},
        {"role": "assistant", "content": "Gladly."},
        {"role": "user", "content": QUESTION},
    ]
    expected = memory.chat(turns, 2, max_new_tokens=8, history_turns=2)

    assert response.message.role == "assistant"
    assert response.message.content == expected.text
    assert _ids(response) == [s.id for s in expected.sources]
    prompt = response.raw["prompt"]
    assert prompt == format_chat([("user", "Tell me about music."), ("assistant", "Gladly.")], QUESTION)
    assert "SECRET-CONTEXT" not in prompt and "tool output" not in prompt and "Hello there" not in prompt
    # Sources stay out of the message (LlamaIndex memories store it and count its kwargs as tokens).
    assert response.message.additional_kwargs == {}


def test_stream_chat_joins_to_chat(filled: tuple[Any, list[str]]) -> None:
    memory, _ = filled
    llm = MACMemoryLLM(memory, k=3, max_new_tokens=12)
    messages = [
        ChatMessage(role="user", content="I like string instruments."),
        ChatMessage(role="assistant", content="Noted."),
        ChatMessage(role="user", content=QUESTION),
    ]
    full = llm.chat(messages)
    chunks = list(llm.stream_chat(messages))
    assert full.message.content, "the tiny LM produced no text; the streaming comparison would be vacuous"
    assert "".join(c.delta for c in chunks) == chunks[-1].message.content == full.message.content
    assert chunks[-1].additional_kwargs == full.additional_kwargs
    assert chunks[-1].raw["prompt"] == full.raw["prompt"]


@pytest.mark.parametrize(
    "prompt",
    [
        format_question("Where was Velmora born?"),
        "Paris is the capital of",
        format_chat([("user", "hi"), ("assistant", "hello")], "Who works for Brindlecorp?"),
    ],
)
@pytest.mark.parametrize("max_new_tokens", [1, 24])
def test_stream_answer_equals_cleaned_generation(li_mac: Any, prompt: str, max_new_tokens: int) -> None:
    lm = li_mac.lm
    expected = clean_answer(lm.generate([prompt], None, max_new_tokens=max_new_tokens)[0])
    pieces = list(stream_answer(lm, prompt, None, max_new_tokens))
    assert "".join(pieces) == expected
    assert all(pieces), "empty pieces are never yielded"


class _ScriptedLM:
    """Stands in for FrozenLM in :func:`stream_answer`: "generates" fixed text chunks into the streamer."""

    tokenizer = None

    def __init__(self, chunks: list[str], error: Exception | None = None) -> None:
        self.chunks, self.error = chunks, error

    def tokenize(self, texts: list[str]) -> tuple[None, None]:
        return None, None

    def generate_ids(self, input_ids: Any, attention_mask: Any, prefix: Any, **kwargs: Any) -> None:
        streamer = kwargs["streamer"]
        for chunk in self.chunks:
            streamer.on_finalized_text(chunk)
        if self.error is not None:
            raise self.error
        streamer.end()


@pytest.mark.parametrize(
    "chunks",
    [
        ["  Ost", "ravel", " \n", "ignored"],
        ["\n\n", " a ", " b\n c"],
        ["x", "  ", "y  "],
        ["\n", "  ", "\n"],
        [],
        ["one line", " and more", "\r\n", "next"],
    ],
)
def test_stream_answer_yields_what_clean_answer_keeps(chunks: list[str]) -> None:
    pieces = list(stream_answer(_ScriptedLM(chunks), "prompt", None, 8))
    assert "".join(pieces) == clean_answer("".join(chunks))
    assert all(pieces)


def test_stream_answer_reraises_generation_errors() -> None:
    with pytest.raises(RuntimeError, match="out of memory"):
        list(stream_answer(_ScriptedLM(["partial"], RuntimeError("out of memory")), "prompt", None, 8))


def test_async_twins_match_sync(filled: tuple[Any, list[str]]) -> None:
    memory, _ = filled
    llm = MACMemoryLLM(memory, k=2, max_new_tokens=8)
    messages = [ChatMessage(role="user", content=QUESTION)]

    async def run() -> tuple[Any, Any, list[Any], list[Any]]:
        completion = await llm.acomplete(QUESTION)
        chat = await llm.achat(messages)
        streamed_completion = [c async for c in await llm.astream_complete(QUESTION)]
        streamed_chat = [c async for c in await llm.astream_chat(messages)]
        return completion, chat, streamed_completion, streamed_chat

    completion, chat, streamed_completion, streamed_chat = asyncio.run(run())
    sync = llm.complete(QUESTION)
    assert completion.text == sync.text and _ids(completion) == _ids(sync)
    assert chat.message.content == llm.chat(messages).message.content
    assert streamed_completion[-1].text == sync.text
    assert streamed_chat[-1].message.content == chat.message.content
    assert _ids(streamed_chat[-1]) == _ids(chat)


def test_streams_stopped_early_release_the_generator(filled: tuple[Any, list[str]]) -> None:
    memory, _ = filled
    llm = MACMemoryLLM(memory, k=2, max_new_tokens=12)
    messages = [ChatMessage(role="user", content=QUESTION)]
    expected = llm.chat(messages).message.content

    stream = llm.stream_chat(messages)
    first = next(stream)
    stream.close()
    assert expected.startswith(first.message.content)

    async def first_async_chunk() -> Any:
        async for chunk in await llm.astream_chat(messages):
            return chunk
        return None

    chunk = asyncio.run(first_async_chunk())
    assert chunk is not None and expected.startswith(chunk.message.content)
    assert llm.chat(messages).message.content == expected  # the LM is free again, same answer


def test_metadata_describes_a_chat_model(filled: tuple[Any, list[str]], li_mac: Any) -> None:
    memory, _ = filled
    meta = MACMemoryLLM(memory, max_new_tokens=7).metadata
    assert meta.is_chat_model and not meta.is_function_calling_model
    assert meta.num_output == 7
    # The tiny LM's 512 positions would starve LlamaIndex's context packing (500 tokens of padding);
    # the frozen LM never sees that text, so the reported window is at least LlamaIndex's default.
    assert li_mac.lm.config.max_position_embeddings == 512
    assert meta.context_window == 3900
    assert MACMemoryLLM(memory, context_window=1000).metadata.context_window == 1000
    assert str(li_mac.lm.name_or_path) in meta.model_name


def test_predict_goes_through_chat_with_only_the_question(
    filled: tuple[Any, list[str]], llm_events: list[Any]
) -> None:
    """LlamaIndex's prompt-template path (used by query engines) reaches ``chat``, and events carry sources."""
    from llama_index.core.prompts import ChatPromptTemplate

    memory, ids = filled
    llm = MACMemoryLLM(memory, k=2, max_new_tokens=6)
    template = ChatPromptTemplate.from_messages(
        [("system", "Context: {context_str}"), ("user", "{query_str}")]
    )
    text = llm.predict(template, context_str="Kado Fen plays the violin.", query_str=QUESTION)
    assert text == llm.complete(QUESTION).text  # a history-free chat equals a completion
    chat_events = [e for e in llm_events if type(e).__name__ == "LLMChatEndEvent"]
    assert chat_events and ids[0] in _ids(chat_events[0].response)
    assert chat_events[0].response.raw["prompt"] == format_question(QUESTION)


def test_bad_input_is_refused(filled: tuple[Any, list[str]]) -> None:
    memory, _ = filled
    llm = MACMemoryLLM(memory, max_new_tokens=4)
    with pytest.raises(InvalidInputError, match="user message"):
        llm.chat([ChatMessage(role="system", content="only a system prompt")])
    with pytest.raises(InvalidInputError, match="user message"):
        llm.chat([ChatMessage(role="user", content="   ")])
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        llm.complete(QUESTION, max_new_tokens=0)
    with pytest.raises(EmptyInputError):
        llm.complete("  ")
