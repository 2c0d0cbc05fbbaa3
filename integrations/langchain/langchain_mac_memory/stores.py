"""``MACMemoryStore``: a LangGraph long-term memory store whose items live in a MAC memory.

LangGraph agents keep long-term memory in a ``BaseStore``: JSON values under a key in a namespace tuple.
Here each item is a MAC record, so what an agent stores is amortized into a modulation and can condition
the frozen LM (``ChatMACMemory`` on the same namespace answers from it) besides being searchable.

Mapping:

* namespace ``("users", "u1")`` → MAC namespace ``"users.u1"``: labels joined with ``.`` (LangGraph
  labels never contain one), ``%``, ``/`` and control characters percent-escaped (``/`` separates a
  MAC namespace from the record id). ``("u1",)`` is plain ``"u1"``.
* key → record id; value → the record's text (the value's ``"text"`` or ``"content"`` string, the fields
  named by ``index=[...]``, else the value as JSON) plus metadata: the full value as JSON (what
  ``get``/``search`` return), its creation time, and its top-level scalar fields (so Chroma ``where``
  filters of :class:`~langchain_mac_memory.MACMemoryRetriever` can use them).
* ``put(..., value=None)`` / ``delete`` delete the record. ``search(query=...)`` is the memory's
  similarity search; without a query, items come newest first. ``filter`` follows LangGraph's rules
  (exact values, nested dicts, ``$eq $ne $gt $gte $lt $lte``) and is applied to the values.

Records written by other means (``MACMemory.add_texts``, ``ChatMACMemory(remember=True)``) show up as
items whose value is ``{"text": ..., **their metadata}``. TTLs are not supported, and ``index=False``
still stores a searchable record (a MAC record always has text to amortize).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)
from mac_memory.errors import InputTypeError, InvalidInputError
from mac_memory.memory import Hit, MACMemory

from ._records import namespaces as mac_namespaces
from ._records import record_ids

logger = logging.getLogger(__name__)

__all__ = ["MACMemoryStore"]

VALUE_KEY = "lg_value"
CREATED_KEY = "lg_created_at"
_RESERVED = ("mac_", "lg_")
_SEPARATOR = "."
_ESCAPE = re.compile(r"[%/\x00-\x1f\x7f]")
_UNESCAPE = re.compile(r"%([0-9A-F]{2})")
_FLAT_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
_MAX_NAMESPACE = 256


def to_mac_namespace(namespace: tuple[str, ...]) -> str:
    """The MAC namespace that holds the items of a LangGraph ``namespace`` tuple."""
    _check_labels(namespace)
    if not namespace:
        raise InvalidNamespaceError("Namespace cannot be empty: give at least one label, e.g. ('user-1',).")
    name = _SEPARATOR.join(_ESCAPE.sub(lambda m: f"%{ord(m.group()):02X}", label) for label in namespace)
    if not name.strip() or len(name) > _MAX_NAMESPACE:
        raise InvalidNamespaceError(
            f"Namespace {namespace!r} maps to the MAC namespace {name!r}, which must be non-blank and at "
            f"most {_MAX_NAMESPACE} characters; use shorter labels."
        )
    return name


def from_mac_namespace(name: str) -> tuple[str, ...]:
    """The LangGraph namespace tuple of a MAC namespace (inverse of :func:`to_mac_namespace`)."""
    return tuple(_UNESCAPE.sub(lambda m: chr(int(m.group(1), 16)), label) for label in name.split(_SEPARATOR))


def _check_labels(namespace: Any) -> None:
    """LangGraph's label rules: a tuple of non-empty strings without ``.`` or NUL."""
    if not isinstance(namespace, tuple):
        raise InvalidNamespaceError(
            f"A namespace must be a tuple of strings, got {type(namespace).__name__}."
        )
    for label in namespace:
        if not isinstance(label, str) or not label or "." in label or "\x00" in label:
            raise InvalidNamespaceError(
                f"Invalid namespace label {label!r} in {namespace!r}: labels are non-empty strings "
                "without '.' or NUL."
            )


