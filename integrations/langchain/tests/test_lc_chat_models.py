"""ChatMACMemory: LangChain's standard chat-model suites, and what a user of the chat model notices."""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import pytest
import torch
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from lc_support import DISTRACTORS, FACT, QUESTION, new_memory
from mac_memory.errors import EmptyInputError, InvalidInputError
from mac_memory.prompts import format_chat
from pydantic import ValidationError

from langchain_mac_memory import ChatMACMemory


@functools.cache
def _suite_memory() -> Any:
    """One memory with a few records for the standard suites (built on first use)."""
    memory = new_memory()
    memory.add_texts([FACT, *DISTRACTORS])
    return memory


# ----------------------------------------------------------------------------- standard suites


class TestChatMACMemoryUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatMACMemory]:
        return ChatMACMemory

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"memory": _suite_memory(), "k": 4}

    @property
    def supports_model_override(self) -> bool:
        return False  # one frozen LM per memory: there is no other model to switch to


class TestChatMACMemoryIntegration(ChatModelIntegrationTests):
    """The invoke/stream/batch/conversation contract, run offline against the tiny local LM."""

    @property
    def chat_model_class(self) -> type[ChatMACMemory]:
        return ChatMACMemory

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"memory": _suite_memory(), "k": 4, "max_new_tokens": 8}

    @property
    def supports_model_override(self) -> bool:
        return False


# ----------------------------------------------------------------------------- helpers


class _Spy:
    """Records what the chat model hands the frozen LM (prompts and prefix) and still generates."""

    def __init__(self, lm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[list[str], Any]] = []
        self.stream_prefixes: list[Any] = []
        generate, generate_ids = lm.generate, lm.generate_ids

        def spy_generate(prompts: list[str], prefix: Any = None, **kwargs: Any) -> list[str]:
            self.calls.append((list(prompts), prefix))
            return generate(prompts, prefix, **kwargs)

        def spy_generate_ids(input_ids: Any, attention_mask: Any, prefix: Any = None, **kwargs: Any) -> Any:
            self.stream_prefixes.append(prefix)
            return generate_ids(input_ids, attention_mask, prefix, **kwargs)

        monkeypatch.setattr(lm, "generate", spy_generate)
        if True:  # streaming goes through generate_ids directly
            monkeypatch.setattr(lm, "generate_ids", spy_generate_ids)


def _source_ids(message: AIMessage) -> list[str]:
    return [s["id"] for s in message.response_metadata["sources"]]


# ----------------------------------------------------------------------------- conditioning


def test_answer_reports_the_sources_and_weights_of_the_memory(facts_memory: Any) -> None:
    memory = facts_memory.memory
    reply = ChatMACMemory(memory=memory, k=4).invoke(QUESTION)

    expected = memory.recall(QUESTION, 4).sources()
    assert _source_ids(reply) == [s.id for s in expected]
    assert [s["weight"] for s in reply.response_metadata["sources"]] == pytest.approx(
        [s.weight for s in expected]
    )
    assert set(_source_ids(reply)) == set(facts_memory.ids)
    assert reply.response_metadata["namespace"] == "default"
    assert reply.response_metadata["model_name"] == str(memory.mac.lm.name_or_path)


