"""The Chroma record layout of a MAC memory, and every call mac-memory makes to Chroma.

One record per chunk of a document, in one Chroma collection (cosine space, no embedding function:
embeddings are always passed in)::

    id          "<namespace>/<record id>"      namespaces never share an id, even for equal user ids
    document    the chunk's text                what reindex re-amortizes from
    embedding   the embedder's unit vector      candidate pre-selection
    metadata    the user's keys, plus the reserved ``mac_`` keys:
        mac_namespace       str     the wall every read, write and delete is filtered by
        mac_id              str     the record's id as the user sees it (``doc`` or ``doc#2`` for a chunk)
        mac_parent          str     the document's id (== mac_id unless the document was chunked)
        mac_chunk           int     chunk index within the parent
        mac_num_chunks      int     chunks of the parent
        mac_char_start/end  int     the chunk's character span in the parent text
        mac_ingested_at     float   unix time of ingestion (``as_of`` filters with ``$lte``)
        mac_content_sha256  str     sha256 of the chunk text
        mac_modulation      str     base64 of the codec bytes (:mod:`~mac_memory.memory.codec`)
        mac_fingerprint     str     ``MACModel.fingerprint()`` of the checkpoint that wrote the modulation

The modulation sits in the record's own metadata so it is written, copied and deleted atomically with
the record and is reachable wherever the collection is (embedded or on a Chroma server). Hosted Chroma
Cloud caps a metadata value at 4 KB, which fits only small modulations (about 2,900 float16 numbers).

Collection metadata records the format, the checkpoint fingerprint and the embedder, so a memory is
never read with networks or an embedder that did not write it.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    ConfigError,
    InvalidInputError,
    InvalidMetadataError,
    MACError,
    StoreConnectionError,
)

logger = logging.getLogger(__name__)

__all__ = [
    "RESERVED_PREFIX",
    "ChromaStore",
    "Record",
    "check_namespace",
    "clean_metadata",
]

FORMAT_VERSION = 1
RESERVED_PREFIX = "mac_"
K_NAMESPACE = "mac_namespace"
K_ID = "mac_id"
K_PARENT = "mac_parent"
K_CHUNK = "mac_chunk"
K_NUM_CHUNKS = "mac_num_chunks"
K_START = "mac_char_start"
K_END = "mac_char_end"
K_TIME = "mac_ingested_at"
K_SHA = "mac_content_sha256"
K_MODULATION = "mac_modulation"
K_FINGERPRINT = "mac_fingerprint"

# Collection-level metadata keys.
C_FORMAT = "mac_format"
C_FINGERPRINT = "mac_fingerprint"
C_EMBEDDER = "mac_embedder"
C_EMBEDDING_DIM = "mac_embedding_dim"

_COLLECTION_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{1,510})[A-Za-z0-9]$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class Record:
    """One Chroma record as written: id, text, embedding ``(dim,)`` and complete metadata."""

    chroma_id: str
    text: str
    embedding: np.ndarray
    metadata: dict[str, Any]


def check_collection_name(name: Any) -> str:
    """Chroma's rule (3–512 chars of ``[a-zA-Z0-9._-]``, alphanumeric at both ends), checked up front."""
    if not isinstance(name, str) or not _COLLECTION_RE.match(name):
        raise ConfigError(
            f"collection={name!r} is invalid: use 3-512 characters from [a-zA-Z0-9._-], "
            "starting and ending with a letter or digit (e.g. 'mac_memory')."
        )
    return name