class MACMemoryStore(BaseStore):
    """A LangGraph ``BaseStore`` on a :class:`~mac_memory.memory.MACMemory` (see the module docstring).

    Args:
        memory: the MAC memory holding the items.
        text_fields: value fields whose string is the record's text, first present wins; a value
            without any of them is amortized as JSON.

    Example:
        >>> from langchain.agents import create_agent                                  # doctest: +SKIP
        >>> from langchain_mac_memory import ChatMACMemory, MACMemoryStore              # doctest: +SKIP
        >>> store = MACMemoryStore(memory)                                               # doctest: +SKIP
        >>> store.put(("u1",), "colour", {"text": "Ada's favourite colour is teal."})   # doctest: +SKIP
        >>> store.search(("u1",), query="favourite colour")[0].key                      # doctest: +SKIP
        'colour'
        >>> agent = create_agent(model=ChatMACMemory(memory=memory, namespace="u1"), tools=[],
        ...                      store=store)                                            # doctest: +SKIP
    """

    supports_ttl = False

    def __init__(self, memory: MACMemory, *, text_fields: Sequence[str] = ("text", "content")) -> None:
        if not isinstance(memory, MACMemory):
            raise InputTypeError(f"memory must be a MACMemory, got {type(memory).__name__}.")
        if isinstance(text_fields, str) or not all(isinstance(f, str) and f for f in text_fields):
            raise InvalidInputError(f"text_fields={text_fields!r} must be a list of field names.")
        self.memory = memory
        self.text_fields = tuple(text_fields)

    def __repr__(self) -> str:
        return f"MACMemoryStore({self.memory!r})"

    # ------------------------------------------------------------------ the two abstract methods
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` in order; consecutive puts are written together (the last put of a key wins)."""
        ops = list(ops)
        for op in ops:
            _check_op(op)
        results: list[Result] = [None] * len(ops)
        i = 0
        while i < len(ops):
            op = ops[i]
            if isinstance(op, PutOp):
                j = i
                while j < len(ops) and isinstance(ops[j], PutOp):
                    j += 1
                self._put(ops[i:j])  # type: ignore[arg-type]
                i = j
                continue
            if isinstance(op, GetOp):
                results[i] = self._get(op)
            elif isinstance(op, SearchOp):
                results[i] = self._search(op)
            else:
                results[i] = self._list_namespaces(op)
            i += 1
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`batch` in a worker thread (the memory's reads and writes block)."""
        return await asyncio.to_thread(self.batch, list(ops))

    # ------------------------------------------------------------------ namespaces
    @staticmethod
    def mac_namespace(namespace: tuple[str, ...]) -> str:
        """The MAC namespace of ``namespace``: give it to ``ChatMACMemory(namespace=...)`` to answer from it."""
        return to_mac_namespace(namespace)

    # ------------------------------------------------------------------ writes
    def _put(self, ops: Sequence[PutOp]) -> None:
        latest: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:
            latest.pop((op.namespace, op.key), None)
            latest[(op.namespace, op.key)] = op
        by_namespace: dict[str, list[PutOp]] = {}
        for op in latest.values():
            by_namespace.setdefault(to_mac_namespace(op.namespace), []).append(op)
        for ns, group in by_namespace.items():
            deleted = [op.key for op in group if op.value is None]
            if deleted:
                self.memory.delete(deleted, namespace=ns)
            written = [op for op in group if op.value is not None]
            if not written:
                continue
            keys = [op.key for op in written]
            # An update keeps the item's creation time; a new item's is its ingestion time (read back).
            created: dict[str, float] = {}
            for hit in self.memory.get(keys, namespace=ns):
                stamp = hit.metadata.get(CREATED_KEY)
                stamp = float(stamp) if isinstance(stamp, (int, float)) else hit.ingested_at
                created[hit.parent_id] = min(created.get(hit.parent_id, math.inf), stamp)
            texts, metadatas = [], []
            for op in written:
                value = op.value
                if not isinstance(value, Mapping):
                    raise InputTypeError(
                        f"The value of key {op.key!r} must be a dict, got {type(value).__name__}."
                    )
                texts.append(self._text(op.key, value, op.index))
                metadatas.append(_metadata(op.key, value, created.get(op.key)))
            self.memory.add_texts(texts, metadatas, keys, namespace=ns)

    def _text(self, key: str, value: Mapping[str, Any], index: Any) -> str:
        """What is amortized for ``value``: the ``index`` fields, a text field, or the value as JSON."""
        if isinstance(index, list):
            parts = [_as_text(found) for path in index for found in _at_path(value, path)]
            text = "\n".join(p for p in parts if p.strip())
            if text:
                return text
        for name in self.text_fields:
            field = value.get(name)
            if isinstance(field, str) and field.strip():
                return field
        return _to_json(key, value)

    # ------------------------------------------------------------------ reads
    def _get(self, op: GetOp) -> Item | None:
        ns = to_mac_namespace(op.namespace)
        hits = [h for h in self.memory.get([op.key], namespace=ns) if op.key in (h.parent_id, h.id)]
        return _item(op.namespace, op.key, hits) if hits else None

    def _items(self, ns: str, keys: Sequence[str], scores: Mapping[str, float] | None = None) -> list[Item]:
        """The items named by ``keys`` (document ids) in MAC namespace ``ns``, in ``keys`` order."""
        groups: dict[str, list[Hit]] = {}
        for hit in self.memory.get(list(keys), namespace=ns):
            groups.setdefault(hit.parent_id, []).append(hit)
        namespace = from_mac_namespace(ns)
        return [
            _item(namespace, key, groups[key], None if scores is None else scores[key])
            for key in keys
            if key in groups
        ]

    def _search(self, op: SearchOp) -> list[SearchItem]:
        if not isinstance(op.limit, int) or not isinstance(op.offset, int) or op.limit < 0 or op.offset < 0:
            raise InvalidInputError(
                f"limit={op.limit!r} and offset={op.offset!r} must be non-negative integers."
            )
        if op.filter is not None and not isinstance(op.filter, Mapping):
            raise InvalidInputError(f"filter must be a dict, got {type(op.filter).__name__}.")
        prefix = op.namespace_prefix
        names = [n for n in mac_namespaces(self.memory) if from_mac_namespace(n)[: len(prefix)] == prefix]
        need = op.offset + op.limit
        found: list[Item] = []
        for ns in names:
            if op.query is not None:
                # With a filter every record is ranked, so the filter cannot starve the page.
                scores = self._ranked_keys(ns, op.query, None if op.filter else need)
                found += self._items(ns, list(scores), scores)
            else:
                keys = list(dict.fromkeys(h.parent_id for h in self._all_hits(ns)))
                found += self._items(ns, keys)
        if op.filter:
            found = [item for item in found if _matches(item.value, op.filter)]
        if op.query is not None:
            found.sort(key=lambda item: -(item.score or 0.0))  # type: ignore[attr-defined]
        else:
            found.sort(key=lambda item: (-item.updated_at.timestamp(), item.namespace, item.key))
        return [_search_item(item) for item in found[op.offset : need]]

    def _ranked_keys(self, ns: str, query: str, need: int | None) -> dict[str, float]:
        """Document ids of ``ns`` by their best chunk's similarity to ``query``; ``need`` of them at least."""
        total = self.memory.count(ns)
        k = total if need is None else min(max(need, 1), total)
        while True:
            best: dict[str, float] = {}
            hits = self.memory.retrieve(query, k, namespace=ns) if k else []
            for hit in hits:
                best[hit.parent_id] = max(best.get(hit.parent_id, -math.inf), hit.score)
            if need is None or len(best) >= need or k >= total:
                return best
            k = min(2 * k, total)  # chunks of one document took several places; fetch more

    def _all_hits(self, ns: str) -> list[Hit]:
        ids = record_ids(self.memory, ns)
        return self.memory.get(ids, namespace=ns) if ids else []

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        found = [from_mac_namespace(n) for n in mac_namespaces(self.memory)]
        if op.match_conditions:
            found = [ns for ns in found if all(_namespace_matches(c, ns) for c in op.match_conditions)]
        if op.max_depth is not None:
            found = [ns[: op.max_depth] for ns in found]
        return sorted(set(found))[op.offset : op.offset + op.limit]


# ----------------------------------------------------------------------------- helpers


def _check_op(op: Any) -> None:
    if isinstance(op, (GetOp, PutOp)):
        _check_labels(op.namespace)
        if not isinstance(op.key, str):
            raise InputTypeError(f"Keys must be strings, got {type(op.key).__name__}.")
        if isinstance(op, PutOp) and op.ttl is not None:
            raise NotImplementedError("MACMemoryStore does not support TTLs; put with ttl=None.")
    elif isinstance(op, SearchOp):
        _check_labels(op.namespace_prefix)
    elif isinstance(op, ListNamespacesOp):
        for condition in op.match_conditions or ():
            if condition.match_type not in ("prefix", "suffix"):
                raise InvalidInputError(f"match_type={condition.match_type!r} must be 'prefix' or 'suffix'.")
            _check_labels(tuple(label for label in condition.path if label != "*"))
    else:
        raise InputTypeError(
            f"Unknown store operation {type(op).__name__}; expected GetOp, PutOp, SearchOp "
            "or ListNamespacesOp."
        )


def _to_json(key: str, value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputTypeError(f"The value of key {key!r} is not JSON-serializable: {exc}") from exc


def _as_text(value: Any) -> str:
    return (
        value
        if isinstance(value, str)
        else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    )


def _at_path(value: Any, path: str) -> list[Any]:
    """The value at a dotted field path (``"a.b"``); ``[]`` when a step is missing."""
    if not isinstance(path, str) or not path or "[" in path:
        raise InvalidInputError(
            f"index path {path!r} is not supported: use field names or dotted paths (e.g. 'memory.text')."
        )
    current = value
    for step in path.split("."):
        if not isinstance(current, Mapping) or step not in current:
            return []
        current = current[step]
    return [current]


def _metadata(key: str, value: Mapping[str, Any], created: float | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        name: field
        for name, field in value.items()
        if isinstance(name, str)
        and _FLAT_KEY.match(name)
        and not name.startswith(_RESERVED)
        and isinstance(field, (str, int, float, bool))
        and not (isinstance(field, float) and not math.isfinite(field))
    }
    metadata[VALUE_KEY] = _to_json(key, value)
    if created is not None:
        metadata[CREATED_KEY] = created
    return metadata


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(float(seconds), tz=timezone.utc)


def _item(namespace: tuple[str, ...], key: str, hits: Sequence[Hit], score: float | None = None) -> Item:
    """One item from the records (chunks) of one document."""
    hits = sorted(hits, key=lambda h: h.chunk_index)
    metadata = hits[0].metadata
    value: Any = None
    if isinstance(metadata.get(VALUE_KEY), str):
        try:
            value = json.loads(metadata[VALUE_KEY])
        except ValueError:
            logger.warning("Item %r in %r holds malformed JSON; showing its text instead.", key, namespace)
    if not isinstance(value, dict):
        # Written by other means: the text (chunks joined; they may overlap) and the record's metadata.
        own = {name: field for name, field in metadata.items() if not name.startswith(_RESERVED)}
        value = {**own, "text": "\n".join(h.text for h in hits)}
    updated = max(h.ingested_at for h in hits)
    created = metadata.get(CREATED_KEY)
    created = float(created) if isinstance(created, (int, float)) else min(h.ingested_at for h in hits)
    if score is None:
        return Item(
            value=value,
            key=key,
            namespace=namespace,
            created_at=_timestamp(created),
            updated_at=_timestamp(updated),
        )
    return SearchItem(namespace, key, value, _timestamp(created), _timestamp(updated), score)


def _search_item(item: Item) -> SearchItem:
    if isinstance(item, SearchItem):
        return item
    return SearchItem(item.namespace, item.key, item.value, item.created_at, item.updated_at, None)


def _namespace_matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    window = (
        namespace[: len(path)]
        if condition.match_type == "prefix"
        else namespace[len(namespace) - len(path) :]
    )
    return all(want in ("*", have) for want, have in zip(path, window))


_OPERATORS = {
    "$eq": lambda have, want: have == want,
    "$ne": lambda have, want: have != want,
    "$gt": lambda have, want: have > want,
    "$gte": lambda have, want: have >= want,
    "$lt": lambda have, want: have < want,
    "$lte": lambda have, want: have <= want,
}


def _matches(value: Any, condition: Any) -> bool:
    """LangGraph filter semantics: operators, nested dicts, lists element-wise, else equality."""
    if isinstance(condition, Mapping):
        operators = [name for name in condition if isinstance(name, str) and name.startswith("$")]
        if operators:
            if len(operators) != len(condition):
                raise InvalidInputError(f"filter {dict(condition)!r} mixes operators and field names.")
            return all(_apply(value, name, want) for name, want in condition.items())
        return isinstance(value, Mapping) and all(_matches(value.get(k), v) for k, v in condition.items())
    if isinstance(condition, (list, tuple)):
        return (
            isinstance(value, (list, tuple))
            and len(value) == len(condition)
            and all(_matches(v, c) for v, c in zip(value, condition))
        )
    return bool(value == condition)


def _apply(value: Any, operator: str, want: Any) -> bool:
    if operator not in _OPERATORS:
        raise InvalidInputError(
            f"filter operator {operator!r} is not supported; use one of {sorted(_OPERATORS)}."
        )
    try:
        return bool(_OPERATORS[operator](value, want))
    except TypeError:  # e.g. a missing field (None) compared with a number
        return False