def test_empty_memory_answers_unconditioned_with_no_sources(
    memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(memory.mac.lm, monkeypatch)
    reply = ChatMACMemory(memory=memory).invoke(QUESTION)
    assert reply.response_metadata["sources"] == []
    assert spy.calls[-1][1] is None  # no prefix


def test_generation_is_conditioned_on_the_memory_prefix(
    facts_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LM gets the aggregated prefix of the recalled records; the prompt holds only the question."""
    memory = facts_memory.memory
    lm = memory.mac.lm
    spy = _Spy(lm, monkeypatch)
    ChatMACMemory(memory=memory, k=4).invoke(QUESTION)

    (prompts, prefix), *_ = spy.calls
    assert prompts == [format_chat([], QUESTION)]
    assert "Ostravel" not in prompts[0]  # MAC: the document never enters the prompt
    expected = memory.recall(QUESTION, 4).prefix
    assert prefix is not None and torch.equal(prefix.keys, expected.keys)
    assert torch.equal(prefix.values, expected.values)
    # ...and that prefix really moves the LM: its next-token distribution differs from no memory.
    ids, mask = lm.tokenize(prompts)
    with torch.no_grad():
        conditioned = lm.forward(ids, mask, prefix).logits[0, -1]
        bare = lm.forward(ids, mask, None).logits[0, -1]
    assert not torch.allclose(conditioned, bare)


def test_streaming_uses_the_same_prefix_and_text_as_invoke(
    facts_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = facts_memory.memory
    chat = ChatMACMemory(memory=memory, k=4, max_new_tokens=12)
    invoked = chat.invoke(QUESTION)
    spy = _Spy(memory.mac.lm, monkeypatch)
    chunks = list(chat.stream(QUESTION))

    assert "".join(c.content for c in chunks) == invoked.content
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].response_metadata["sources"] == invoked.response_metadata["sources"]
    assert chunks[-1].usage_metadata == invoked.usage_metadata
    expected = memory.recall(QUESTION, 4).prefix
    assert len(spy.stream_prefixes) == 1 and torch.equal(spy.stream_prefixes[0].keys, expected.keys)


def test_stopping_a_stream_early_stops_generation(facts_memory: Any) -> None:
    chat = ChatMACMemory(memory=facts_memory.memory, k=2, max_new_tokens=64)
    stream = chat.stream(QUESTION)
    first = next(stream)
    assert first.content
    stream.close()
    assert not [t for t in threading.enumerate() if t.name == "langchain-mac-memory-stream"]


@pytest.mark.parametrize("stop", [["::"], [":"], ["zz"], ["x", ":::::"]])
def test_stop_sequences_cut_invoke_and_stream_alike(facts_memory: Any, stop: list[str]) -> None:
    chat = ChatMACMemory(memory=facts_memory.memory, k=2, max_new_tokens=12)
    full = chat.invoke(QUESTION).content
    cut = chat.invoke(QUESTION, stop=stop).content
    streamed = "".join(c.content for c in chat.stream(QUESTION, stop=stop))
    hits = [full.find(s) for s in stop if s in full]
    assert cut == (full[: min(hits)] if hits else full)
    assert streamed == cut
    assert (
        ChatMACMemory(memory=facts_memory.memory, k=2, max_new_tokens=12, stop=stop).invoke(QUESTION).content
        == cut
    )


def test_history_goes_into_the_prompt_and_system_messages_do_not(
    facts_memory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(facts_memory.memory.mac.lm, monkeypatch)
    messages = [
        SystemMessage("You are terse."),
        HumanMessage("Hi, I am Ada."),
        AIMessage(""),  # an assistant turn that said nothing carries nothing
        AIMessage("Hello Ada."),
        ToolMessage("42", tool_call_id="call-1"),
        HumanMessage(QUESTION),
    ]
    ChatMACMemory(memory=facts_memory.memory, history_turns=6).invoke(messages)
    ChatMACMemory(memory=facts_memory.memory, history_turns=1).invoke(messages)
    assert spy.calls[0][0] == [
        format_chat([("user", "Hi, I am Ada."), ("assistant", "Hello Ada.")], QUESTION)
    ]
    assert spy.calls[1][0] == [format_chat([("assistant", "Hello Ada.")], QUESTION)]
    assert "terse" not in spy.calls[0][0][0]


def test_per_call_options_override_the_fields(facts_memory: Any) -> None:
    chat = ChatMACMemory(memory=facts_memory.memory, k=4)
    assert len(_source_ids(chat.invoke(QUESTION, k=1))) == 1
    assert len(_source_ids(chat.bind(k=2).invoke(QUESTION))) == 2
    assert chat.invoke(QUESTION, namespace="elsewhere").response_metadata["sources"] == []
    assert len(_source_ids(chat.invoke(QUESTION))) == 4  # the fields themselves are unchanged


def test_namespaces_separate_memories(memory: Any) -> None:
    [mine] = memory.add_texts([FACT], namespace="u1")
    memory.add_texts(DISTRACTORS, namespace="u2")
    reply = ChatMACMemory(memory=memory, namespace="u1").invoke(QUESTION)
    assert _source_ids(reply) == [mine]
    assert reply.response_metadata["namespace"] == "u1"


def test_remember_stores_the_turn_in_the_memory(memory: Any) -> None:
    chat = ChatMACMemory(memory=memory, namespace="u1", remember=True, max_new_tokens=6)
    reply = chat.invoke("My sister lives in Ostravel.", stop=[":::"])
    hits = memory.retrieve("Where does my sister live?", k=2, namespace="u1")
    assert hits[0].text == "User: My sister lives in Ostravel."
    assert hits[0].metadata["role"] == "user"
    stored_replies = [h.text for h in hits if h.metadata["role"] == "assistant"]
    assert stored_replies in ([], [f"Assistant: {reply.content}"])  # the reply as returned, if any
    assert len(hits) == (2 if reply.content.strip() else 1)
    before = memory.count("u1")
    list(chat.stream("I play the violin."))
    assert memory.count("u1") > before
    assert memory.retrieve("violin", k=1, namespace="u1")[0].text == "User: I play the violin."


def test_streaming_flag_makes_invoke_stream_with_the_same_result(facts_memory: Any) -> None:
    plain = ChatMACMemory(memory=facts_memory.memory, k=3, max_new_tokens=6)
    streaming = ChatMACMemory(memory=facts_memory.memory, k=3, max_new_tokens=6, streaming=True)
    tokens: list[str] = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            tokens.append(token)

    expected = plain.invoke(QUESTION)
    got = streaming.invoke(QUESTION, config={"callbacks": [Collect()]})
    assert got.content == expected.content == "".join(tokens) and tokens
    assert got.response_metadata["sources"] == expected.response_metadata["sources"]


def test_usage_counts_the_prompt_and_answer_tokens(facts_memory: Any) -> None:
    memory = facts_memory.memory
    reply = ChatMACMemory(memory=memory, max_new_tokens=5).invoke(QUESTION)
    tokenizer = memory.mac.lm.tokenizer
    assert reply.usage_metadata["input_tokens"] == len(tokenizer(format_chat([], QUESTION))["input_ids"])
    assert 0 < reply.usage_metadata["output_tokens"] <= 5 + 1
    assert reply.usage_metadata["total_tokens"] == (
        reply.usage_metadata["input_tokens"] + reply.usage_metadata["output_tokens"]
    )


# ----------------------------------------------------------------------------- composition


def test_runs_in_an_lcel_chain(facts_memory: Any) -> None:
    chat = ChatMACMemory(memory=facts_memory.memory, k=2, max_new_tokens=6)
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])
    chain = prompt | chat | StrOutputParser()
    out = chain.invoke({"question": QUESTION})
    assert isinstance(out, str) and out == chat.invoke(QUESTION).content
    assert "".join(chain.stream({"question": QUESTION})) == out


def test_async_invoke_matches_invoke(facts_memory: Any) -> None:
    chat = ChatMACMemory(memory=facts_memory.memory, k=3, max_new_tokens=6)
    sync = chat.invoke(QUESTION)
    result = asyncio.run(chat.ainvoke(QUESTION))
    assert result.content == sync.content
    assert result.response_metadata["sources"] == sync.response_metadata["sources"]


def test_create_agent_without_tools_answers(facts_memory: Any) -> None:
    from langchain.agents import create_agent

    agent = create_agent(model=ChatMACMemory(memory=facts_memory.memory, k=4, max_new_tokens=6), tools=[])
    state = agent.invoke({"messages": [{"role": "user", "content": QUESTION}]})
    last = state["messages"][-1]
    assert isinstance(last, AIMessage)
    assert set(_source_ids(last)) == set(facts_memory.ids)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_gives_specific_errors(facts_memory: Any) -> None:
    chat = ChatMACMemory(memory=facts_memory.memory)
    with pytest.raises(InvalidInputError, match="last message must be a HumanMessage"):
        chat.invoke([HumanMessage("hi"), AIMessage("hello")])
    with pytest.raises(EmptyInputError, match="last user message is empty"):
        chat.invoke([HumanMessage("   ")])
    with pytest.raises(InvalidInputError, match="Unknown option namesapce"):
        chat.invoke(QUESTION, namesapce="u1")
    with pytest.raises(InvalidInputError, match="cannot switch models"):
        chat.invoke(QUESTION, model="gpt-5")
    with pytest.raises(ValidationError, match="k"):
        chat.invoke(QUESTION, k=0)
    with pytest.raises(ValidationError, match="decodes greedily"):
        ChatMACMemory(memory=facts_memory.memory, temperature=0.7)
    with pytest.raises(ValidationError, match="namespace"):
        ChatMACMemory(memory=facts_memory.memory, namespace="a/b")
    with pytest.raises(ValidationError, match="MACMemory"):
        ChatMACMemory(memory="not a memory")
    with pytest.raises(NotImplementedError):
        chat.bind_tools([])


def test_max_tokens_is_an_alias_of_max_new_tokens(facts_memory: Any) -> None:
    chat = ChatMACMemory(memory=facts_memory.memory, max_tokens=3)
    assert chat.max_new_tokens == 3
    assert chat._get_ls_params()["ls_max_tokens"] == 3
