"""LlamaIndex LLM backed by a MAC memory: ``from llama_index.llms.mac_memory import MACMemoryLLM``."""

from llama_index.llms.mac_memory.base import MACMemoryLLM

__all__ = ["MACMemoryLLM"]
