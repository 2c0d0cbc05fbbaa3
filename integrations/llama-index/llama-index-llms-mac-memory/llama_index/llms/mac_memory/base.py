"""MACMemoryLLM: a LlamaIndex LLM that answers from a MAC memory's modulations, not from the prompt.

For every query the LLM searches the :class:`~mac_memory.memory.MACMemory` with the question (the
completion prompt, or the last user message of a chat), lets the aggregation network merge the
candidates' modulations into one prefix, and generates with the frozen LM under that prefix. The prompt
holds only the question (and, for chats, the last ``history_turns`` user/assistant messages), so what the
memory knows never costs context tokens. System messages (where LlamaIndex puts retrieved context and
memory-block text) are not rendered: the memory reaches the answer through the modulation.

Which records shaped an answer comes back in ``response.additional_kwargs["sources"]`` (id, aggregation
weight, similarity score, ...), highest weight first; ``response.raw`` also holds the exact prompt the
frozen LM saw.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator, Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.constants import DEFAULT_CONTEXT_WINDOW
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from mac_memory.errors import InputTypeError, InvalidInputError
from mac_memory.memory import MACMemory, Source
from mac_memory.memory.store import check_namespace
from mac_memory.prompts import format_chat, format_question

logger = logging.getLogger(__name__)

__all__ = ["MACMemoryLLM"]

# Per-call keyword arguments that override the LLM's fields for one query.
_QUERY_KWARGS = ("k", "namespace", "where", "as_of", "prefer_newest", "max_new_tokens")
# LlamaIndex roles rendered as the assistant's turns; user messages stay user turns; the rest
# (system, developer, tool, function) is never rendered: format_chat only knows user and assistant.
_ASSISTANT_ROLES = {MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL}


def sources_payload(sources: Sequence[Source]) -> list[dict[str, Any]]:
    """The answer's sources as JSON-ready dicts, highest aggregation weight first."""
    return [
        {
            "id": s.id,
            "weight": float(s.weight),
            "score": float(s.score),
            "parent_id": s.parent_id,
            "namespace": s.namespace,
            "text": s.text,
            "metadata": dict(s.metadata),
        }
        for s in sources
    ]


