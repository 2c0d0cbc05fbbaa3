"""Walls between tenants, property-tested: for random namespaces, documents, ids and filters, no retrieve,
get, answer source or delete of one namespace ever sees or touches a record of another.

Namespaces are drawn to be confusable (case, trailing spaces, Unicode normalisation, look-alikes, SQL and
Chroma operator syntax, the default namespace's name), every namespace reuses the same ids, and the
filters try to open the wall (``mac_namespace`` equal to, ``$in`` or ``$ne`` another namespace, inside
``$or``). The namespace clause is always ANDed in Chroma, so the only records a call can reach are its
own namespace's records that the filter matches, which is exactly what is asserted.

Examples: ``$MAC_RELIABILITY_SCALE`` times 25 in the default suite, 300 in the slow suite.
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest
from helpers.reliability import HashEmbedder, scaled, settings, snapshot, tiny_mac
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

CONFUSABLE = [
    "default",
    "A",
    "a",
    "a ",
    " a",
    "a\u00a0",
    "ａ",
    "é",
    "e\u0301",
    "$and",
    "mac_namespace",
    "%",
    "_",
    "*",
    "' OR 1=1 --",
    "user-1",
    "user-10",
    "user_1",
    "ns.with.dots",
    "🙂",
]


def _valid(ns: str) -> bool:
    from mac_memory.errors import InvalidInputError
    from mac_memory.memory.store import check_namespace

    try:
        check_namespace(ns)
    except InvalidInputError:
        return False
    return True


namespaces = st.one_of(st.sampled_from(CONFUSABLE), st.text(min_size=1, max_size=12).filter(_valid))
TEXTS = [
    "Velmora lives in Ostravel.",
    "Kado Fen plays the violin.",
    "The bridge opened in 1904.",
    "Lamp seven is red.",
    "Paris is in France.",
]


def filters(others: list[str], ids: list[str]) -> st.SearchStrategy[dict[str, Any] | None]:
    """Filters a tenant might pass, including ones that name other namespaces."""
    attempts: list[dict[str, Any] | None] = [None, {"tag": "t0"}, {"tag": {"$in": ["t0", "t1"]}}]
    for other in others:
        attempts += [
            {"mac_namespace": other},
            {"mac_namespace": {"$in": [other]}},
            {"mac_namespace": {"$ne": other}},
            {"$or": [{"mac_namespace": other}, {"tag": "t1"}]},
            {"$or": [{"mac_namespace": {"$ne": "zzz"}}, {"tag": {"$in": ["t0", "t1", "t2"]}}]},
        ]
    if ids:
        attempts.append({"mac_id": {"$in": ids}})
    return st.sampled_from(attempts)


COUNTS: Counter[str] = Counter()


@pytest.fixture(scope="module")
def env(tiny_path):
    import chromadb

    yield {"mac": tiny_mac(str(tiny_path("llama"))), "client": chromadb.EphemeralClient(settings=settings())}
    print(f"tenant walls: {dict(sorted(COUNTS.items()))}")


def _check_walls(env: dict[str, Any], data: Any) -> None:
    from mac_memory.memory import MACMemory

    tenants = data.draw(st.lists(namespaces, min_size=2, max_size=4, unique=True), label="namespaces")
    COUNTS["examples"] += 1
    collection = f"w_{uuid.uuid4().hex[:12]}"
    memory = MACMemory(
        client=env["client"],
        collection=collection,
        model=env["mac"],
        embedder=HashEmbedder(),
        chunk_unit="char",
        chunk_size=20,
        chunk_overlap=4,
        show_progress=False,
    )
    try:
        ids = ["doc", "doc#0", "x/y", "shared"]
        for i, ns in enumerate(tenants):
            n = data.draw(st.integers(1, 4), label=f"docs in {ns!r}")
            memory.add_texts(
                TEXTS[:n],
                [{"tag": f"t{(i + j) % 3}", "tenant": ns} for j in range(n)],
                ids=ids[:n],
                namespace=ns,
            )
        for _ in range(data.draw(st.integers(1, 4), label="calls")):
            ns = data.draw(st.sampled_from(tenants), label="namespace")
            where = data.draw(filters([t for t in tenants if t != ns], ids), label="where")
            own = snapshot(memory, ns)
            others = {t: snapshot(memory, t) for t in tenants if t != ns}
            own_ids = {md["mac_id"] for _, md, _ in own.values()}
            kind = data.draw(st.sampled_from(["retrieve", "answer", "get", "delete_where", "delete_ids"]))
            COUNTS[kind] += 1
            COUNTS["with a filter naming another namespace"] += "mac_namespace" in str(where)
            if kind == "retrieve":
                hits = memory.retrieve("Where does Velmora live?", k=50, namespace=ns, where=where)
                assert {h.namespace for h in hits} <= {ns} and {h.id for h in hits} <= own_ids
                assert all(h.metadata["tenant"] == ns for h in hits)
                if where is None:
                    assert {h.id for h in hits} == own_ids  # the wall does not hide own records either
            elif kind == "answer":
                answer = memory.answer(
                    "Where does Velmora live?", k=50, namespace=ns, where=where, max_new_tokens=1
                )
                assert {s.namespace for s in answer.sources} <= {ns}
                assert {s.id for s in answer.sources} <= own_ids
            elif kind == "get":
                hits = memory.get(data.draw(st.lists(st.sampled_from(ids), max_size=4)), namespace=ns)
                assert {h.namespace for h in hits} <= {ns} and {h.id for h in hits} <= own_ids
            else:
                chosen = (
                    data.draw(st.lists(st.sampled_from(ids), max_size=3)) if kind == "delete_ids" else None
                )
                if chosen is None and where is None:
                    where = {"tag": "t0"}
                deleted = memory.delete(chosen, where=where, namespace=ns)
                left = snapshot(memory, ns)
                assert set(left) <= set(own) and len(own) - len(left) == deleted
                assert all(left[c] == own[c] for c in left)
            for t, before in others.items():
                assert snapshot(memory, t) == before, f"a call in {ns!r} changed namespace {t!r}"
    finally:
        env["client"].delete_collection(collection)


_SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


@hsettings(max_examples=scaled(25), **_SETTINGS)
@given(data=st.data())
def test_no_call_crosses_a_namespace_wall(env, data):
    _check_walls(env, data)


@pytest.mark.slow
@hsettings(max_examples=scaled(300), **_SETTINGS)
@given(data=st.data())
def test_no_call_crosses_a_namespace_wall_many_examples(env, data):
    _check_walls(env, data)
