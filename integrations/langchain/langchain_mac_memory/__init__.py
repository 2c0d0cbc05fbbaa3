"""LangChain integration of mac-memory (MAC: Memory of Amortized Contexts).

* :class:`ChatMACMemory` — a chat model whose frozen LM is conditioned on the memory (``chat_models``);
* :class:`MACMemoryRetriever` — the memory's records as Documents, with aggregation weights (``retrievers``);
* :class:`MACMemoryStore` — a LangGraph long-term memory store on the memory (``stores``; needs
  ``pip install 'langchain-mac-memory[langgraph]'``);
* :class:`MACMemoryChatMessageHistory` — a chat history amortized into the memory
  (``chat_message_histories``).

Names load lazily, so ``import langchain_mac_memory`` stays cheap and the LangGraph dependency is only
needed by the store.

Example:
    >>> from mac_memory.memory import MACMemory                                       # doctest: +SKIP
    >>> from langchain_mac_memory import ChatMACMemory                                 # doctest: +SKIP
    >>> memory = MACMemory(path="./mem")                                               # doctest: +SKIP
    >>> memory.add_texts(["Kado Fen plays the violin."])                                # doctest: +SKIP
    >>> ChatMACMemory(memory=memory).invoke("What does Kado Fen play?").content       # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mac_memory.errors import MissingDependencyError

if TYPE_CHECKING:
    from .chat_message_histories import MACMemoryChatMessageHistory
    from .chat_models import ChatMACMemory
    from .retrievers import MACMemoryRetriever
    from .stores import MACMemoryStore

__version__ = "0.1.0"

__all__ = [
    "ChatMACMemory",
    "MACMemoryChatMessageHistory",
    "MACMemoryRetriever",
    "MACMemoryStore",
    "__version__",
]

_WHERE = {
    "ChatMACMemory": ".chat_models",
    "MACMemoryChatMessageHistory": ".chat_message_histories",
    "MACMemoryRetriever": ".retrievers",
    "MACMemoryStore": ".stores",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(_WHERE[name], __name__)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "langgraph":
            raise MissingDependencyError(
                f"{name} is a LangGraph store and needs langgraph. Install it with: "
                "pip install 'langchain-mac-memory[langgraph]'"
            ) from exc
        raise
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
