"""``MACMemoryChatMessageHistory``: a LangChain chat history whose turns are amortized into a MAC memory.

Every turn added becomes a MAC record (text ``"User: ..."`` / ``"Assistant: ..."``, metadata
``kind="message"``, ``role``, ``turn``, ``conversation_id`` as :meth:`MACMemory.add_messages
<mac_memory.memory.MACMemory.add_messages>` writes them), so later questions about what was said are
answered from the memory, while the history itself round-trips exactly (the LangChain message is kept
as JSON in the record's metadata).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import Any

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    message_to_dict,
    messages_from_dict,
)
from mac_memory.errors import InputTypeError, InvalidInputError
from mac_memory.memory import Hit, MACMemory
from mac_memory.memory.store import check_namespace

from ._messages import message_role
from ._records import record_ids

__all__ = ["MACMemoryChatMessageHistory"]

MESSAGE_KEY = "lc_message"
SESSION_KEY = "lc_session"
_SEQ = re.compile(r":(\d+)(?:#\d+)?$")  # record ids end in ":<turn>" (chunks add "#<i>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MACMemoryChatMessageHistory(BaseChatMessageHistory):
    """The turns of one conversation (``session_id``), each amortized into a MAC memory.

    Args:
        memory: the MAC memory the turns are written to.
        session_id: the conversation; its turns are the records tagged with it.
        namespace: MAC namespace of the records (default: ``session_id``). Use the same namespace
            for ``ChatMACMemory`` to answer from what was said.

    System messages are not stored (as in ``MACMemory.add_messages``: they instruct, they are not
    something said). :meth:`clear` deletes exactly this session's records, modulations included.

    Example:
        >>> from langchain_mac_memory import MACMemoryChatMessageHistory              # doctest: +SKIP
        >>> history = MACMemoryChatMessageHistory(memory, session_id="u1")             # doctest: +SKIP
        >>> history.add_user_message("My sister lives in Ostravel.")                   # doctest: +SKIP
        >>> [m.content for m in history.messages]                                       # doctest: +SKIP
        ['My sister lives in Ostravel.']
    """

    def __init__(self, memory: MACMemory, session_id: str, *, namespace: str | None = None) -> None:
        if not isinstance(memory, MACMemory):
            raise InputTypeError(f"memory must be a MACMemory, got {type(memory).__name__}.")
        if not isinstance(session_id, str) or not session_id.strip() or _CONTROL.search(session_id):
            raise InvalidInputError(
                f"session_id={session_id!r} is invalid: give a non-empty string without control characters."
            )
        if namespace is None and "/" in session_id:
            raise InvalidInputError(
                f"session_id={session_id!r} contains '/', so it cannot be the namespace; pass namespace=."
            )
        self.memory = memory
        self.session_id = session_id
        self.namespace = check_namespace(session_id if namespace is None else namespace)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MACMemoryChatMessageHistory(session_id={self.session_id!r}, namespace={self.namespace!r})"

    # ------------------------------------------------------------------ reading
    def _record_ids(self) -> list[str]:
        return record_ids(self.memory, self.namespace, {SESSION_KEY: self.session_id})

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """This session's stored turns, oldest first."""
        ids = self._record_ids()
        if not ids:
            return []
        first_chunks: dict[str, Hit] = {}
        for hit in self.memory.get(ids, namespace=self.namespace):
            kept = first_chunks.get(hit.parent_id)
            if kept is None or hit.chunk_index < kept.chunk_index:
                first_chunks[hit.parent_id] = hit
        ordered = sorted(first_chunks.values(), key=lambda h: int(h.metadata.get("turn", 0)))
        return [_message(hit) for hit in ordered]

    # ------------------------------------------------------------------ writing
    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Amortize ``messages`` into the memory, in one write (system messages are skipped)."""
        if isinstance(messages, BaseMessage) or not isinstance(messages, Sequence):
            raise InputTypeError(f"messages must be a list of BaseMessage, got {type(messages).__name__}.")
        for i, message in enumerate(messages):
            if not isinstance(message, BaseMessage):
                raise InputTypeError(f"messages[{i}] must be a BaseMessage, got {type(message).__name__}.")
        with self._lock:  # turn numbers are read, then written
            turn = self._next_turn()
            texts: list[str] = []
            metadatas: list[dict[str, Any]] = []
            ids: list[str] = []
            for i, message in enumerate(messages):
                role = message_role(message)
                if role == "system":
                    continue
                try:
                    stored = json.dumps(message_to_dict(message), ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    raise InputTypeError(f"messages[{i}] cannot be stored as JSON: {exc}") from exc
                texts.append(f"{role.capitalize()}: {message.text.strip()}".strip())
                metadatas.append(
                    {
                        "kind": "message",
                        "role": role,
                        "turn": turn,
                        "conversation_id": self.session_id,
                        SESSION_KEY: self.session_id,
                        MESSAGE_KEY: stored,
                    }
                )
                ids.append(f"lc-msg:{self.session_id}:{turn:09d}")
                turn += 1
            if texts:
                self.memory.add_texts(texts, metadatas, ids, namespace=self.namespace)

    def _next_turn(self) -> int:
        turns = [int(m.group(1)) for m in map(_SEQ.search, self._record_ids()) if m]
        return max(turns, default=-1) + 1

    def clear(self) -> None:
        """Delete this session's turns (their records and modulations) from the memory."""
        with self._lock:
            self.memory.delete(where={SESSION_KEY: self.session_id}, namespace=self.namespace)


def _message(hit: Hit) -> BaseMessage:
    """The stored LangChain message, or one rebuilt from the record's role and text."""
    stored = hit.metadata.get(MESSAGE_KEY)
    if isinstance(stored, str):
        return messages_from_dict([json.loads(stored)])[0]
    role = str(hit.metadata.get("role", "user"))
    text = hit.text.split(": ", 1)[1] if ": " in hit.text else hit.text
    if role == "user":
        return HumanMessage(content=text, id=hit.parent_id)
    if role == "assistant":
        return AIMessage(content=text, id=hit.parent_id)
    return ChatMessage(role=role, content=text, id=hit.parent_id)
