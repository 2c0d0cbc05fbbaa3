"""The package's public surface: exports, base classes, typing marker, lazy imports, offline tests."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import langchain_mac_memory

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def test_all_is_locked() -> None:
    """Adding or removing a public name is a deliberate change: update this list with it."""
    assert langchain_mac_memory.__all__ == [
        "ChatMACMemory",
        "MACMemoryChatMessageHistory",
        "MACMemoryRetriever",
        "MACMemoryStore",
        "__version__",
    ]
    for name in langchain_mac_memory.__all__:
        assert getattr(langchain_mac_memory, name) is not None


def test_components_have_the_langchain_base_classes() -> None:
    from langchain_core.chat_history import BaseChatMessageHistory
    from langchain_core.language_models import BaseChatModel
    from langchain_core.retrievers import BaseRetriever
    from langgraph.store.base import BaseStore

    assert issubclass(langchain_mac_memory.ChatMACMemory, BaseChatModel)
    assert issubclass(langchain_mac_memory.MACMemoryRetriever, BaseRetriever)
    assert issubclass(langchain_mac_memory.MACMemoryStore, BaseStore)
    assert issubclass(langchain_mac_memory.MACMemoryChatMessageHistory, BaseChatMessageHistory)


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = langchain_mac_memory.Nope  # type: ignore[attr-defined]


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    assert langchain_mac_memory.__version__ == version("langchain-mac-memory")


def test_py_typed_marker_ships() -> None:
    assert (PACKAGE_ROOT / "langchain_mac_memory" / "py.typed").is_file()


def test_import_is_lazy() -> None:
    """``import langchain_mac_memory`` loads neither torch, chromadb nor langgraph."""
    code = (
        "import sys, langchain_mac_memory; "
        "print(sorted(m for m in ('torch', 'chromadb', 'langgraph') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_store_without_langgraph_names_the_extra() -> None:
    from mac_memory.errors import MissingDependencyError

    with pytest.MonkeyPatch.context() as patch:
        patch.delitem(sys.modules, "langchain_mac_memory.stores", raising=False)
        patch.setitem(sys.modules, "langgraph.store.base", None)  # importing it now fails
        with pytest.raises(MissingDependencyError, match=r"langchain-mac-memory\[langgraph\]"):
            _ = langchain_mac_memory.MACMemoryStore
    assert importlib.import_module("langchain_mac_memory.stores").MACMemoryStore is not None


def test_network_is_blocked_but_loopback_is_not() -> None:
    with pytest.raises(ConnectionRefusedError, match="network access blocked"):
        socket.create_connection(("198.51.100.7", 80), timeout=1)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        client = socket.create_connection(server.getsockname(), timeout=1)
        client.close()
    finally:
        server.close()