class MACMemoryLLM(CustomLLM):
    """A frozen HuggingFace LM conditioned on a MAC memory, as a LlamaIndex chat LLM.

    Args:
        memory: the :class:`~mac_memory.memory.MACMemory` to answer from (its networks, frozen LM and
            Chroma store are used as they are; nothing is copied).
        k, namespace, where, prefer_newest, max_new_tokens, history_turns, context_window: see the fields.

    Every ``complete``/``chat`` call (and their streaming and async twins) also accepts ``k``,
    ``namespace``, ``where``, ``as_of``, ``prefer_newest`` and ``max_new_tokens`` as keyword arguments,
    overriding the fields for that call. Streaming yields exactly the text the non-streaming call returns.

    Example:
        >>> from llama_index.core.llms import ChatMessage                                   # doctest: +SKIP
        >>> memory = MACMemory(path="./mem", checkpoint="ckpt/")                            # doctest: +SKIP
        >>> memory.add_texts(["Kado Fen plays the violin."])                                 # doctest: +SKIP
        >>> llm = MACMemoryLLM(memory, k=4)                                                  # doctest: +SKIP
        >>> response = llm.chat([ChatMessage(role="user", content="What does Kado Fen play?")])  # doctest: +SKIP
        >>> [(s["id"], round(s["weight"], 2)) for s in response.additional_kwargs["sources"]]  # doctest: +SKIP
        [('3f1c...', 1.0)]
    """

    k: int = Field(
        default=8, gt=0, description="Memory records retrieved as aggregation candidates for each query."
    )
    namespace: str | None = Field(
        default=None, description="Namespace of the memory to answer from (None: the memory's default)."
    )
    where: dict[str, Any] | None = Field(
        default=None,
        description="Chroma metadata filter applied to the candidates (e.g. {'source': 'wiki'}).",
    )
    prefer_newest: bool = Field(
        default=False,
        description="Drop a candidate when a newer near-duplicate record is also a candidate (updated facts).",
    )
    max_new_tokens: int = Field(default=32, gt=0, description="Most tokens generated per answer.")
    history_turns: int = Field(
        default=6,
        ge=0,
        description=(
            "Earlier user/assistant messages of a chat rendered before the question (0: the question only). "
            "Older turns reach the answer through the memory, once a MACMemoryBlock has stored them."
        ),
    )
    context_window: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Context window reported to LlamaIndex, which budgets the text it writes into messages with it "
            "(None: the frozen LM's max_position_embeddings, at least LlamaIndex's default 3900). The "
            "frozen LM only sees the question and history_turns messages, so it may exceed the LM's window."
        ),
    )

    _memory: MACMemory = PrivateAttr()

    def __init__(self, memory: MACMemory, **kwargs: Any) -> None:
        if not isinstance(memory, MACMemory):
            raise InputTypeError(
                f"MACMemoryLLM needs a mac_memory.memory.MACMemory as memory, got {type(memory).__name__}."
            )
        super().__init__(**kwargs)
        self._memory = memory

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str | None) -> str | None:
        return None if value is None else check_namespace(value)

    @classmethod
    def class_name(cls) -> str:
        return "MACMemoryLLM"

    @property
    def memory(self) -> MACMemory:
        """The MAC memory this LLM answers from."""
        return self._memory

    @property
    def metadata(self) -> LLMMetadata:
        lm = self._memory.mac.lm
        window = self.context_window
        if window is None:
            # LlamaIndex packs retrieved text into the system message up to this budget (and refuses
            # windows smaller than its 500-token padding); that text is never rendered for the frozen LM,
            # so a small LM window must not starve LlamaIndex's bookkeeping.
            lm_window = getattr(lm.config, "max_position_embeddings", None) or 0
            window = max(int(lm_window), DEFAULT_CONTEXT_WINDOW)
        return LLMMetadata(
            context_window=window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=f"mac-memory:{lm.name_or_path}",
        )

    # ------------------------------------------------------------------ query preparation
    def _options(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The retrieval/generation options of one call: the fields, overridden by known kwargs."""
        unknown = sorted(set(kwargs) - set(_QUERY_KWARGS) - {"formatted"})
        if unknown:
            logger.debug("MACMemoryLLM ignores keyword arguments %s", unknown)
        opts: dict[str, Any] = {
            "k": self.k,
            "namespace": self.namespace,
            "where": self.where,
            "as_of": None,
            "prefer_newest": self.prefer_newest,
            "max_new_tokens": self.max_new_tokens,
        }
        opts.update({key: kwargs[key] for key in _QUERY_KWARGS if key in kwargs})
        n = opts["max_new_tokens"]
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise InvalidInputError(f"max_new_tokens={n!r} is invalid: give a positive integer.")
        return opts

    @staticmethod
    def _search_kwargs(opts: Mapping[str, Any]) -> dict[str, Any]:
        return {key: opts[key] for key in ("namespace", "where", "as_of", "prefer_newest")}

    def _conversation(self, messages: Sequence[ChatMessage]) -> tuple[list[dict[str, str]], str]:
        """``(turns, question)``: the rendered user/assistant turns ending with the last user message.

        System/tool messages and messages without text are left out; messages after the last user
        message (e.g. a trailing assistant prefill) are ignored, since the answer is to that question.
        """
        if isinstance(messages, (str, ChatMessage)) or not isinstance(messages, Sequence):
            raise InputTypeError(
                f"MACMemoryLLM.chat needs a list of ChatMessage, got {type(messages).__name__}."
            )
        turns: list[dict[str, str]] = []
        for i, message in enumerate(messages):
            if not isinstance(message, ChatMessage):
                raise InputTypeError(f"messages[{i}] must be a ChatMessage, got {type(message).__name__}.")
            text = (message.content or "").strip()
            if not text:
                continue
            if message.role == MessageRole.USER:
                turns.append({"role": "user", "content": text})
            elif message.role in _ASSISTANT_ROLES:
                turns.append({"role": "assistant", "content": text})
        last_user = max((i for i, t in enumerate(turns) if t["role"] == "user"), default=None)
        if last_user is None:
            raise InvalidInputError(
                "MACMemoryLLM.chat needs a user message with text: the memory is searched and "
                "aggregated for the last user message."
            )
        if last_user < len(turns) - 1:
            logger.debug(
                "MACMemoryLLM ignores %d message(s) after the last user message", len(turns) - 1 - last_user
            )
        turns = turns[: last_user + 1]
        return turns, turns[-1]["content"]

    def _history(self, turns: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
        """The earlier turns rendered before the question (as :meth:`MACMemory.chat` selects them)."""
        history = [(t["role"], t["content"]) for t in turns[:-1]]
        return history[-self.history_turns :] if self.history_turns > 0 else []

    @staticmethod
    def _payload(
        question: str, prompt: str, sources: Sequence[Source]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(additional_kwargs, raw)`` of a response."""
        listed = sources_payload(sources)
        return {"sources": listed}, {"question": question, "prompt": prompt, "sources": listed}

    # ------------------------------------------------------------------ completion
    def _complete(self, prompt: str, kwargs: Mapping[str, Any]) -> CompletionResponse:
        opts = self._options(kwargs)
        answer = self._memory.answer(
            prompt, opts["k"], max_new_tokens=opts["max_new_tokens"], **self._search_kwargs(opts)
        )
        extra, raw = self._payload(prompt, format_question(prompt), answer.sources)
        return CompletionResponse(text=answer.text, additional_kwargs=extra, raw=raw)

    def _stream_complete(self, prompt: str, kwargs: Mapping[str, Any]) -> CompletionResponseGen:
        opts = self._options(kwargs)
        stream = self._memory.answer_stream(
            prompt, opts["k"], max_new_tokens=opts["max_new_tokens"], **self._search_kwargs(opts)
        )
        extra, raw = self._payload(prompt, format_question(prompt), stream.sources)

        def gen() -> CompletionResponseGen:
            text = ""
            for piece in stream:
                text += piece
                yield CompletionResponse(text=text, delta=piece, additional_kwargs=extra, raw=raw)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer ``prompt`` (the question itself) from the memory; sources in ``additional_kwargs``."""
        return self._complete(prompt, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        """:meth:`complete`, streamed: the pieces join to the same text; every chunk carries the sources."""
        return self._stream_complete(prompt, kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """:meth:`complete` in a worker thread (the event loop stays free while the LM generates)."""
        return await asyncio.to_thread(self._complete, prompt, kwargs)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete`, with retrieval and every generation step in a worker thread."""
        sync_gen = await asyncio.to_thread(self._stream_complete, prompt, kwargs)
        return _in_threads(sync_gen)

    # ------------------------------------------------------------------ chat
    def _chat(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> ChatResponse:
        opts = self._options(kwargs)
        turns, question = self._conversation(messages)
        answer = self._memory.chat(
            turns,
            opts["k"],
            max_new_tokens=opts["max_new_tokens"],
            history_turns=self.history_turns,
            **self._search_kwargs(opts),
        )
        extra, raw = self._payload(question, format_chat(self._history(turns), question), answer.sources)
        # The sources stay out of message.additional_kwargs: LlamaIndex memories store the message and
        # count its additional_kwargs against their token limits.
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=answer.text),
            additional_kwargs=extra,
            raw=raw,
        )

    def _stream_chat(self, messages: Sequence[ChatMessage], kwargs: Mapping[str, Any]) -> ChatResponseGen:
        opts = self._options(kwargs)
        turns, question = self._conversation(messages)
        stream = self._memory.chat_stream(
            turns,
            opts["k"],
            max_new_tokens=opts["max_new_tokens"],
            history_turns=self.history_turns,
            **self._search_kwargs(opts),
        )
        extra, raw = self._payload(question, format_chat(self._history(turns), question), stream.sources)
        pieces = iter(stream)

        def gen() -> ChatResponseGen:
            text = ""
            try:
                for piece in pieces:
                    text += piece
                    yield ChatResponse(
                        message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                        delta=piece,
                        additional_kwargs=extra,
                        raw=raw,
                    )
            finally:
                pieces.close()  # a consumer that stops early also stops the generation thread

        return gen()

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the last user message from the memory (recent turns in the prompt, older ones modulated)."""
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """:meth:`chat`, streamed: the pieces join to the same text; every chunk carries the sources."""
        return self._stream_chat(messages, kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` in a worker thread."""
        return await asyncio.to_thread(self._chat, messages, kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        """:meth:`stream_chat`, with retrieval and every generation step in a worker thread."""
        sync_gen = await asyncio.to_thread(self._stream_chat, messages, kwargs)
        return _in_threads(sync_gen)


_DONE = object()


async def _in_threads(sync_gen: Iterator[Any]) -> AsyncGenerator[Any, None]:
    """Drive a blocking generator from async code, one ``next`` per worker-thread call."""
    try:
        while True:
            item = await asyncio.to_thread(next, sync_gen, _DONE)
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(sync_gen, "close", None)
        if close is not None:  # stopping early must also stop the generation thread
            await asyncio.to_thread(close)
