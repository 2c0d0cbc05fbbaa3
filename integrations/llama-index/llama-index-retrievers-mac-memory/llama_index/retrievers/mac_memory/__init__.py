"""LlamaIndex retriever over a MAC memory: ``from llama_index.retrievers.mac_memory import MACMemoryRetriever``."""

from llama_index.retrievers.mac_memory.base import MAC_METADATA_KEYS, MACMemoryRetriever

__all__ = ["MAC_METADATA_KEYS", "MACMemoryRetriever"]
