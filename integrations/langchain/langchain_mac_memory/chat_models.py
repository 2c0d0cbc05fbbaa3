"""``ChatMACMemory``: a LangChain chat model that answers from a MAC memory.

The last user turn is the question: the memory is searched for it, the relevant modulations are merged
by the aggregation network into a prefix for the frozen LM, and the LM generates with the recent chat
history and the question in the prompt (never the documents). Each answer carries the records it came
from, ranked by aggregation weight, in ``response_metadata["sources"]``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    UsageMetadata,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from mac_memory.errors import EmptyInputError, InvalidInputError
from mac_memory.memory import Answer, MACMemory, Source
from mac_memory.memory.store import check_namespace
from mac_memory.prompts import format_chat
from pydantic import AliasChoices, ConfigDict, Field, field_validator, model_validator
from typing_extensions import Self

from ._messages import message_role
from ._streaming import cut_at_stop, stop_pieces

logger = logging.getLogger(__name__)

__all__ = ["ChatMACMemory"]

# Per-call options (``invoke(..., k=3)`` or ``.bind(namespace="u1")``) and the field each overrides.
_CALL_OPTIONS = {
    "k": "k",
    "namespace": "namespace",
    "max_new_tokens": "max_new_tokens",
    "max_tokens": "max_new_tokens",
    "history_turns": "history_turns",
    "where": "where",
    "prefer_newest": "prefer_newest",
    "remember": "remember",
    "temperature": "temperature",
}


@dataclass(frozen=True)
class _Options:
    k: int
    namespace: str | None
    max_new_tokens: int
    history_turns: int
    where: Mapping[str, Any] | None
    prefer_newest: bool
    remember: bool


@dataclass(frozen=True)
class _Turns:
    """What the LM sees: the question (last user turn) and the user/assistant turns before it."""

    question: str
    history: list[tuple[str, str]]

    def as_messages(self) -> list[dict[str, str]]:
        """``MACMemory.chat``'s message format."""
        turns = [{"role": role, "content": content} for role, content in self.history]
        return [*turns, {"role": "user", "content": self.question}]


def _source_dict(source: Source) -> dict[str, Any]:
    return {
        "id": source.id,
        "parent_id": source.parent_id,
        "weight": source.weight,
        "score": source.score,
        "namespace": source.namespace,
        "text": source.text,
    }


