"""MACMemory: the persistent, parametric memory an application holds.

Writing a document chunks it, embeds each chunk (for candidate pre-selection) and amortizes it in one
forward pass into a modulation, stored in the chunk's own Chroma record (:mod:`.store`). When the
amortizer's backbone is the embedder's model, one pass gives both (:mod:`.shared_encoder`). Answering a
question embeds it, takes the top-k records of its namespace from Chroma, decodes their modulations,
lets the aggregation network merge them (hierarchically beyond its window) into one prefix for the
frozen LM, and generates with only the question in the prompt. Sources come back ranked by their
aggregation weight: how much of the merged modulation each record contributed.

Example:
    >>> memory = MACMemory(path="./mem", checkpoint="ckpt/")                         # doctest: +SKIP
    >>> memory.add_texts(["Velmora Quistan was born in Ostravel."], namespace="u1")  # doctest: +SKIP
    ['3f1c...']
    >>> answer = memory.answer("Where was Velmora Quistan born?", namespace="u1")    # doctest: +SKIP
    >>> answer.text, [(s.id, round(s.weight, 2)) for s in answer.sources]            # doctest: +SKIP
    ('Ostravel', [('3f1c...', 1.0)])
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import (
    BaseModelMismatchError,
    ConfigError,
    CorruptModulationError,
    DuplicateIdError,
    EmptyInputError,
    InputTypeError,
    InvalidInputError,
    InvalidMetadataError,
    check_texts,
    check_unicode,
)
from ..prefix import PrefixKV
from ..prompts import clean_answer, format_chat, format_question
from . import store as S
from .chunking import Chunk, Chunker
from .codec import CODECS, b64_to_modulation, modulation_to_b64
from .embedder import Embedder, SentenceTransformerEmbedder
from .shared_encoder import SharedEncoderPass
from .store import ChromaStore, Record

logger = logging.getLogger(__name__)

__all__ = [
    "Answer",
    "AnswerStream",
    "Hit",
    "MACMemory",
    "Recall",
    "Source",
    "default_data_dir",
    "register_default_checkpoint",
    "resolve_default_checkpoint",
]

DEFAULT_NAMESPACE = "default"
_EXACT_RANKING_LIMIT = 10_000  # matching records the exact fallback of retrieval ranks at most
DEFAULT_COLLECTION = "mac_memory"
CHAT_ROLES = ("system", "user", "assistant")

# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Hit:
    """A record found by similarity search (or fetched by id).

    Attributes:
        id: the record's id (the document id, or ``<doc id>#<i>`` for chunk ``i`` of a chunked document).
        text: the record's text.
        score: cosine similarity to the query (1.0 for records fetched by id).
        metadata: the user's metadata (reserved ``mac_`` keys removed).
        namespace, parent_id, chunk_index, ingested_at: where the record belongs and when it was written.
        modulation: the decoded ``(T, d_mem)`` modulation, only when asked for.
    """

    id: str
    text: str
    score: float
    metadata: dict[str, Any]
    namespace: str
    parent_id: str
    chunk_index: int
    ingested_at: float
    modulation: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Source:
    """A record that shaped an answer, with its share of the aggregated modulation (``weight``)."""

    id: str
    weight: float
    text: str
    metadata: dict[str, Any]
    parent_id: str = ""
    score: float = 0.0
    namespace: str = DEFAULT_NAMESPACE
    ingested_at: float = 0.0


@dataclass
class Answer:
    """An answer and the records it came from, ranked by aggregation weight (highest first)."""

    text: str
    sources: list[Source]
    question: str = ""


@dataclass
class Recall:
    """What :meth:`MACMemory.answer` conditions the LM on: candidates, their modulations, the prefix.

    ``memory`` is ``(N, T, d_mem)`` as decoded from the store, ``weights`` ``(N,)`` the aggregation
    weights in ``hits`` order; all three are None when the namespace holds no candidate.
    """

    question: str
    hits: list[Hit]
    memory: torch.Tensor | None
    prefix: PrefixKV | None
    weights: torch.Tensor | None

    def sources(self, snippet_chars: int = 300) -> list[Source]:
        """The hits as :class:`Source` s, ranked by aggregation weight."""
        if self.weights is None:
            return []
        out = [
            Source(
                h.id,
                float(w),
                _snippet(h.text, snippet_chars),
                h.metadata,
                h.parent_id,
                h.score,
                h.namespace,
                h.ingested_at,
            )
            for h, w in zip(self.hits, self.weights.tolist(), strict=True)
        ]
        return sorted(out, key=lambda s: (-s.weight, -s.score))


class AnswerStream:
    """Text pieces of an answer as the LM generates them; ``sources`` is known before the first piece.

    Iterate it once. Joined, the pieces equal :meth:`MACMemory.answer`'s text for the same question.
    ``text`` holds what has been yielded so far (the whole answer after iteration).
    """

    def __init__(self, sources: list[Source], pieces: Iterator[str]) -> None:
        self.sources = sources
        self.text = ""
        self._pieces = pieces

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._pieces:
                self.text += piece
                yield piece
        finally:
            self.close()  # a consumer that stops early (break, close) stops generation at once

    def close(self) -> None:
        """Stop generating (also done when iteration ends or is abandoned)."""
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


# ----------------------------------------------------------------------------- defaults


def default_data_dir() -> Path:
    """Where the embedded default memory lives: ``$MAC_MEMORY_HOME``, else the platform's user data dir.

    Linux: ``$XDG_DATA_HOME/mac-memory`` (``~/.local/share/mac-memory``); macOS:
    ``~/Library/Application Support/mac-memory``; Windows: ``%LOCALAPPDATA%\\mac-memory``.
    """
    if os.environ.get("MAC_MEMORY_HOME"):
        return Path(os.environ["MAC_MEMORY_HOME"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "mac-memory"


_checkpoint_resolvers: list[Callable[[], Any]] = []


def register_default_checkpoint(resolver: Callable[[], Any]) -> None:
    """Plug in what ``MACMemory()`` uses when no checkpoint is given (latest registration wins).

    ``resolver()`` returns a checkpoint directory, a loaded ``MACModel``, or None (no default yet).
    """
    _checkpoint_resolvers.append(resolver)


def resolve_default_checkpoint() -> Any:
    """The default checkpoint: a registered resolver's, else the embedded default's.

    The embedded default (:func:`mac_memory.training.default.default_checkpoint`, which also honours
    ``$MAC_MEMORY_CHECKPOINT``) raises a :class:`~mac_memory.errors.CheckpointError` that says how to
    train it when there is none yet.
    """
    for resolver in reversed(_checkpoint_resolvers):
        found = resolver()
        if found is not None:
            return found
    from ..training.default import default_checkpoint

    return default_checkpoint()


# ----------------------------------------------------------------------------- helpers

_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The lock every :class:`MACMemory` holds while it uses ``model``: one per loaded model object.

    A fast tokenizer keeps padding and truncation as state of its backend, set before each encode, so
    two threads that use one model with different settings (documents are cut at the amortizer's
    length, questions at the question encoder's, prompts not at all) can encode with each other's
    settings: an exception, or silently a document cut at a question's length. Memories that share a
    model therefore share this lock; a memory's own lock only serializes its own calls.
    """
    with _MODEL_LOCKS_GUARD:
        try:
            lock = _MODEL_LOCKS.get(model)
            if lock is None:
                lock = _MODEL_LOCKS[model] = threading.RLock()
        except TypeError:  # not weak-referenceable (a test double): nothing to share it with
            lock = threading.RLock()
        return lock


