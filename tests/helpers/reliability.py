"""Shared pieces of the reliability tests (``tests/test_reliability_*.py``); not part of the library.

* :data:`SCALE` / :func:`scaled`: every count in those tests (kills, sequences, threads' seconds, fuzz
  examples) is multiplied by ``$MAC_RELIABILITY_SCALE`` (default 1), so development runs can be small and
  a final run can be large without editing the tests.
* :class:`HashEmbedder`: a deterministic, instant :class:`~mac_memory.memory.Embedder` (sha256 of the
  text → a unit vector). The reliability tests check storage semantics, not similarity quality, and a
  verifier can recompute every stored embedding exactly.
* :func:`tiny_mac`: untrained MAC networks over a tiny Llama, built once per process.
* :func:`snapshot` and :func:`record_problems`: what "the memory is unchanged" and "every record is
  complete and consistent" mean, used by every reliability test file and by the crash worker.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCALE = float(os.environ.get("MAC_RELIABILITY_SCALE", "1"))
"""Multiplier for every count in the reliability tests (``MAC_RELIABILITY_SCALE``, default 1)."""

FAKE_DIM = 16


def scaled(n: float, minimum: int = 1) -> int:
    """``n`` times :data:`SCALE`, rounded, at least ``minimum``."""
    return max(minimum, round(n * SCALE))


class HashEmbedder:
    """Deterministic embeddings without a model: sha256 of the UTF-8 text → ``(16,)`` unit vector.

    Lone surrogates are hashed too (``surrogatepass``), so refusing text that is not valid Unicode is
    the memory's job, not an accident of the embedder.
    """

    name = "test-hash-embedder-16"

    @property
    def dim(self) -> int:
        return FAKE_DIM

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        rows = [self._vector(t) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, FAKE_DIM), np.float32)  # (N, 16)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)

    @staticmethod
    def _vector(text: str) -> np.ndarray:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:FAKE_DIM]
        v = np.frombuffer(digest, dtype=np.uint8).astype(np.float32) - 127.5
        return (v / np.linalg.norm(v)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def tiny_mac(lm_dir: str, seed: int = 0) -> Any:
    """Untrained MAC networks (T=4 memory tokens of d_mem=32) over the tiny Llama at ``lm_dir``."""
    import torch

    from mac_memory.config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig
    from mac_memory.frozen_lm import FrozenLM
    from mac_memory.model import MACModel

    lm = FrozenLM.from_pretrained(lm_dir, device="cpu")
    torch.manual_seed(seed)
    config = MACConfig(
        base_lm=BaseLMConfig(str(lm_dir)),
        amortizer=AmortizerConfig(kind="kv_anchored", num_tokens=4, d_mem=32),
        aggregator=AggregatorConfig(num_layers=1, num_heads=4),
    )
    return MACModel(config, lm).eval()


def save_tiny_checkpoint(lm_dir: Path, out: Path, seed: int = 0) -> Path:
    """A MAC checkpoint directory for worker processes (written once; reused when it exists)."""
    if not (out / "mac_manifest.json").is_file():
        tiny_mac(str(lm_dir), seed).save_pretrained(out)
    return out


def settings() -> Any:
    """Chroma settings of every client the tests build themselves (telemetry off)."""
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


def snapshot(memory: Any, namespace: str | None = None) -> dict[str, tuple[str, dict[str, Any], tuple]]:
    """Every record (of ``namespace``, or all): Chroma id → (text, full metadata, embedding).

    Two snapshots are equal exactly when nothing about any record changed, modulation blob included.
    """
    where = None if namespace is None else {"mac_namespace": namespace}
    got = memory.store.collection.get(where=where, include=["metadatas", "documents", "embeddings"])
    return {
        cid: (doc, md, tuple(np.round(np.asarray(emb, dtype=np.float64), 6).tolist()))
        for cid, doc, md, emb in zip(
            got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
        )
    }


def record_problems(
    memory: Any,
    embedder: HashEmbedder | None = None,
    check_values: bool | Collection[str] = False,
    got: dict[str, Any] | None = None,
) -> list[str]:
    """Everything wrong with the records of ``memory``'s collection (empty list = every record whole).

    A record is whole when its Chroma id is ``<mac_namespace>/<mac_id>``; its text is present and its
    ``mac_content_sha256`` matches; its embedding is present, finite, unit-norm (and, with ``embedder``,
    exactly that text's embedding); its modulation decodes (checksum, header, shape ``(T, d_mem)``) and
    was written by this memory's networks; its chunk bookkeeping is coherent. With ``check_values``
    (True, or the Chroma ids to check) the decoded modulation must also be the amortization of its own
    text within float16 rounding: text and modulation belong to the same write. ``got`` is a
    ``collection.get(include=["metadatas", "documents", "embeddings"])`` result already fetched.
    """
    from mac_memory.errors import CorruptModulationError
    from mac_memory.memory.codec import b64_to_modulation

    problems: list[str] = []
    if got is None:
        got = memory.store.collection.get(include=["metadatas", "documents", "embeddings"])
    expected_shape = (memory.mac.num_tokens, memory.mac.d_mem)
    texts_to_check: list[tuple[str, str, np.ndarray]] = []
    for cid, doc, md, emb in zip(
        got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
    ):
        md = md or {}
        ns, rid, parent = md.get("mac_namespace"), md.get("mac_id"), md.get("mac_parent")
        if cid != f"{ns}/{rid}":
            problems.append(f"{cid}: id does not match mac_namespace/mac_id ({ns!r}/{rid!r})")
        if not isinstance(doc, str) or not doc:
            problems.append(f"{cid}: no text")
            continue
        if md.get("mac_content_sha256") != hashlib.sha256(doc.encode()).hexdigest():
            problems.append(f"{cid}: text does not match its mac_content_sha256")
        vec = np.asarray(emb, dtype=np.float32) if emb is not None else None
        if vec is None or vec.shape != (memory.embedder.dim,) or not np.isfinite(vec).all():
            problems.append(f"{cid}: embedding missing or malformed")
        elif not math.isclose(float(np.linalg.norm(vec)), 1.0, abs_tol=1e-3):
            problems.append(f"{cid}: embedding is not unit-norm")
        elif embedder is not None and float(np.abs(vec - embedder.embed_query(doc)).max()) > 1e-5:
            problems.append(f"{cid}: embedding is not its text's embedding")
        try:
            mod = b64_to_modulation(md.get("mac_modulation"))
        except CorruptModulationError as exc:
            problems.append(f"{cid}: modulation unreadable ({exc})")
            continue
        if tuple(mod.shape) != expected_shape:
            problems.append(f"{cid}: modulation shape {mod.shape} != {expected_shape}")
        if md.get("mac_fingerprint") != memory.fingerprint:
            problems.append(f"{cid}: modulation written by other networks")
        chunk, n = md.get("mac_chunk"), md.get("mac_num_chunks")
        if not (isinstance(chunk, int) and isinstance(n, int) and 0 <= chunk < n):
            problems.append(f"{cid}: chunk bookkeeping {chunk}/{n}")
        elif rid != (parent if n == 1 else f"{parent}#{chunk}"):
            problems.append(f"{cid}: record id {rid!r} does not match parent {parent!r} chunk {chunk}/{n}")
        if check_values is True or (check_values and cid in check_values):
            texts_to_check.append((cid, doc, mod))
    if texts_to_check:
        import torch

        with torch.no_grad():
            fresh = memory.mac.amortize([t for _, t, _ in texts_to_check], batch_size=64).numpy()
        for (cid, _, mod), ref in zip(texts_to_check, fresh, strict=True):
            if not np.allclose(mod, ref.astype(np.float16).astype(np.float32), atol=2e-2, rtol=2e-2):
                problems.append(f"{cid}: modulation is not the amortization of its text")
    return problems


def wait_for_heartbeat(port: int, timeout: float = 60.0) -> None:
    """Wait until a ``chroma run`` server on localhost ``port`` answers its heartbeat."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"chroma run did not answer on port {port} within {timeout}s") from None
            time.sleep(0.1)
