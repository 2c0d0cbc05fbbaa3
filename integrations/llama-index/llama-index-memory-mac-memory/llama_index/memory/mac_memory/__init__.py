"""LlamaIndex memory block storing old chat turns in a MAC memory: ``from llama_index.memory.mac_memory import MACMemoryBlock``."""

from llama_index.memory.mac_memory.base import MACMemoryBlock

__all__ = ["MACMemoryBlock"]
