"""Data for mac-memory: the document-stream format (JSONL) and the synthetic world of invented people.

Example:
    >>> from mac_memory.data import WorldConfig, generate_world, load_stream
    >>> world = generate_world(WorldConfig(seed=0, n_entities=50))
    >>> sorted(world)
    ['test', 'train', 'val']
"""

from __future__ import annotations

from ..prompts import format_qa
from .stream import QA, Document, load_stream, read_stream, write_stream
from .synthetic import ATTRIBUTES, WorldConfig, attribute_values, generate_world, iter_documents, write_world

__all__ = [
    "ATTRIBUTES",
    "QA",
    "Document",
    "WorldConfig",
    "attribute_values",
    "format_qa",
    "generate_world",
    "iter_documents",
    "load_stream",
    "read_stream",
    "write_stream",
    "write_world",
]
