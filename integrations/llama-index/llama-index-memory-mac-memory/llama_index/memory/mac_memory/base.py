"""MACMemoryBlock: a ``llama_index.core.memory.Memory`` block that amortizes old chat turns into MAC.

LlamaIndex's ``Memory`` keeps recent messages in a short-term queue; once the queue holds more than
``token_limit * chat_history_token_ratio`` tokens, the oldest messages are flushed to every memory block
(``block.aput``). This block amortizes them into the :class:`~mac_memory.memory.MACMemory` (one record
per user/assistant message, tagged with the session id), so they leave the prompt but not the
conversation: a ``MACMemoryLLM`` on the same memory and namespace answers later questions under their
aggregated modulation. What the block puts back into the prompt (``aget``) is only ``note``, empty by
default — the knowledge does not travel as text.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.memory.memory import BaseMemoryBlock

from mac_memory.errors import InputTypeError
from mac_memory.memory import MACMemory
from mac_memory.memory.store import check_namespace

logger = logging.getLogger(__name__)

__all__ = ["MACMemoryBlock"]

# LlamaIndex roles stored as the assistant's turns; system, developer, tool and function messages are
# not stored (they are instructions or tool plumbing, not what was said in the conversation).
_ASSISTANT_ROLES = {MessageRole.ASSISTANT, MessageRole.CHATBOT, MessageRole.MODEL}


class MACMemoryBlock(BaseMemoryBlock[str]):
    """Long-term conversation memory as MAC modulations, for ``llama_index.core.memory.Memory``.

    Args:
        memory: the :class:`~mac_memory.memory.MACMemory` that stores the flushed turns (give the same
            one, with the same namespace, to the ``MACMemoryLLM`` that answers).
        name, description, priority, accept_short_term_memory, namespace, note: see the fields.

    Example:
        >>> from llama_index.core.memory import Memory                                      # doctest: +SKIP
        >>> from llama_index.core.chat_engine import SimpleChatEngine                       # doctest: +SKIP
        >>> from llama_index.llms.mac_memory import MACMemoryLLM                            # doctest: +SKIP
        >>> block = MACMemoryBlock(memory, namespace="user-1")                              # doctest: +SKIP
        >>> chat_memory = Memory.from_defaults(token_limit=400, memory_blocks=[block])      # doctest: +SKIP
        >>> llm = MACMemoryLLM(memory, namespace="user-1")                                  # doctest: +SKIP
        >>> engine = SimpleChatEngine.from_defaults(llm=llm, memory=chat_memory)            # doctest: +SKIP
        >>> engine.chat("My locker code is 4312.")                                          # doctest: +SKIP
    """

    name: str = Field(default="mac_memory", description="The block's name in the memory (unique per Memory).")
    description: str | None = Field(
        default="Earlier conversation turns, amortized into MAC modulations of the frozen LM.",
        description="A description of the memory block.",
    )
    namespace: str | None = Field(
        default=None,
        description="Namespace of the MAC memory the turns are stored in (None: the memory's default).",
    )
    note: str = Field(
        default="",
        description=(
            "Text aget returns for the prompt ('' returns nothing). MACMemoryLLM never renders it; "
            "another LLM would see it inside the <memory> section of the system message."
        ),
    )

    _memory: MACMemory = PrivateAttr()

    def __init__(self, memory: MACMemory, **kwargs: Any) -> None:
        if not isinstance(memory, MACMemory):
            raise InputTypeError(
                f"MACMemoryBlock needs a mac_memory.memory.MACMemory as memory, got {type(memory).__name__}."
            )
        super().__init__(**kwargs)
        self._memory = memory

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str | None) -> str | None:
        return None if value is None else check_namespace(value)

    @property
    def memory(self) -> MACMemory:
        """The MAC memory the flushed turns are stored in."""
        return self._memory

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        """The ``note`` (empty by default): the stored turns reach answers as a modulation, not as text."""
        return self.note

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Amortize the flushed user/assistant messages into the MAC memory (in a worker thread)."""
        turns = _turns(messages)
        if not turns:
            return
        session_id = next(
            (
                m.additional_kwargs.get("session_id")
                for m in messages
                if m.additional_kwargs.get("session_id")
            ),
            None,
        )
        ids = await asyncio.to_thread(
            self._memory.add_messages,
            turns,
            namespace=self.namespace,
            conversation_id=None if session_id is None else str(session_id),
        )
        logger.info("Amortized %d flushed chat message(s) into MAC memory records %s", len(turns), ids)


def _turns(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The messages ``MACMemory.add_messages`` stores: user/assistant ones with text."""
    turns = []
    for message in messages:
        text = (message.content or "").strip()
        if not text:
            continue
        if message.role == MessageRole.USER:
            turns.append({"role": "user", "content": text})
        elif message.role in _ASSISTANT_ROLES:
            turns.append({"role": "assistant", "content": text})
    return turns
