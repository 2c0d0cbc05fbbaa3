"""mac-memory: a parametric long-term memory for LLM applications (Memory of Amortized Contexts).

Heavy optional dependencies (chromadb, sentence-transformers, LangChain, LlamaIndex, matplotlib) are
imported only by the parts that need them, so ``import mac_memory`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

_EXPORTS = {
    "MACConfig": "config",
    "BaseLMConfig": "config",
    "AmortizerConfig": "config",
    "AggregatorConfig": "config",
    "ModulationConfig": "config",
    "FrozenLM": "frozen_lm",
    "KVLayout": "frozen_lm",
    "PrefixKV": "prefix",
    "MACModel": "model",
    "MACMemory": "memory",
    "MACError": "errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from .config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig, ModulationConfig
    from .errors import MACError
    from .frozen_lm import FrozenLM, KVLayout
    from .memory import MACMemory
    from .model import MACModel
    from .prefix import PrefixKV

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package does not import torch/transformers/chromadb until a name is used.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'mac_memory' has no attribute {name!r}")
