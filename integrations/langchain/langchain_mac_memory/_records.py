"""Listing what a MAC memory holds, by namespace: the reads LangChain components need beyond search.

``MACMemory`` answers "which records are like this query" (:meth:`~mac_memory.memory.MACMemory.retrieve`)
and "give me these ids" (:meth:`~mac_memory.memory.MACMemory.get`), but has no public "list a
namespace" or "which namespaces exist". A chat history and a LangGraph store need both, so this module
reads record ids from the memory's Chroma store (``memory.store``), ids only (no modulation blobs), and
leaves everything else to the public API. Chroma ids are ``"<namespace>/<record id>"`` and namespaces
never contain ``/`` (see :mod:`mac_memory.memory.store`), so the first ``/`` splits them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mac_memory.memory import MACMemory
from mac_memory.memory.store import K_NAMESPACE, check_namespace, combine_where


def record_ids(memory: MACMemory, namespace: str, where: Mapping[str, Any] | None = None) -> list[str]:
    """Ids (as users see them, chunks as ``doc#i``) of the records of ``namespace`` matching ``where``."""
    clause = combine_where({K_NAMESPACE: check_namespace(namespace)}, where)
    return [cid.split("/", 1)[1] for cid in memory.store.ids(clause)]


def namespaces(memory: MACMemory) -> list[str]:
    """Every namespace holding at least one record, sorted."""
    found: set[str] = set()
    for page in memory.store.iter_get(include=[]):
        found.update(cid.split("/", 1)[0] for cid in page["ids"])
    return sorted(found)