class ChatMACMemory(BaseChatModel):
    """Chat model answering from a :class:`~mac_memory.memory.MACMemory` (parametric long-term memory).

    What the memory holds reaches the frozen LM as an aggregated prefix, not as prompt text; the prompt
    holds the last ``history_turns`` user/assistant turns and the question, as in
    :meth:`MACMemory.chat <mac_memory.memory.MACMemory.chat>`. System messages are not shown to the
    LM (it was never trained on them); tool messages are skipped.

    Decoding is greedy, so ``temperature`` may only be ``0`` or unset. Tool calling is not supported:
    the frozen LM cannot produce tool calls, so :meth:`bind_tools` raises ``NotImplementedError``;
    ``create_agent(model=ChatMACMemory(...), tools=[])`` works (an agent without tools needs no
    binding).

    Every answer's ``response_metadata`` holds ``sources``: ``[{"id", "parent_id", "weight", "score",
    "namespace", "text"}]`` ranked by aggregation weight (``[]`` when the namespace held nothing), the
    ``namespace`` searched and ``model_name``; ``usage_metadata`` counts the prompt's and the answer's
    tokens.

    Example:
        >>> from langchain_mac_memory import ChatMACMemory                              # doctest: +SKIP
        >>> memory.add_texts(["Kado Fen plays the violin."], namespace="u1")            # doctest: +SKIP
        >>> chat = ChatMACMemory(memory=memory, namespace="u1", k=4)                    # doctest: +SKIP
        >>> reply = chat.invoke("What does Kado Fen play?")                             # doctest: +SKIP
        >>> reply.content, reply.response_metadata["sources"][0]["id"]                  # doctest: +SKIP
        ('the violin', '3f1c...')
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, protected_namespaces=())

    memory: MACMemory = Field(exclude=True, description="The MAC memory that answers (and remembers).")
    model_name: str | None = Field(
        default=None, description="Name reported in traces and metadata (default: the base LM's name)."
    )
    k: int = Field(default=8, gt=0, description="Candidate records retrieved and aggregated per answer.")
    namespace: str | None = Field(
        default=None, description="Namespace to answer from (default: the memory's default namespace)."
    )
    max_new_tokens: int = Field(
        default=32,
        gt=0,
        validation_alias=AliasChoices("max_new_tokens", "max_tokens"),
        description="Most tokens to generate per answer (``max_tokens`` is accepted too).",
    )
    history_turns: int = Field(
        default=6, ge=0, description="Earlier user/assistant turns written into the prompt."
    )
    where: dict[str, Any] | None = Field(
        default=None, description="Chroma metadata filter applied to the candidates."
    )
    prefer_newest: bool = Field(
        default=False, description="Drop candidates that a newer near-duplicate supersedes."
    )
    remember: bool = Field(
        default=False,
        description="Store each user turn and the reply (as returned) in the namespace after answering.",
    )
    stop: list[str] | None = Field(default=None, description="Stop sequences: the answer ends before them.")
    temperature: float | None = Field(
        default=None, description="Only 0 or None: decoding is greedy (deterministic)."
    )
    streaming: bool = Field(default=False, description="Let ``invoke`` stream internally (callbacks).")

    # ------------------------------------------------------------------ validation
    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str | None) -> str | None:
        return None if value is None else check_namespace(value)

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, value: float | None) -> float | None:
        if value not in (None, 0, 0.0):
            raise ValueError(
                f"temperature={value!r} is not supported: ChatMACMemory decodes greedily; "
                "leave temperature unset or 0."
            )
        return value

    @model_validator(mode="after")
    def _default_model_name(self) -> Self:
        if self.model_name is None:
            self.model_name = str(getattr(self.memory.mac.lm, "name_or_path", "") or "mac-memory")
        return self

    # ------------------------------------------------------------------ LangChain metadata
    @property
    def _llm_type(self) -> str:
        return "mac-memory-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "collection": self.memory.store.name,
            "checkpoint_fingerprint": self.memory.fingerprint,
            "namespace": self.namespace,
            "k": self.k,
            "max_new_tokens": self.max_new_tokens,
            "history_turns": self.history_turns,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="mac_memory",
            ls_model_name=model if isinstance(model, str) else str(self.model_name),
            ls_model_type="chat",
            ls_temperature=0.0,
            ls_max_tokens=int(kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens))),
        )
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = stops
        return params

    # ------------------------------------------------------------------ inputs
    def _options(self, kwargs: Mapping[str, Any]) -> _Options:
        """The fields, overridden by per-call keyword arguments (unknown names are refused)."""
        values: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name == "model":
                if value not in (None, self.model_name):
                    raise InvalidInputError(
                        f"model={value!r}: ChatMACMemory answers with its memory's LM "
                        f"({self.model_name!r}) and cannot switch models per call."
                    )
            elif name in _CALL_OPTIONS:
                values[_CALL_OPTIONS[name]] = value
            elif not name.startswith("ls_"):
                raise InvalidInputError(
                    f"Unknown option {name}={value!r} for ChatMACMemory; per-call options are "
                    f"{sorted(_CALL_OPTIONS)}."
                )
        # Overrides are validated (and coerced) exactly like constructor arguments.
        checked = self.model_validate({**self.__dict__, **values}) if values else self
        return _Options(
            k=checked.k,
            namespace=checked.namespace,
            max_new_tokens=checked.max_new_tokens,
            history_turns=checked.history_turns,
            where=checked.where,
            prefer_newest=checked.prefer_newest,
            remember=checked.remember,
        )

    def _turns(self, messages: Sequence[BaseMessage], history_turns: int) -> _Turns:
        """The question (the last user turn) and the turns before it that the prompt shows."""
        turns: list[tuple[str, str]] = []
        for message in messages:
            role = message_role(message)
            if role not in ("user", "assistant"):
                if role != "system":
                    logger.debug("ChatMACMemory skips a %s message: it has no place in the prompt.", role)
                continue
            content = message.text
            if role == "user" and message is messages[-1] and not content.strip():
                raise EmptyInputError("The last user message is empty or whitespace only; ask something.")
            if content.strip():  # empty turns (an assistant that said nothing) carry nothing
                turns.append((role, content))
        if not messages or message_role(messages[-1]) != "user":
            last = message_role(messages[-1]) if messages else None
            raise InvalidInputError(
                "ChatMACMemory answers the user's turn: the last message must be a HumanMessage "
                f"(got {type(messages[-1]).__name__ if messages else 'no messages'}, role {last!r})."
            )
        question = turns[-1][1]
        history = turns[:-1][-history_turns:] if history_turns > 0 else []
        return _Turns(question, history)

    # ------------------------------------------------------------------ outputs
    def _usage(self, prompt: str, answer: str) -> UsageMetadata:
        tokenizer = self.memory.mac.lm.tokenizer
        prompt_tokens = len(tokenizer(prompt)["input_ids"])
        answer_tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) if answer else 0
        return UsageMetadata(
            input_tokens=prompt_tokens,
            output_tokens=answer_tokens,
            total_tokens=prompt_tokens + answer_tokens,
        )

    def _metadata(self, options: _Options, sources: Sequence[Source]) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "namespace": options.namespace or self.memory.default_namespace,
            "sources": [_source_dict(s) for s in sources],
            "finish_reason": "stop",
        }

    def _remember(self, options: _Options, turns: _Turns, text: str) -> None:
        """Store the user turn and the reply as returned (after stop sequences), like ``chat(remember=True)``."""
        replied = [{"role": "assistant", "content": text}] if text.strip() else []
        self.memory.add_messages(
            [{"role": "user", "content": turns.question}, *replied], namespace=options.namespace
        )

    def _result(self, turns: _Turns, options: _Options, answer: Answer, stop: list[str] | None) -> ChatResult:
        text = cut_at_stop(answer.text, stop if stop is not None else self.stop)
        message = AIMessage(
            content=text,
            response_metadata=self._metadata(options, answer.sources),
            usage_metadata=self._usage(format_chat(turns.history, turns.question), text),
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    # ------------------------------------------------------------------ generation
    def _chat_kwargs(self, options: _Options) -> dict[str, Any]:
        return {
            "namespace": options.namespace,
            "where": options.where,
            "prefer_newest": options.prefer_newest,
            "max_new_tokens": options.max_new_tokens,
            "history_turns": options.history_turns,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._options(kwargs)
        turns = self._turns(messages, options.history_turns)
        answer = self.memory.chat(turns.as_messages(), options.k, **self._chat_kwargs(options))
        result = self._result(turns, options, answer, stop)
        if options.remember:
            self._remember(options, turns, result.generations[0].message.text)
        return result

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._options(kwargs)
        turns = self._turns(messages, options.history_turns)
        answer = await self.memory.achat(turns.as_messages(), options.k, **self._chat_kwargs(options))
        result = self._result(turns, options, answer, stop)
        if options.remember:
            await asyncio.to_thread(self._remember, options, turns, result.generations[0].message.text)
        return result

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        options = self._options(kwargs)
        turns = self._turns(messages, options.history_turns)
        stream = self.memory.chat_stream(turns.as_messages(), options.k, **self._chat_kwargs(options))
        text = ""
        pieces = stop_pieces(stream, stop if stop is not None else self.stop)
        with closing(pieces):  # a consumer that stops early also stops generation, at once
            for piece in pieces:
                text += piece
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
                if run_manager is not None:
                    run_manager.on_llm_new_token(piece, chunk=chunk)
                yield chunk
        if options.remember:
            self._remember(options, turns, text)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                response_metadata=self._metadata(options, stream.sources),
                usage_metadata=self._usage(format_chat(turns.history, turns.question), text),
                chunk_position="last",
            )
        )