def _is_unicode(text: str) -> bool:
    """False for a str with lone surrogates: Chroma (and UTF-8) cannot store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_namespace(namespace: Any) -> str:
    """A namespace is a non-empty string without '/' (it prefixes Chroma ids) or control characters."""
    if (
        not isinstance(namespace, str)
        or not namespace.strip()
        or "/" in namespace
        or _CONTROL_RE.search(namespace)
        or len(namespace) > 256
        or not _is_unicode(namespace)
    ):
        raise InvalidInputError(
            f"namespace={namespace!r} is invalid: use a non-empty string of at most 256 "
            "characters without '/' or control characters (e.g. 'user-1')."
        )
    return namespace


def check_record_id(record_id: Any, position: int) -> str:
    if (
        not isinstance(record_id, str)
        or not record_id.strip()
        or _CONTROL_RE.search(record_id)
        or not _is_unicode(record_id)
    ):
        raise InvalidInputError(
            f"ids[{position}]={record_id!r} is invalid: ids must be non-empty strings of valid Unicode "
            "without control characters."
        )
    return record_id


def chroma_id(namespace: str, record_id: str) -> str:
    """The Chroma id of a record: namespaces hold no '/', so the first '/' splits it back unambiguously."""
    return f"{namespace}/{record_id}"


def _clean_value(key: str, value: Any, where: str) -> Any:
    """A Chroma-storable value: numpy scalars become Python scalars; nested/binary values are refused."""
    if isinstance(value, np.generic):
        value = value.item()  # np.float32(1.5) -> 1.5: Chroma rejects numpy scalars (P-16)
    if isinstance(value, str) and not _is_unicode(value):
        raise InvalidMetadataError(
            f"{where}: key {key!r} holds a str that is not valid Unicode (a lone surrogate); Chroma "
            "stores UTF-8 only. Decode the source with its real encoding, or with errors='replace'."
        )
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, Integral):
        if not _INT64_MIN <= int(value) <= _INT64_MAX:
            # Chroma would silently store it as an (inexact) float.
            raise InvalidMetadataError(
                f"{where}: key {key!r} holds {int(value)}, which does not fit in a 64-bit integer "
                "(Chroma would store an inexact float); store it as a str."
            )
        return int(value)
    if isinstance(value, Real):
        value = float(value)
        if not math.isfinite(value):
            raise InvalidMetadataError(f"{where}: key {key!r} is {value}; metadata numbers must be finite.")
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        items = [
            _clean_value(key, v, where) for v in (value.tolist() if isinstance(value, np.ndarray) else value)
        ]
        kinds = {type(v) for v in items}
        if not items or None in items or len(kinds) != 1 or any(isinstance(v, (list, dict)) for v in items):
            raise InvalidMetadataError(
                f"{where}: key {key!r} holds {value!r}; a list value must be non-empty "
                "and hold one scalar type only (str, int, float or bool)."
            )
        return items
    if isinstance(value, Mapping):
        raise InvalidMetadataError(
            f"{where}: key {key!r} holds a nested dict; Chroma metadata is flat. "
            f"Flatten it (e.g. '{key}.field') or store it as a JSON string."
        )
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise InvalidMetadataError(f"{where}: key {key!r} holds bytes; store a base64 or hex string instead.")
    hint = " (store .timestamp() or .isoformat())" if hasattr(value, "isoformat") else ""
    raise InvalidMetadataError(
        f"{where}: key {key!r} holds a {type(value).__name__}; metadata values must be "
        f"str, int, float, bool, None or a flat list of one of them{hint}."
    )


def clean_metadata(metadata: Any, where: str) -> dict[str, Any]:
    """The user's metadata, checked and converted for Chroma; ``None`` values are dropped."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(f"{where} must be a dict (or None), got {type(metadata).__name__}.")
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise InvalidMetadataError(f"{where}: metadata keys must be non-empty strings, got {key!r}.")
        if not _is_unicode(key):
            raise InvalidMetadataError(f"{where}: key {key!r} is not valid Unicode (a lone surrogate).")
        if key.startswith((RESERVED_PREFIX, "chroma:", "$", "#")):
            raise InvalidMetadataError(
                f"{where}: key {key!r} is reserved (keys starting with '{RESERVED_PREFIX}' or 'chroma:' "
                "belong to mac-memory/Chroma; '$' and '#' start Chroma's filter operators); rename it."
            )
        cleaned = _clean_value(key, value, where)
        if cleaned is not None:
            out[key] = cleaned
    return out


def user_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A stored record's metadata without the reserved keys (what users see)."""
    return {k: v for k, v in (metadata or {}).items() if not k.startswith(RESERVED_PREFIX)}


def combine_where(*clauses: Mapping[str, Any] | None) -> dict[str, Any]:
    """``$and`` of the non-empty clauses (Chroma refuses an ``$and`` of fewer than two)."""
    parts = [dict(c) for c in clauses if c]
    if not parts:
        raise ValueError("combine_where needs at least one clause")  # internal: namespace is always given
    return parts[0] if len(parts) == 1 else {"$and": parts}


