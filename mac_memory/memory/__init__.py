"""The persistent memory component: MAC modulations stored next to their Chroma records.

``from mac_memory.memory import MACMemory`` is the entry point; see :class:`MACMemory`. Submodules, one
per concept: :mod:`.memory` (the component), :mod:`.store` (the Chroma record layout), :mod:`.codec`
(modulation ⇄ bytes), :mod:`.embedder` (similarity-search embeddings), :mod:`.shared_encoder` (one
encoder pass for embedding and amortization when both are one model), :mod:`.chunking` and
:mod:`.commands` (the ``ingest``/``ask``/``reindex``/``stats`` CLI). Attributes load lazily, so
importing this package (or its CLI table) costs nothing until a memory is used.

Example:
    >>> from mac_memory.memory import MACMemory                     # doctest: +SKIP
    >>> memory = MACMemory(path="./mem", checkpoint="ckpt/")         # doctest: +SKIP
    >>> memory.add_texts(["Kado Fen plays the violin."])              # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .embedder import Embedder, SentenceTransformerEmbedder
    from .memory import Answer, AnswerStream, Hit, MACMemory, Recall, Source

__all__ = [
    "Answer",
    "AnswerStream",
    "Embedder",
    "Hit",
    "MACMemory",
    "Recall",
    "SentenceTransformerEmbedder",
    "Source",
]

_WHERE = {
    "Answer": ".memory",
    "AnswerStream": ".memory",
    "Hit": ".memory",
    "MACMemory": ".memory",
    "Recall": ".memory",
    "Source": ".memory",
    "Embedder": ".embedder",
    "SentenceTransformerEmbedder": ".embedder",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
