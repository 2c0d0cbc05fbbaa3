"""Fixtures for the LlamaIndex integration tests: one tiny MAC model and embedder per session, fresh memories.

Everything is built in-process and offline: a tiny Llama (grouped-query attention) written by
``mac_memory.tiny_models.save_tiny``, small untrained MAC networks over it, the bundled MiniLM embedder,
and Chroma's in-process ephemeral client with a fresh collection per memory. The network is blocked for
every test, and LlamaIndex's global ``Settings`` get a mock LLM and embedding model, so nothing can fall
back to OpenAI.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import torch

# Tiny tensors gain nothing from threads; on a shared 2-core machine OpenMP threads spin-wait on each other.
torch.set_num_threads(int(os.environ.get("MAC_TEST_THREADS", "1")))

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


@pytest.fixture(autouse=True)
def _block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse connections to anything but this machine (a test that needs the network is a bug)."""
    real_connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and str(address[0]) not in _LOCAL_HOSTS:
            raise ConnectionRefusedError(f"network access blocked in tests: {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session", autouse=True)
def _mock_settings() -> Iterator[None]:
    """Global LlamaIndex defaults that never reach a provider (engines get our LLM explicitly)."""
    from llama_index.core import Settings
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM

    saved = (Settings._llm, Settings._embed_model)
    Settings.llm = MockLLM(max_tokens=4)
    Settings.embed_model = MockEmbedding(embed_dim=8)
    yield
    Settings._llm, Settings._embed_model = saved


@pytest.fixture(scope="session")
def li_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (4 query heads, 2 key/value heads) saved once per session."""
    from mac_memory.tiny_models import save_tiny

    return save_tiny("llama", tmp_path_factory.mktemp("li_tiny") / "llama")


@pytest.fixture(scope="session")
def li_mac(li_lm_dir: Path) -> Any:
    """Small, untrained, deterministic MAC networks over the tiny Llama."""
    from mac_memory.config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig
    from mac_memory.frozen_lm import FrozenLM
    from mac_memory.model import MACModel

    lm = FrozenLM.from_pretrained(li_lm_dir, device="cpu")
    torch.manual_seed(0)
    config = MACConfig(
        base_lm=BaseLMConfig(str(li_lm_dir)),
        amortizer=AmortizerConfig(kind="kv_anchored", num_tokens=4, d_mem=32),
        aggregator=AggregatorConfig(num_layers=1, num_heads=4),
    )
    return MACModel(config, lm).eval()


@pytest.fixture(scope="session")
def li_embedder() -> Any:
    """The real, bundled all-MiniLM-L6-v2 embedder, loaded once."""
    from mac_memory.memory import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(num_threads=1)
    embedder.embed_query("warm up")
    return embedder


@pytest.fixture
def make_memory(li_mac: Any, li_embedder: Any) -> Callable[..., Any]:
    """Factory: a MACMemory on a fresh collection of Chroma's in-process ephemeral client."""
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    from mac_memory.memory import MACMemory

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("model", li_mac)
        kwargs.setdefault("embedder", li_embedder)
        kwargs.setdefault(
            "client", chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
        )
        kwargs.setdefault("collection", f"li_{uuid.uuid4().hex[:12]}")
        return MACMemory(**kwargs)

    return make


@pytest.fixture
def llm_events() -> Iterator[list[Any]]:
    """LLM end events (chat and completion) dispatched while the test runs, in order."""
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent

    seen: list[Any] = []

    class _Collect(BaseEventHandler):
        def handle(self, event: Any, **kwargs: Any) -> None:
            if isinstance(event, (LLMChatEndEvent, LLMCompletionEndEvent)):
                seen.append(event)

    root = get_dispatcher()
    handler = _Collect()
    root.add_event_handler(handler)
    yield seen
    root.event_handlers.remove(handler)