class ChromaStore:
    """A Chroma collection holding MAC records, with connection errors turned into :class:`MACError`s.

    Use :meth:`open`; every method is a thin, batched wrapper around one Chroma call.
    """

    def __init__(self, client: Any, collection: str, location: str, remote: bool) -> None:
        self.client, self.location, self.remote = client, location, remote
        self.collection = self._call(
            f"opening collection {collection!r}",
            lambda: client.get_or_create_collection(
                collection,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={C_FORMAT: FORMAT_VERSION},
            ),
        )
        self.max_batch = int(self._call("reading the batch limit", client.get_max_batch_size))

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(
        cls,
        *,
        collection: str,
        path: str | Path | None = None,
        client: Any = None,
        host: str | None = None,
        port: int | None = None,
        ssl: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> ChromaStore:
        """Open (creating if needed) ``collection`` on an embedded, given or remote Chroma."""
        check_collection_name(collection)
        given = sum(x is not None for x in (path, client, host))
        if given > 1:
            raise ConfigError("Give at most one of path=, client= or host= (where the memory lives).")
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        if host is not None:
            port = 8000 if port is None else port
            location = f"{host}:{port}"
            try:
                client = chromadb.HttpClient(
                    host=host, port=port, ssl=ssl, headers=dict(headers or {}), settings=settings
                )
            except Exception as exc:
                if _is_connection_error(exc):
                    raise _connection_error(location, "connecting", exc) from exc
                raise
            remote = True
        elif client is not None:
            s = client.get_settings()
            remote = (
                bool(getattr(s, "chroma_server_host", None))
                and "fastapi" in str(getattr(s, "chroma_api_impl", "")).lower()
            )
            if remote:
                location = f"{s.chroma_server_host}:{s.chroma_server_http_port}"
            else:
                persistent = getattr(s, "is_persistent", False)
                location = str(s.persist_directory) if persistent else "<in-memory>"
        else:
            if path is None:
                raise ConfigError("ChromaStore.open needs path=, client= or host=.")  # MACMemory resolves it
            Path(path).mkdir(parents=True, exist_ok=True)
            client = chromadb.PersistentClient(path=str(path), settings=settings)
            location, remote = str(path), False
        return cls(client, collection, location, remote)

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one Chroma call; an unreachable server becomes :class:`StoreConnectionError`."""
        try:
            return fn(*args, **kwargs)
        except MACError:
            raise
        except Exception as exc:
            if _is_connection_error(exc):
                raise _connection_error(self.location, action, exc) from exc
            raise

    # ------------------------------------------------------------------ collection metadata
    @property
    def name(self) -> str:
        return str(self.collection.name)

    def collection_metadata(self) -> dict[str, Any]:
        fresh = self._call("reading collection metadata", self.client.get_collection, self.name)
        return dict(fresh.metadata or {})

    def update_collection_metadata(self, updates: Mapping[str, Any]) -> None:
        """Merge ``updates`` in (Chroma's ``modify`` *replaces* the whole dict, so merge here)."""
        merged = {**self.collection_metadata(), **updates}
        self._call("writing collection metadata", self.collection.modify, metadata=merged)

    # ------------------------------------------------------------------ reads
    def count(self, where: Mapping[str, Any] | None = None) -> int:
        if where is None:
            return int(self._call("counting records", self.collection.count))
        return len(self.ids(where))

    def ids(self, where: Mapping[str, Any]) -> list[str]:
        """Every Chroma id matching ``where`` (ids only: cheap even for large memories)."""
        out: list[str] = []
        for page in self.iter_get(where=where, include=[]):
            out += page["ids"]
        return out

    def iter_get(
        self,
        *,
        where: Mapping[str, Any] | None = None,
        include: Sequence[str] = ("metadatas",),
        page_size: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """``get`` in pages of at most the batch limit, so large collections never load at once."""
        size = min(page_size or self.max_batch, self.max_batch)
        offset = 0
        while True:
            page = self._call(
                "reading records",
                self.collection.get,
                where=dict(where) if where else None,
                limit=size,
                offset=offset,
                include=list(include),
            )
            yield page
            if len(page["ids"]) < size:
                return
            offset += size

    def get(
        self, chroma_ids: Sequence[str], include: Sequence[str] = ("metadatas",)
    ) -> dict[str, dict[str, Any]]:
        """``{id: {"metadata", "document", "embedding"}}`` for the ids that exist (Chroma's order is not ours)."""
        out: dict[str, dict[str, Any]] = {}
        ids = list(dict.fromkeys(chroma_ids))
        for i in range(0, len(ids), self.max_batch):
            page = self._call(
                "reading records", self.collection.get, ids=ids[i : i + self.max_batch], include=list(include)
            )
            out.update(_rows(page))
        return out

    def query(
        self, embedding: np.ndarray, k: int, where: Mapping[str, Any], include: Sequence[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Top-``k`` ``(id, row)`` by cosine distance within ``where``, nearest first."""
        res = self._call(
            "querying",
            self.collection.query,
            query_embeddings=np.asarray(embedding, dtype=np.float32)[None, :],
            n_results=k,
            where=dict(where) or None,
            include=list(include),
        )
        rows: list[tuple[str, dict[str, Any]]] = []
        for j, cid in enumerate(res["ids"][0]):
            row: dict[str, Any] = {}
            if res.get("metadatas") is not None:
                if not res["metadatas"][0][j]:
                    # Deleted by another client between Chroma's vector search and its metadata read
                    # (seen with two processes on one server): the record is gone, so is the hit.
                    continue
                row["metadata"] = res["metadatas"][0][j]
            if res.get("documents") is not None:
                row["document"] = res["documents"][0][j]
            if res.get("distances") is not None:
                row["distance"] = float(res["distances"][0][j])
            if res.get("embeddings") is not None:
                row["embedding"] = np.asarray(res["embeddings"][0][j], dtype=np.float32)
            rows.append((cid, row))
        return rows

    # ------------------------------------------------------------------ writes
    def write(self, records: Sequence[Record], previous: Mapping[str, Mapping[str, Any]]) -> None:
        """Upsert ``records`` so each ends up with exactly its new metadata.

        Chroma's ``upsert`` merges metadata with what is stored; every key of the previous version
        (``previous[id]``) that the new version lacks is therefore written as None, which deletes it.
        A single upsert replaces text, embedding, metadata and modulation of a record together, so at
        no point does a record exist without a modulation (delete-then-add would open that window).
        """
        for i in range(0, len(records), self.max_batch):
            batch = records[i : i + self.max_batch]
            metadatas = []
            for r in batch:
                md: dict[str, Any] = {k: None for k in previous.get(r.chroma_id, {}) if k not in r.metadata}
                md.update(r.metadata)
                metadatas.append(md)
            self._call(
                "writing records",
                self.collection.upsert,
                ids=[r.chroma_id for r in batch],
                embeddings=np.stack([r.embedding for r in batch]).astype(np.float32),
                documents=[r.text for r in batch],
                metadatas=metadatas,
            )

    def delete(self, chroma_ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(chroma_ids))
        for i in range(0, len(ids), self.max_batch):
            self._call("deleting records", self.collection.delete, ids=ids[i : i + self.max_batch])


def _rows(page: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for j, cid in enumerate(page["ids"]):
        row: dict[str, Any] = {}
        if page.get("metadatas") is not None:
            if not page["metadatas"][j]:
                continue  # deleted by another client mid-read (see ChromaStore.query)
            row["metadata"] = page["metadatas"][j]
        if page.get("documents") is not None:
            row["document"] = page["documents"][j]
        if page.get("embeddings") is not None:
            row["embedding"] = np.asarray(page["embeddings"][j], dtype=np.float32)
        out[cid] = row
    return out


def is_filter_error(exc: BaseException) -> bool:
    """A malformed ``where``: Chroma raises ValueError (client-side check) or InvalidArgumentError (core)."""
    if isinstance(exc, MACError):
        return False
    return isinstance(exc, ValueError) or type(exc).__name__ == "InvalidArgumentError"


def _is_connection_error(exc: BaseException) -> bool:
    """Chroma reports a dead server as httpx errors or a ValueError "Could not connect ..."."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, ConnectionError) or name in {
            "ConnectError",
            "ConnectTimeout",
            "RemoteProtocolError",
            "ReadError",
            "NetworkError",
        }:
            return True
        if "could not connect" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def _connection_error(location: str, action: str, exc: BaseException) -> StoreConnectionError:
    host, _, port = location.rpartition(":")
    return StoreConnectionError(
        f"Cannot reach the Chroma server at {location} while {action} ({type(exc).__name__}: {exc}). "
        f"Is it running? Start one with `chroma run --path DIR --host {host or '127.0.0.1'} --port "
        f"{port or 8000}`, or check host and port."
    )
