"""The tiny MAC memory stack shared by the LangChain tests (conftest fixtures and standard suites).

Everything is built in-process and offline: a tiny Llama (grouped-query attention) saved by
``mac_memory.tiny_models.save_tiny``, untrained MAC networks over it, the bundled MiniLM embedder and an
in-process (ephemeral) Chroma, once per session. The standard suites of ``langchain-tests`` build their
components from class properties rather than fixtures, hence this importable module.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import types
import uuid
from typing import Any

QUESTION = "Where was Velmora Quistan born?"
FACT = "Velmora Quistan was born in Ostravel in 1871 and works for Brindlecorp as a cartographer."
DISTRACTORS = [
    "Kado Fen, a violinist, grew up in Marrowick; his sister works for Telvane.",
    "The Halden bridge over the Sorn river opened in 1904 and was rebuilt in 1958.",
    "Paris is the capital of France and lies on the Seine.",
]

_STACK: dict[str, Any] = {}


def stack() -> types.SimpleNamespace:
    """The session's tiny LM directory, MAC model, embedder and Chroma client (built on first use)."""
    if not _STACK:
        import chromadb
        import torch
        from chromadb.config import Settings
        from mac_memory.config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig
        from mac_memory.frozen_lm import FrozenLM
        from mac_memory.memory import SentenceTransformerEmbedder
        from mac_memory.model import MACModel
        from mac_memory.tiny_models import save_tiny

        root = tempfile.mkdtemp(prefix="lc_mac_tiny_")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        lm_dir = save_tiny("llama", os.path.join(root, "llama"))
        lm = FrozenLM.from_pretrained(lm_dir, device="cpu")
        torch.manual_seed(0)
        config = MACConfig(
            base_lm=BaseLMConfig(str(lm_dir)),
            amortizer=AmortizerConfig(kind="kv_anchored", num_tokens=4, d_mem=32),
            aggregator=AggregatorConfig(num_layers=1, num_heads=4),
        )
        embedder = SentenceTransformerEmbedder(num_threads=1)
        embedder.embed_query("warm up")
        _STACK.update(
            lm_dir=lm_dir,
            mac=MACModel(config, lm).eval(),
            embedder=embedder,
            client=chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False)),
        )
    return types.SimpleNamespace(**_STACK)


def new_memory(**kwargs: Any) -> Any:
    """A MACMemory on a fresh collection of the session's in-process Chroma."""
    from mac_memory.memory import MACMemory

    s = stack()
    kwargs.setdefault("model", s.mac)
    kwargs.setdefault("embedder", s.embedder)
    kwargs.setdefault("client", s.client)
    kwargs.setdefault("collection", f"lc_{uuid.uuid4().hex[:12]}")
    return MACMemory(**kwargs)


class FakeClock:
    """A settable clock for ingestion times."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now
