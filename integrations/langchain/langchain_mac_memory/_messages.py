"""The role of a LangChain message in mac-memory's terms (``user``, ``assistant``, ``system``, ...)."""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage


def message_role(message: BaseMessage) -> str:
    """``user``, ``assistant`` or ``system``; a generic ``ChatMessage``'s own role (``human``/``ai``
    mapped); otherwise the message type (``tool``, ``function``, ...)."""
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, ChatMessage):
        return {"human": "user", "ai": "assistant"}.get(message.role, message.role)
    return str(message.type)