def _snippet(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"


def _timestamp(value: datetime | float | int | None, name: str) -> float | None:
    """Unix seconds from a datetime (naive = local time, as ``datetime.timestamp`` reads it) or a number."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise InvalidInputError(f"{name}={value!r} is invalid: give a datetime or unix seconds.")


def _check_k(k: Any) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
        raise InvalidInputError(f"k={k!r} is invalid: give a positive integer (candidates to retrieve).")
    return k


def _check_query(text: Any, what: str = "question") -> str:
    if not isinstance(text, str):
        raise InputTypeError(f"The {what} must be a str, got {type(text).__name__}.")
    if not text.strip():
        raise EmptyInputError(f"The {what} is empty or whitespace only.")
    return check_unicode(text, f"The {what}")


def _check_max_new_tokens(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidInputError(f"max_new_tokens={value!r} is invalid: give a positive integer.")
    return value


def _content_id(namespace: str, text: str) -> str:
    """Default document id: the same content in the same namespace is the same document (no duplicates)."""
    return hashlib.sha256(f"{namespace}\x00{text}".encode()).hexdigest()[:32]


def _hit(cid: str, row: Mapping[str, Any], score: float, modulation: np.ndarray | None = None) -> Hit:
    md = row.get("metadata") or {}
    return Hit(
        id=str(md.get(S.K_ID, cid.split("/", 1)[-1])),
        text=row.get("document") or "",
        score=score,
        metadata=S.user_metadata(md),
        namespace=str(md.get(S.K_NAMESPACE, "")),
        parent_id=str(md.get(S.K_PARENT, "")),
        chunk_index=int(md.get(S.K_CHUNK, 0)),
        ingested_at=float(md.get(S.K_TIME, 0.0)),
        modulation=modulation,
    )


# ----------------------------------------------------------------------------- the component


class MACMemory:
    """A persistent MAC memory on Chroma: add documents, retrieve, answer and chat from modulations.

    Args:
        path: directory of an embedded Chroma (default: ``default_data_dir() / "chroma"``).
        checkpoint: directory of a ``MACModel.save_pretrained`` checkpoint (default: the one
            :func:`resolve_default_checkpoint` finds).
        model: an already loaded ``MACModel`` (instead of ``checkpoint``).
        collection: Chroma collection name (3–512 chars of ``[a-zA-Z0-9._-]``).
        client: any chromadb client (e.g. ``chromadb.HttpClient(...)``) instead of ``path``.
        host, port, ssl: a Chroma server to connect to (errors name ``host:port``) instead of ``path``.
        embedder: the :class:`Embedder` for similarity search (default: bundled all-MiniLM-L6-v2).
        default_namespace: the namespace of calls that do not name one.
        codec: storage of modulations: ``float16`` (default), ``int8`` or ``float32``.
        chunk_size, chunk_overlap, chunk_unit: document chunking (default: the amortizer's
            ``max_length`` in its tokenizer's tokens, overlap 1/8 of it).
        amortize_batch_size: documents per amortization forward pass.
        share_encoder_pass: when the amortizer's frozen backbone is the embedder's model, embed each chunk
            from the amortizer's own pass instead of reading it a second time (see
            :mod:`~mac_memory.memory.shared_encoder` for the rule; :attr:`shares_encoder_pass` tells
            whether it holds). False always runs both models.
        device: device to load ``checkpoint`` on (default: CUDA when available).
        check_checkpoint: refuse a memory written by other networks or another embedder (default).
            False opens it anyway, for :meth:`reindex`; answers still refuse stale modulations.
        show_progress: tqdm bars for long ingests/reindexes (None = only when large).
        supersede_threshold: cosine similarity (of the stored embeddings) at or above which
            ``prefer_newest`` treats an older candidate as an outdated version of a newer one. With
            all-MiniLM-L6-v2, near-verbatim updates score 0.79-0.96 ("X lives in A" / "X lives in B"
            0.85) while different facts about the same entity score 0.3-0.77 (0.61 for "X lives in A" /
            "X works for C"), so the 0.8 default catches near-verbatim updates and leaves distinct facts
            alone; rephrased updates (0.66 measured) need a stable id instead (re-adding an id replaces
            the record exactly).
        clock: source of ingestion times (unix seconds); for tests and replays.

    Example:
        >>> import chromadb                                                         # doctest: +SKIP
        >>> memory = MACMemory(client=chromadb.EphemeralClient(), model=mac)        # doctest: +SKIP
        >>> ids = memory.add_texts(["Kado Fen plays the violin."], metadatas=[{"source": "wiki"}])  # doctest: +SKIP
        >>> memory.retrieve("What does Kado Fen play?", k=1)[0].id == ids[0]       # doctest: +SKIP
        True
        >>> memory.answer("What does Kado Fen play?").sources[0].id == ids[0]      # doctest: +SKIP
        True
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        checkpoint: str | Path | None = None,
        model: Any = None,
        collection: str = DEFAULT_COLLECTION,
        client: Any = None,
        host: str | None = None,
        port: int | None = None,
        ssl: bool = False,
        embedder: Embedder | None = None,
        default_namespace: str = DEFAULT_NAMESPACE,
        codec: str = "float16",
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        chunk_unit: str = "token",
        amortize_batch_size: int = 16,
        share_encoder_pass: bool = True,
        device: str | None = None,
        check_checkpoint: bool = True,
        show_progress: bool | None = None,
        supersede_threshold: float = 0.8,
        snippet_chars: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if codec not in CODECS:
            raise ConfigError(f"MACMemory.codec={codec!r} is invalid: choose one of {sorted(CODECS)}.")
        if not isinstance(amortize_batch_size, int) or amortize_batch_size <= 0:
            raise ConfigError(
                f"MACMemory.amortize_batch_size={amortize_batch_size!r} is invalid: "
                "must be a positive integer."
            )
        if not 0.0 < supersede_threshold <= 1.0:
            raise ConfigError(
                f"MACMemory.supersede_threshold={supersede_threshold!r} is invalid: must be in (0, 1]."
            )
        if model is not None and checkpoint is not None:
            raise ConfigError("Give checkpoint= or model=, not both.")
        S.check_collection_name(collection)
        self.default_namespace = S.check_namespace(default_namespace)
        self.codec = codec
        self.amortize_batch_size = amortize_batch_size
        self.show_progress = show_progress
        self.supersede_threshold = float(supersede_threshold)
        self.snippet_chars = snippet_chars
        self.clock = clock
        self._lock = threading.RLock()
        self._share_encoder_pass = bool(share_encoder_pass)
        self._shared_pass: SharedEncoderPass | None = None
        self._shared_pass_decided = False

        # Networks first: a missing checkpoint must fail before anything is created on disk.
        self.mac = model if model is not None else self._load_model(checkpoint, device)
        self.mac.eval()
        self._model_lock = model_lock(self.mac)
        self.embedder: Embedder = embedder if embedder is not None else SentenceTransformerEmbedder()
        with self._model_lock:
            self.chunker = self._build_chunker(chunk_size, chunk_overlap, chunk_unit)
        self.fingerprint = self.mac.fingerprint()

        if path is None and client is None and host is None:
            path = default_data_dir() / "chroma"
        self.store = ChromaStore.open(
            collection=collection, path=path, client=client, host=host, port=port, ssl=ssl
        )
        self._check_collection(check_checkpoint)
        logger.info(
            "Opened MAC memory %r at %s (%d records)", collection, self.store.location, self.store.count()
        )

    def __repr__(self) -> str:
        return (
            f"MACMemory(collection={self.store.name!r}, location={self.store.location!r}, "
            f"codec={self.codec!r}, embedder={self.embedder.name!r})"
        )

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _load_model(checkpoint: str | Path | None, device: str | None) -> Any:
        from ..model import MACModel

        found = checkpoint if checkpoint is not None else resolve_default_checkpoint()
        if isinstance(found, MACModel):
            return found
        return MACModel.from_pretrained(found, device=device)

    def _build_chunker(self, size: int | None, overlap: int | None, unit: str) -> Chunker:
        amortizer = self.mac.amortizer
        tokenizer = getattr(amortizer, "tokenizer", None) or self.mac.lm.tokenizer
        limit = int(amortizer.max_length)
        if unit == "token":
            probe = "memory"
            specials = len(tokenizer(probe)["input_ids"]) - len(
                tokenizer(probe, add_special_tokens=False)["input_ids"]
            )
            limit -= max(specials, 0)  # the amortizer's max_length counts BOS/EOS too
            if size is not None and size > limit:
                raise ConfigError(
                    f"MACMemory.chunk_size={size} is invalid: the amortizer reads at most {limit} "
                    "tokens per chunk (amortizer.max_length minus special tokens)."
                )
        size = size or limit
        overlap = size // 8 if overlap is None else overlap
        return Chunker(size, overlap, tokenizer=tokenizer if unit == "token" else None, unit=unit)

    def _check_collection(self, check: bool) -> None:
        meta = self.store.collection_metadata()
        fmt = meta.get(S.C_FORMAT)
        if fmt is not None and int(fmt) > S.FORMAT_VERSION:
            raise ConfigError(
                f"Collection {self.store.name!r} uses mac-memory store format {fmt}, newer than "
                f"this version reads ({S.FORMAT_VERSION}); upgrade mac-memory."
            )
        stored_fp, stored_emb = meta.get(S.C_FINGERPRINT), meta.get(S.C_EMBEDDER)
        if self.store.count() == 0:
            # Nothing stored yet: this checkpoint and embedder define the memory from now on.
            if stored_fp != self.fingerprint or stored_emb != self.embedder.name:
                self.store.update_collection_metadata(
                    {
                        S.C_FORMAT: S.FORMAT_VERSION,
                        S.C_FINGERPRINT: self.fingerprint,
                        S.C_EMBEDDER: self.embedder.name,
                    }
                )
            return
        if not check:
            return
        if stored_fp is None:
            raise BaseModelMismatchError(
                f"Collection {self.store.name!r} at {self.store.location} holds records but no mac-memory "
                "checkpoint fingerprint: it was not written by MACMemory. Use another collection, or open "
                "it with check_checkpoint=False and run `mac-memory reindex`."
            )
        if stored_fp != self.fingerprint:
            raise BaseModelMismatchError(
                f"The memory {self.store.name!r} at {self.store.location} was written with checkpoint "
                f"{stored_fp[:12]}…, but this MACMemory uses checkpoint {self.fingerprint[:12]}…; its stored "
                "modulations mean nothing to these networks. Run `mac-memory reindex` (or "
                "MACMemory(..., check_checkpoint=False).reindex()) to re-amortize every record from its "
                "stored text, or open it with the checkpoint that wrote it."
            )
        if stored_emb != self.embedder.name:
            raise BaseModelMismatchError(
                f"The memory {self.store.name!r} at {self.store.location} was embedded with {stored_emb!r}, "
                f"but this MACMemory uses {self.embedder.name!r}; similarity search would compare unrelated "
                "vectors. Pass the same embedder, or run `mac-memory reindex` to re-embed every record."
            )

    # ------------------------------------------------------------------ helpers
    @property
    def shares_encoder_pass(self) -> bool:
        """Whether each written chunk is embedded and amortized by one backbone pass.

        Decided once, on first use (it loads the embedder's model and runs a small probe); the log says
        why at INFO level.
        """
        with self._lock:
            return self._encoder_pass() is not None

    def _encoder_pass(self) -> SharedEncoderPass | None:
        if not self._shared_pass_decided:
            if self._share_encoder_pass:
                amortizer = getattr(self.mac, "amortizer", None)
                self._shared_pass, reason = SharedEncoderPass.build(amortizer, self.embedder, self._model_lock)
            else:
                reason = "share_encoder_pass=False"
            self._shared_pass_decided = True
            logger.info(
                "Memory %r %s one encoder pass for embedding and amortization: %s",
                self.store.name,
                "shares" if self._shared_pass is not None else "does not share",
                reason,
            )
        return self._shared_pass

    def _ns(self, namespace: str | None) -> str:
        return self.default_namespace if namespace is None else S.check_namespace(namespace)

    def _progress(self, total: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        disable = not self.show_progress if self.show_progress is not None else total < 256
        return tqdm(total=total, desc=desc, unit="rec", disable=disable, leave=False)

    def _modulations(self, texts: Sequence[str]) -> list[str]:
        """Amortize ``texts`` in batches → base64 codec blobs (NaN/Inf refused before anything is written)."""
        blobs: list[str] = []
        with torch.no_grad(), self._progress(len(texts), "amortizing") as bar:
            for i in range(0, len(texts), self.amortize_batch_size):
                batch = list(texts[i : i + self.amortize_batch_size])
                with self._model_lock:
                    memory = self.mac.amortize(batch)  # (B, T, d_mem)
                blobs += [modulation_to_b64(m, self.codec) for m in memory]
                bar.update(len(batch))
        return blobs

    def _embed(self, texts: Sequence[str], step: int = 256) -> np.ndarray:
        """``(N, dim)`` embeddings, in slices of ``step`` so a progress bar can follow large ingests."""
        texts = list(texts)
        parts = []
        with self._progress(len(texts), "embedding") as bar:
            for i in range(0, len(texts), step):
                parts.append(self.embedder.embed_documents(texts[i : i + step]))
                bar.update(len(parts[-1]))
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def _embed_and_amortize(self, texts: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """``(N, dim)`` embeddings and the codec blobs of ``texts``: one backbone pass per batch when the
        pass is shared (:attr:`shares_encoder_pass`), else the embedder's pass and the amortizer's."""
        shared = self._encoder_pass() if texts else None
        if shared is None:
            return self._embed(texts), self._modulations(texts)
        parts: list[np.ndarray] = []
        blobs: list[str] = []
        with self._progress(len(texts), "embedding + amortizing") as bar:
            for i in range(0, len(texts), self.amortize_batch_size):
                batch = list(texts[i : i + self.amortize_batch_size])
                with self._model_lock:
                    memory, embeddings = shared(batch)  # (B, T, d_mem), (B, dim)
                blobs += [modulation_to_b64(m, self.codec) for m in memory]
                parts.append(embeddings)
                bar.update(len(batch))
        return np.concatenate(parts), blobs

    # ------------------------------------------------------------------ writing
    def add_texts(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        *,
        namespace: str | None = None,
    ) -> list[str]:
        """Amortize and store ``texts``; returns one document id per text.

        Everything is validated before anything is written: a bad text, metadata or id raises a specific
        :class:`~mac_memory.errors.MACError` and leaves the store unchanged. Long texts are chunked (each
        chunk a record whose ``parent_id`` is the document id). Without ``ids`` a document's id is a hash
        of (namespace, text), so adding the same text twice does not duplicate it. Adding an id that
        exists replaces its text, metadata, chunks and modulations completely.
        """
        with self._lock:
            return self._add_texts(texts, metadatas, ids, self._ns(namespace))

    def _add_texts(self, texts: Sequence[str], metadatas: Any, ids: Any, ns: str) -> list[str]:
        started = time.perf_counter()
        docs = self._validated(texts, metadatas, ids, ns)
        if not docs:
            return []
        # Collapse repeats (the same default id twice): the last occurrence wins, like sequential adds.
        unique: dict[str, tuple[str, dict[str, Any]]] = {}
        for doc_id, text, md in docs:
            unique.pop(doc_id, None)
            unique[doc_id] = (text, md)

        plan: list[tuple[str, str, Chunk, int, dict[str, Any]]] = []  # (doc id, record id, chunk, n, md)
        for doc_id, (text, md) in unique.items():
            with self._model_lock:  # token chunking runs the model's tokenizer
                chunks = self.chunker.split(text)
            for chunk in chunks:
                record_id = doc_id if len(chunks) == 1 else f"{doc_id}#{chunk.index}"
                plan.append((doc_id, record_id, chunk, len(chunks), md))
        seen: dict[str, str] = {}
        for doc_id, record_id, *_ in plan:
            if record_id in seen:
                raise DuplicateIdError(
                    f"Record id {record_id!r} would be written by documents {seen[record_id]!r} "
                    f"and {doc_id!r} (a chunk of one collides with the other); rename one."
                )
            seen[record_id] = doc_id

        # What is stored now: the records these ids overwrite, and every chunk of these documents.
        cids = [S.chroma_id(ns, r) for _, r, *_ in plan]
        previous = {cid: row.get("metadata") or {} for cid, row in self.store.get(cids).items()}
        for cid, md in previous.items():
            new_parent = seen[md.get(S.K_ID, cid.split("/", 1)[1])]
            if md.get(S.K_PARENT) not in (None, new_parent) and md.get(S.K_PARENT) not in unique:
                raise DuplicateIdError(
                    f"Record id {md.get(S.K_ID)!r} in namespace {ns!r} already holds chunk {md.get(S.K_CHUNK)} of "
                    f"document {md.get(S.K_PARENT)!r}; delete that document first or choose another id."
                )
        parents = list(unique)
        new_cids = set(cids)
        stale = [cid for cid in self._parent_cids(ns, parents) if cid not in new_cids]

        texts_to_write = [chunk.text for _, _, chunk, _, _ in plan]
        embeddings, blobs = self._embed_and_amortize(texts_to_write)
        now = float(self.clock())
        records = []
        for (doc_id, record_id, chunk, n, md), emb, blob, cid in zip(
            plan, embeddings, blobs, cids, strict=True
        ):
            metadata = dict(md)
            metadata.update(
                {
                    S.K_NAMESPACE: ns,
                    S.K_ID: record_id,
                    S.K_PARENT: doc_id,
                    S.K_CHUNK: chunk.index,
                    S.K_NUM_CHUNKS: n,
                    S.K_START: chunk.start,
                    S.K_END: chunk.end,
                    S.K_TIME: now,
                    S.K_SHA: hashlib.sha256(chunk.text.encode()).hexdigest(),
                    S.K_MODULATION: blob,
                    S.K_FINGERPRINT: self.fingerprint,
                }
            )
            records.append(Record(cid, chunk.text, emb, metadata))
        # Upsert first, then drop chunks the new version no longer has: a crash in between leaves
        # an extra old chunk (still with its own modulation), never a record without one.
        self.store.write(records, previous)
        if stale:
            self.store.delete(stale)
        logger.info(
            "Added %d documents (%d records) to namespace %r in %.2fs",
            len(unique),
            len(records),
            ns,
            time.perf_counter() - started,
        )
        return [doc_id for doc_id, _, _ in docs]

    def _validated(
        self, texts: Any, metadatas: Any, ids: Any, ns: str
    ) -> list[tuple[str, str, dict[str, Any]]]:
        texts = check_texts(texts, "text", item="texts[{}]", allow_empty=True)
        if metadatas is None:
            metadatas = [None] * len(texts)
        elif isinstance(metadatas, Mapping) or not isinstance(metadatas, Sequence):
            raise InvalidMetadataError(
                f"metadatas must be a list with one dict (or None) per text, got {type(metadatas).__name__}."
            )
        if len(metadatas) != len(texts):
            raise InvalidMetadataError(
                f"Got {len(texts)} texts but {len(metadatas)} metadatas; give one "
                "metadata dict (or None) per text."
            )
        cleaned = [S.clean_metadata(md, f"metadatas[{i}]") for i, md in enumerate(metadatas)]
        if ids is None:
            doc_ids = [_content_id(ns, t) for t in texts]
        else:
            if isinstance(ids, str) or not isinstance(ids, Sequence):
                raise InvalidInputError(
                    f"ids must be a list of str (one per text), got {type(ids).__name__}."
                )
            if len(ids) != len(texts):
                raise InvalidInputError(f"Got {len(texts)} texts but {len(ids)} ids; give one id per text.")
            doc_ids = [S.check_record_id(i, n) for n, i in enumerate(ids)]
            first: dict[str, int] = {}
            for n, doc_id in enumerate(doc_ids):
                if doc_id in first:
                    raise DuplicateIdError(
                        f"ids[{first[doc_id]}] and ids[{n}] are both {doc_id!r}; ids must be "
                        "unique within one call."
                    )
                first[doc_id] = n
        return list(zip(doc_ids, texts, cleaned, strict=True))

    def _parent_cids(self, ns: str, parents: Sequence[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(parents), 512):
            where = S.combine_where({S.K_NAMESPACE: ns}, {S.K_PARENT: {"$in": list(parents[i : i + 512])}})
            out += self.store.ids(where)
        return out

    def _id_cids(self, ns: str, ids: Sequence[str]) -> list[str]:
        """Chroma ids of records named by ``ids``: exact record ids and every chunk of documents named."""
        exact = list(self.store.get([S.chroma_id(ns, i) for i in ids], include=[]))
        return list(dict.fromkeys(exact + self._parent_cids(ns, ids)))

    def add_messages(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        namespace: str | None = None,
        conversation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """Store conversation turns as records (``kind="message"``, ``role``), so later questions about
        what was said are answered from memory. System messages are not stored.

        The record text is ``"User: ..."`` / ``"Assistant: ..."`` (who said it matters for what it means);
        ids default to a hash of that text, so repeating the same turn refreshes it instead of duplicating.
        """
        checked = _check_messages(messages, need_last_user=False)
        texts, metas = [], []
        for turn, m in enumerate(checked):
            if m["role"] == "system":
                continue
            md: dict[str, Any] = {**(metadata or {}), "kind": "message", "role": m["role"], "turn": turn}
            if conversation_id is not None:
                md["conversation_id"] = conversation_id
            texts.append(f"{m['role'].capitalize()}: {m['content'].strip()}")
            metas.append(md)
        return self.add_texts(texts, metas, namespace=namespace) if texts else []

    def delete(
        self,
        ids: Sequence[str] | None = None,
        *,
        where: Mapping[str, Any] | None = None,
        namespace: str | None = None,
    ) -> int:
        """Delete records (and their modulations, which live in them); returns how many were deleted.

        ``ids`` name documents (all their chunks go) or single records; ``where`` filters on metadata;
        both act within ``namespace`` (default namespace when omitted). ``delete(namespace="x")`` alone
        empties namespace ``x``. Unknown ids or namespaces delete nothing (returns 0).
        """
        with self._lock:
            if ids is None and where is None and namespace is None:
                raise InvalidInputError(
                    "delete() needs ids=, where= or namespace= (refusing to guess what to delete)."
                )
            ns = self._ns(namespace)
            scope: dict[str, Any] = {S.K_NAMESPACE: ns}
            if where is not None and not isinstance(where, Mapping):
                raise InvalidInputError(
                    f"where must be a dict of Chroma filters, got {type(where).__name__}."
                )
            if ids is not None:
                if isinstance(ids, str) or not isinstance(ids, Sequence):
                    raise InvalidInputError(f"ids must be a list of str, got {type(ids).__name__}.")
                ids = [S.check_record_id(i, n) for n, i in enumerate(ids)]
                targets = self._id_cids(ns, ids) if ids else []
                if where is not None and targets:
                    allowed = set(self._where_ids(S.combine_where(scope, where)))
                    targets = [c for c in targets if c in allowed]
            else:
                targets = self._where_ids(S.combine_where(scope, where))
            if targets:
                self.store.delete(targets)
            logger.info("Deleted %d records from namespace %r", len(targets), ns)
            return len(targets)

    def _where_ids(self, where: Mapping[str, Any]) -> list[str]:
        try:
            return self.store.ids(where)
        except Exception as exc:
            if not S.is_filter_error(exc):
                raise
            raise InvalidInputError(f"where={where!r} is not a valid Chroma filter: {exc}") from exc

    def reindex(self, *, namespace: str | None = None, force: bool = False, batch_size: int = 256) -> int:
        """Re-amortize (and re-embed when the embedder changed) records from their stored text.

        Run it after switching to another checkpoint or embedder, or to repair records whose stored
        modulation is unreadable (corrupt, truncated, tampered with, wrong shape). Records already
        written by this checkpoint and embedder with a readable modulation are skipped unless ``force``;
        the collection then records the current ones. It resumes where it stopped if interrupted.
        ``namespace=None`` reindexes every namespace. Returns how many records were rewritten.
        """
        with self._lock:
            where = None if namespace is None else {S.K_NAMESPACE: S.check_namespace(namespace)}
            cids: list[str] = []
            for page in self.store.iter_get(where=where, include=[]):
                cids += page["ids"]
            reembed = self.store.collection_metadata().get(S.C_EMBEDDER) != self.embedder.name
            if reembed and namespace is not None:
                raise InvalidInputError(
                    "The embedder changed: vectors of every namespace must be rebuilt "
                    "together; run reindex() without namespace=."
                )
            done = 0
            with self._progress(len(cids), "reindexing") as bar:
                for i in range(0, len(cids), batch_size):
                    rows = self.store.get(
                        cids[i : i + batch_size], include=["metadatas", "documents", "embeddings"]
                    )
                    todo = [
                        (cid, row)
                        for cid, row in rows.items()
                        if force
                        or reembed
                        or (row.get("metadata") or {}).get(S.K_FINGERPRINT) != self.fingerprint
                        or not self._modulation_ok(row.get("metadata"))
                    ]
                    if todo:
                        texts = [row.get("document") or "" for _, row in todo]
                        if reembed:
                            embs, blobs = self._embed_and_amortize(texts)
                        else:
                            blobs = self._modulations(texts)
                            embs = [row["embedding"] for _, row in todo]
                        records = []
                        for (cid, row), blob, emb in zip(todo, blobs, embs, strict=True):
                            md = dict(row.get("metadata") or {})
                            md.update({S.K_MODULATION: blob, S.K_FINGERPRINT: self.fingerprint})
                            records.append(Record(cid, row.get("document") or "", np.asarray(emb), md))
                        self.store.write(records, {cid: row.get("metadata") or {} for cid, row in todo})
                        done += len(records)
                    bar.update(len(rows))
            # The collection adopts this checkpoint only once no record anywhere is left behind (a
            # namespace-only reindex, or an interrupted one, leaves the old fingerprint in place).
            if not self.store.count({S.K_FINGERPRINT: {"$ne": self.fingerprint}}):
                self.store.update_collection_metadata(
                    {S.C_FINGERPRINT: self.fingerprint, S.C_EMBEDDER: self.embedder.name}
                )
            logger.info(
                "Reindexed %d of %d records for checkpoint %s…", done, len(cids), self.fingerprint[:12]
            )
            return done

    # ------------------------------------------------------------------ reading
    def count(self, namespace: str | None = None) -> int:
        """Records in ``namespace`` (chunks count separately); ``None`` = the whole collection."""
        with self._lock:
            if namespace is None:
                return self.store.count()
            return self.store.count({S.K_NAMESPACE: S.check_namespace(namespace)})

    def get(
        self, ids: Sequence[str], *, namespace: str | None = None, with_modulation: bool = False
    ) -> list[Hit]:
        """The records named by ``ids`` (documents expand to their chunks), in the order asked."""
        with self._lock:
            ns = self._ns(namespace)
            if isinstance(ids, str) or not isinstance(ids, Sequence):
                raise InvalidInputError(f"ids must be a list of str, got {type(ids).__name__}.")
            ids = [S.check_record_id(i, n) for n, i in enumerate(ids)]
            rows = self.store.get(self._id_cids(ns, ids), include=["metadatas", "documents"])
            order = {i: n for n, i in enumerate(ids)}
            hits = [
                _hit(cid, row, 1.0, self._decode([row])[0] if with_modulation else None)
                for cid, row in rows.items()
            ]
            return sorted(
                hits, key=lambda h: (order.get(h.id, order.get(h.parent_id, len(order))), h.chunk_index)
            )

    def retrieve(
        self,
        query: str,
        k: int = 8,
        *,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        as_of: datetime | float | None = None,
        prefer_newest: bool = False,
        with_modulation: bool = False,
    ) -> list[Hit]:
        """The ``k`` records of ``namespace`` most similar to ``query`` (nearest first).

        ``where`` is a Chroma metadata filter, combined with the namespace inside Chroma (``$and``);
        ``as_of`` ignores records ingested after that time (``$lte`` on ``mac_ingested_at``).

        ``prefer_newest`` drops a candidate when a strictly newer candidate of the same search is a
        near-duplicate of it (cosine of their embeddings ≥ ``supersede_threshold``), so an updated fact
        replaces its old version instead of competing with it in the aggregation (2k candidates are
        fetched so that k remain). Dropping, rather than a soft recency prior, is deliberate: the
        aggregator is order-invariant and its mask is binary, and two conflicting versions merged into
        one modulation would blur the answer. An empty or unknown namespace gives [].
        """
        with self._lock:
            return [
                h for h, _ in self._search(query, k, namespace, where, as_of, prefer_newest, with_modulation)
            ]

    def _search(
        self,
        query: str,
        k: int,
        namespace: str | None,
        where: Mapping[str, Any] | None,
        as_of: datetime | float | None,
        prefer_newest: bool,
        with_modulation: bool,
    ) -> list[tuple[Hit, Mapping[str, Any]]]:
        query = _check_query(query)
        k = _check_k(k)
        ns = self._ns(namespace)
        if where is not None and not isinstance(where, Mapping):
            raise InvalidInputError(f"where must be a dict of Chroma filters, got {type(where).__name__}.")
        cutoff = _timestamp(as_of, "as_of")
        clause = S.combine_where(
            {S.K_NAMESPACE: ns}, where, {S.K_TIME: {"$lte": cutoff}} if cutoff is not None else None
        )
        include = ["metadatas", "documents", "distances"] + (["embeddings"] if prefer_newest else [])
        vector = self.embedder.embed_query(query)
        n = 2 * k if prefer_newest else k  # prefer_newest over-fetches: k remain after dropping versions
        try:
            if where is None and cutoff is None:
                rows = self._query_namespace(vector, n, ns, clause, include)
            else:
                rows = self.store.query(vector, n, clause, include)
            if len(rows) < n:
                rows = self._complete(rows, vector, n, clause, include)
        except Exception as exc:
            if where is not None and S.is_filter_error(exc):
                raise InvalidInputError(f"where={dict(where)!r} is not a valid Chroma filter: {exc}") from exc
            raise
        if prefer_newest:
            rows = self._drop_superseded(rows)[:k]
        out = []
        for cid, row in rows:
            mod = self._decode([row])[0] if with_modulation else None
            out.append((_hit(cid, row, 1.0 - row.get("distance", 1.0), mod), row))
        return out

    def _query_namespace(
        self, vector: np.ndarray, n: int, ns: str, clause: Mapping[str, Any], include: Sequence[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Top-``n`` of namespace ``ns``, searching without Chroma's filter first.

        Chroma's filtered search grows with the collection (one namespace filter: 567.6 ms against 3.6 ms
        unfiltered at 100,000 records, ``docs/benchmarks/bench.md``), while most memories hold one
        namespace or a few. So the nearest ``2n + 8`` records of the whole collection are fetched and the
        namespace's kept; any closer record of the namespace would be among them, so when ``n`` of them
        remain (or the collection was smaller) they are the filtered search's answer. Otherwise the
        filtered search runs. Rows of other namespaces are dropped here, before anything reads them.
        """
        wide = 2 * n + 8
        rows = self.store.query(vector, wide, {}, include)
        kept = [(cid, row) for cid, row in rows if (row.get("metadata") or {}).get(S.K_NAMESPACE) == ns]
        if len(kept) >= n or len(rows) < wide:
            return kept[:n]
        return self.store.query(vector, n, clause, include)

    def _complete(
        self,
        rows: list[tuple[str, dict[str, Any]]],
        vector: np.ndarray,
        n: int,
        clause: Mapping[str, Any],
        include: Sequence[str],
    ) -> list[tuple[str, dict[str, Any]]]:
        """Chroma returned fewer than ``n`` rows: if more records match ``clause``, rank them all exactly.

        Chroma's HNSW search is approximate even inside a small filtered set: a namespace of 3 records
        was once answered with 2 after deletes and re-adds (1 query in ~12,000 in the reliability state
        machine; graph construction is multi-threaded, so it does not replay). Fewer rows than asked
        means every matching record should be there; counting the matches (ids only) checks that.
        """
        matching = self.store.ids(clause)
        if len(matching) <= len(rows):
            return rows
        if len(matching) > _EXACT_RANKING_LIMIT:
            logger.warning(
                "Chroma returned %d of %d matching records; too many to rank exactly", len(rows), len(matching)
            )
            return rows
        logger.warning(
            "Chroma returned %d of %d matching records; ranking them exactly", len(rows), len(matching)
        )
        fetched = self.store.get(matching, include=[i for i in include if i != "distances"] + ["embeddings"])
        if len(fetched) <= len(rows):  # the extra matches were deleted between counting and fetching them
            return rows
        cids = list(fetched)
        emb = np.stack([fetched[c]["embedding"] for c in cids])  # (m, dim)
        q = np.asarray(vector, dtype=np.float32)
        norms = np.linalg.norm(emb, axis=1) * max(float(np.linalg.norm(q)), 1e-12)
        distances = 1.0 - (emb @ q) / np.maximum(norms, 1e-12)  # Chroma's cosine distance
        out = []
        for i in np.argsort(distances, kind="stable")[:n]:
            row = dict(fetched[cids[i]], distance=float(distances[i]))
            if "embeddings" not in include:
                row.pop("embedding", None)
            out.append((cids[i], row))
        return out

    def _drop_superseded(self, rows: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
        """Remove candidates that a strictly newer candidate nearly duplicates (cosine ≥ threshold)."""
        if len(rows) < 2:
            return rows
        emb = np.stack([row["embedding"] for _, row in rows])  # (n, dim), unit rows
        sims = emb @ emb.T
        times = np.array([float((row.get("metadata") or {}).get(S.K_TIME, 0.0)) for _, row in rows])
        keep = [
            not any(
                sims[i, j] >= self.supersede_threshold and times[j] > times[i]
                for j in range(len(rows))
                if j != i
            )
            for i in range(len(rows))
        ]
        return [r for r, kept in zip(rows, keep, strict=True) if kept]

    def _decode(self, rows: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
        """Stored modulations of ``rows``; stale (other checkpoint) or malformed ones are refused."""
        stale = [
            (r.get("metadata") or {}).get(S.K_ID)
            for r in rows
            if (r.get("metadata") or {}).get(S.K_FINGERPRINT) != self.fingerprint
        ]
        if stale:
            raise BaseModelMismatchError(
                f"{len(stale)} record(s) (e.g. {stale[:3]}) were amortized by another checkpoint than this "
                f"MACMemory's ({self.fingerprint[:12]}…); using them would steer the LM with noise. Run "
                "`mac-memory reindex`."
            )
        out = []
        expected = (self.mac.num_tokens, self.mac.d_mem)
        for r in rows:
            md = r.get("metadata") or {}
            record = f"Record {md.get(S.K_ID)!r} in namespace {md.get(S.K_NAMESPACE)!r}"
            try:
                arr = b64_to_modulation(md.get(S.K_MODULATION))
            except CorruptModulationError as exc:
                # Name the record: the codec cannot, and "some record is corrupt" is not actionable.
                raise CorruptModulationError(f"{record}: {exc}") from exc
            if tuple(arr.shape) != expected:
                raise BaseModelMismatchError(
                    f"{record} holds a modulation of shape {tuple(arr.shape)}, but the networks expect "
                    f"{expected}; run `mac-memory reindex`."
                )
            out.append(arr)
        return out

    def _modulation_ok(self, metadata: Mapping[str, Any] | None) -> bool:
        """Whether a record's stored modulation decodes (checksum, header, finite) with this shape."""
        try:
            arr = b64_to_modulation((metadata or {}).get(S.K_MODULATION))
        except CorruptModulationError:
            return False
        return tuple(arr.shape) == (self.mac.num_tokens, self.mac.d_mem)

    def _check_prompt(self, prompt: str, max_new_tokens: Any) -> None:
        """Refuse a prompt the base LM cannot read next to the memory prefix and the answer budget.

        Without this a hostile question goes to the LM whole: 140 kB of text made a tiny model try to
        allocate 40 GB for attention. Only a bounded slice is tokenized, so a 10 MB question is refused
        in milliseconds.
        """
        max_new_tokens = _check_max_new_tokens(max_new_tokens)
        config = self.mac.lm.model.config
        config = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if not isinstance(limit, int):
            return
        prefix = int(self.mac.config.prefix_len)
        budget = limit - prefix - max_new_tokens
        head = prompt[: 32 * limit]  # no tokenizer packs more than 32 characters into one token
        with self._model_lock:
            n = len(self.mac.lm.tokenizer(head)["input_ids"])
        if n > budget or len(head) < len(prompt):
            size = f"{len(prompt):,} characters" if len(head) < len(prompt) else f"{n} tokens"
            raise InvalidInputError(
                f"The prompt ({size}) does not fit the base LM, which reads at most {limit} positions: "
                f"{prefix} memory prefix + prompt + max_new_tokens={max_new_tokens}. Shorten the question "
                "(or the chat history: history_turns=), or lower max_new_tokens."
            )

    def recall(
        self,
        question: str,
        k: int = 8,
        *,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        as_of: datetime | float | None = None,
        prefer_newest: bool = False,
    ) -> Recall:
        """Retrieve candidates, decode their modulations and aggregate them into the prefix for ``question``."""
        with self._lock:
            found = self._search(question, k, namespace, where, as_of, prefer_newest, with_modulation=False)
            if not found:
                return Recall(question, [], None, None, None)
            hits = [h for h, _ in found]
            arrays = self._decode([row for _, row in found])
            memory = torch.from_numpy(np.stack(arrays)).to(self.mac.device)  # (N, T, d_mem)
            similarity = torch.tensor([[h.score for h in hits]], dtype=torch.float32)  # (1, N) cosine
            with torch.no_grad(), self._model_lock:
                prefix, weights = self.mac.modulate([question], memory[None], similarity=similarity)  # (1, N)
            return Recall(question, hits, memory, prefix, weights[0].detach().cpu())

    # ------------------------------------------------------------------ answering
    def answer(
        self,
        question: str,
        k: int = 8,
        *,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        as_of: datetime | float | None = None,
        prefer_newest: bool = False,
        max_new_tokens: int = 32,
        num_beams: int = 1,
    ) -> Answer:
        """Answer ``question`` from the memory of ``namespace``: only the question is in the prompt.

        With no candidate (empty namespace, or filters that match nothing) the frozen LM answers
        unconditioned and ``sources`` is empty.
        """
        with self._lock:
            self._check_prompt(format_question(_check_query(question)), max_new_tokens)
            recall = self.recall(
                question, k, namespace=namespace, where=where, as_of=as_of, prefer_newest=prefer_newest
            )
            with self._model_lock:
                text = self.mac.lm.answer(
                    [question], recall.prefix, max_new_tokens=max_new_tokens, num_beams=num_beams
                )[0]
            return Answer(text, recall.sources(self.snippet_chars), question)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        k: int = 8,
        *,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        as_of: datetime | float | None = None,
        prefer_newest: bool = False,
        max_new_tokens: int = 32,
        history_turns: int = 6,
        remember: bool = False,
    ) -> Answer:
        """Answer the last user turn of ``messages`` (``[{"role", "content"}, ...]``).

        The memory is searched and aggregated for the last user turn; the prompt holds the last
        ``history_turns`` user/assistant turns before it and the question. ``remember=True`` stores the
        user turn and the reply with :meth:`add_messages` afterwards.
        """
        with self._lock:
            checked, prompt = _chat_prompt(messages, history_turns)
            question = checked[-1]["content"]
            self._check_prompt(prompt, max_new_tokens)
            recall = self.recall(
                question, k, namespace=namespace, where=where, as_of=as_of, prefer_newest=prefer_newest
            )
            with self._model_lock:
                raw = self.mac.lm.generate(
                    [prompt], recall.prefix, max_new_tokens=max_new_tokens
                )[0]
            text = clean_answer(raw)
            if remember:
                turns = [checked[-1]] + ([{"role": "assistant", "content": text}] if text else [])
                self.add_messages(turns, namespace=namespace)
            return Answer(text, recall.sources(self.snippet_chars), question)

    def answer_stream(
        self,
        question: str,
        k: int = 8,
        *,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        as_of: datetime | float | None = None,
        prefer_newest: bool = False,
        max_new_tokens: int = 32,
    ) -> AnswerStream:
        """Like :meth:`answer`, but yields the answer's text pieces as they are generated.

        Retrieval and aggregation happen now (``stream.sources`` is ready at once); generation runs in
        a background thread when iteration starts, outside the memory's lock, and stops at the answer's
        first line break like :meth:`answer` does.
        """
        with self._lock:
            self._check_prompt(format_question(_check_query(question)), max_new_tokens)
            recall = self.recall(
                question, k, namespace=namespace, where=where, as_of=as_of, prefer_newest=prefer_newest
            )
        return AnswerStream(
            recall.sources(self.snippet_chars),
            stream_answer(
                self.mac.lm, format_question(question), recall.prefix, max_new_tokens, self._model_lock
            ),
        )

    def chat_stream(
        self,
        messages: Sequence[Mapping[str, Any]],
        k: int = 8,
        *,
        namespace: str | None = None,
        where: Mapping[str, Any] | None = None,
        as_of: datetime | float | None = None,
        prefer_newest: bool = False,
        max_new_tokens: int = 32,
        history_turns: int = 6,
    ) -> AnswerStream:
        """Like :meth:`chat`, but yields the reply's text pieces as they are generated.

        The memory is searched and aggregated for the last user turn now (``stream.sources`` is ready
        at once); joined, the pieces equal :meth:`chat`'s text for the same messages.
        """
        with self._lock:
            checked, prompt = _chat_prompt(messages, history_turns)
            question = checked[-1]["content"]
            self._check_prompt(prompt, max_new_tokens)
            recall = self.recall(
                question, k, namespace=namespace, where=where, as_of=as_of, prefer_newest=prefer_newest
            )
        return AnswerStream(
            recall.sources(self.snippet_chars),
            stream_answer(
                self.mac.lm, prompt, recall.prefix, max_new_tokens, self._model_lock
            ),
        )

    # ------------------------------------------------------------------ async twins
    async def aadd_texts(
        self,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        *,
        namespace: str | None = None,
    ) -> list[str]:
        """:meth:`add_texts` in a worker thread (the memory's lock serialises it with other calls)."""
        return await asyncio.to_thread(self.add_texts, texts, metadatas, ids, namespace=namespace)

    async def aretrieve(self, query: str, k: int = 8, **kwargs: Any) -> list[Hit]:
        """:meth:`retrieve` in a worker thread."""
        return await asyncio.to_thread(self.retrieve, query, k, **kwargs)

    async def aanswer(self, question: str, k: int = 8, **kwargs: Any) -> Answer:
        """:meth:`answer` in a worker thread."""
        return await asyncio.to_thread(self.answer, question, k, **kwargs)

    async def achat(self, messages: Sequence[Mapping[str, Any]], k: int = 8, **kwargs: Any) -> Answer:
        """:meth:`chat` in a worker thread."""
        return await asyncio.to_thread(self.chat, messages, k, **kwargs)

    # ------------------------------------------------------------------ inspection
    def stats(self) -> dict[str, Any]:
        """Counts per namespace, bytes per stored modulation, and what wrote the memory."""
        with self._lock:
            per_ns: dict[str, int] = {}
            blob_chars = blob_bytes = records = stale = 0
            for page in self.store.iter_get(include=["metadatas"], page_size=1000):
                for md in page["metadatas"] or []:
                    md = md or {}
                    ns = str(md.get(S.K_NAMESPACE, "?"))
                    per_ns[ns] = per_ns.get(ns, 0) + 1
                    blob = md.get(S.K_MODULATION) or ""
                    blob_chars += len(blob)
                    blob_bytes += len(blob) * 3 // 4 - blob[-2:].count("=")  # base64 → raw codec bytes
                    stale += md.get(S.K_FINGERPRINT) != self.fingerprint
                    records += 1
            meta = self.store.collection_metadata()
            return {
                "collection": self.store.name,
                "location": self.store.location,
                "remote": self.store.remote,
                "records": records,
                "namespaces": dict(sorted(per_ns.items())),
                "codec": self.codec,
                "modulation_shape": [self.mac.num_tokens, self.mac.d_mem],
                "modulation_b64_bytes_per_record": blob_chars / records if records else 0.0,
                "modulation_bytes_per_record": blob_bytes / records if records else 0.0,
                "checkpoint_fingerprint": self.fingerprint,
                "stored_fingerprint": meta.get(S.C_FINGERPRINT),
                "stale_records": stale,
                "embedder": self.embedder.name,
                "stored_embedder": meta.get(S.C_EMBEDDER),
            }


# ----------------------------------------------------------------------------- chat + streaming


def _chat_prompt(messages: Any, history_turns: int) -> tuple[list[dict[str, str]], str]:
    """Checked messages and the LM prompt of :meth:`MACMemory.chat`: the last ``history_turns``
    user/assistant turns (system turns dropped), then the last user turn as the question."""
    checked = _check_messages(messages, need_last_user=True)
    history = [(m["role"], m["content"]) for m in checked[:-1] if m["role"] != "system"]
    history = history[-history_turns:] if history_turns > 0 else []
    return checked, format_chat(history, checked[-1]["content"])


def _check_messages(messages: Any, need_last_user: bool) -> list[dict[str, str]]:
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidInputError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts.")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise InvalidInputError(f"messages[{i}] must be a dict with 'role' and 'content', got {m!r}.")
        if m["role"] not in CHAT_ROLES:
            raise InvalidInputError(
                f"messages[{i}]['role']={m['role']!r} is invalid: use one of {CHAT_ROLES}."
            )
        if not isinstance(m["content"], str):
            raise InputTypeError(
                f"messages[{i}]['content'] must be a str, got {type(m['content']).__name__}."
            )
        if not m["content"].strip():
            raise EmptyInputError(f"messages[{i}]['content'] is empty or whitespace only.")
        check_unicode(m["content"], f"messages[{i}]['content']")
        out.append({"role": str(m["role"]), "content": m["content"]})
    if need_last_user and out[-1]["role"] != "user":
        raise InvalidInputError(
            f"The last message must be the user's turn to answer, got role {out[-1]['role']!r}."
        )
    return out


def first_line_pieces(chunks: Iterable[str]) -> Iterator[str]:
    """Incremental :func:`clean_answer`: the pieces of the first non-blank line of ``chunks``' text.

    Leading whitespace is skipped, trailing whitespace is held back until more text follows, and the
    iteration ends at the first line break, so the joined pieces equal ``clean_answer("".join(chunks))``
    whatever the chunking.
    """
    started, pending = False, ""
    for chunk in chunks:
        if not started:
            chunk = chunk.lstrip()
            if not chunk:
                continue
            started = True
        cut = chunk.find("\n")
        if cut != -1:
            chunk = chunk[:cut]
        body = chunk.rstrip()
        if body:
            yield pending + body
            pending = chunk[len(body) :]
        else:
            pending += chunk
        if cut != -1:
            return


def stream_answer(
    lm: Any,
    prompt: str,
    prefix: PrefixKV | None,
    max_new_tokens: int,
    lock: threading.RLock | None = None,
) -> Iterator[str]:
    """Generate ``prompt``'s answer under ``prefix`` in a thread; yield its :func:`first_line_pieces`.

    The joined pieces equal the non-streamed (cleaned) answer. Generation stops at the answer's line
    break or when the consumer stops early, and an error in generation is raised here. Tokenizing and
    generating (the streamer decodes with the model's tokenizer) hold ``lock`` (the model's
    :func:`model_lock` when several threads share it); generation does not wait for the consumer, so
    the lock is held for the compute only.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    lock = lock if lock is not None else model_lock(lm)
    stop = threading.Event()

    class _StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    with lock:
        input_ids, attention_mask = lm.tokenize([prompt])
    streamer = TextIteratorStreamer(lm.tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with lock:
                lm.generate_ids(
                    input_ids,
                    attention_mask,
                    prefix,
                    max_new_tokens=max_new_tokens,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]),
                )
        except BaseException as exc:  # surfaced in the consumer; end() keeps it from waiting forever
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=run, name="mac-memory-stream", daemon=True)
    thread.start()
    try:
        yield from first_line_pieces(streamer)
    finally:
        stop.set()  # also when the consumer stops early: generation ends at the next token
        thread.join()
    if failure:
        raise failure[0]
