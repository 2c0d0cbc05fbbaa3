"""Fixtures for the LangChain integration tests: the tiny MAC stack of :mod:`lc_support`, network blocked.

Untrained networks generate noise, so tests assert what is deterministic: ids, sources, weights, prompts
and prefixes.
"""

from __future__ import annotations

import inspect
import ipaddress
import os
import socket
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

for _module in ("langchain_core", "langgraph", "langchain", "langchain_tests"):
    pytest.importorskip(
        _module, reason="install the test extra: pip install -e 'integrations/langchain[test]'"
    )

import torch  # noqa: E402
from lc_support import DISTRACTORS, FACT, new_memory  # noqa: E402

# Tiny tensors gain nothing from threads; on a shared 2-core machine OpenMP threads spin-wait on each other.
torch.set_num_threads(int(os.environ.get("MAC_TEST_THREADS", "1")))

# ----------------------------------------------------------------------------- network


def _is_local(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else ""
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs offline: connections to anything but loopback or a unix socket fail.

    Function-scoped on purpose: pytest-socket (installed with langchain-tests) restores
    ``socket.socket.connect`` after every test, which would silently lift a session-wide patch.
    """
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> Any:
        if not _is_local(address):
            raise ConnectionRefusedError(f"network access blocked in tests: {address!r}")
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if not _is_local(address):
            raise ConnectionRefusedError(f"network access blocked in tests: {address!r}")
        return original_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)


# ----------------------------------------------------------------------------- async tests


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: Any) -> Iterator[None]:
    """Run coroutine tests (the standard suites have some) with pytest-asyncio, in strict mode too.

    The repository's pytest configuration is shared with other test folders, so instead of switching
    asyncio_mode globally, coroutine tests collected here get the ``asyncio`` mark.
    """
    outcome = yield
    items = outcome.get_result()
    for item in items if isinstance(items, list) else [items]:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(getattr(item, "obj", None)):
            item.add_marker(pytest.mark.asyncio)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def make_memory() -> Callable[..., Any]:
    """Factory of MACMemory objects, each on its own fresh collection of the session's Chroma."""
    return new_memory


@pytest.fixture
def memory(make_memory: Callable[..., Any]) -> Any:
    """An empty MACMemory (fresh collection)."""
    return make_memory()


@pytest.fixture
def facts_memory(make_memory: Callable[..., Any]) -> types.SimpleNamespace:
    """A memory holding FACT and DISTRACTORS in the default namespace; ``fact_id`` is FACT's id."""
    mem = make_memory()
    ids = mem.add_texts([FACT, *DISTRACTORS])
    return types.SimpleNamespace(memory=mem, ids=ids, fact_id=ids[0])
