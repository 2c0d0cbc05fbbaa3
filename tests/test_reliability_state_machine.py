"""Model-based test of the memory's storage semantics: random call sequences against a plain-Python model.

Hypothesis draws sequences of add (named ids, content ids, re-adds that change chunking, ids that collide
with another document's chunk ids), delete by id / by filter / by both / by namespace, answers, and
reopening the memory; after every step the memory must hold exactly the records the model says (text,
user metadata, parent, chunk index), every record must be whole (text, embedding, decodable modulation
from these networks), every record of a namespace must be retrievable there and nothing else, and
every answer's sources must be records of its namespace.

The embedder is :class:`~helpers.reliability.HashEmbedder` and the networks are the untrained tiny ones:
the property under test is what is stored, not what it means. Chunking is by characters (40 per chunk)
so that short generated texts already span several records.

Sequences: ``$MAC_RELIABILITY_SCALE`` times 20 in the default suite, 1,000 in the slow suite.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers.reliability import HashEmbedder, record_problems, scaled, settings, tiny_mac
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mac_memory.errors import DuplicateIdError
from mac_memory.memory.chunking import Chunker

CHUNK = 40
NAMESPACES = ("alpha", "beta", "gamma é")
IDS = ("a", "b", "c", "a#0", "a#1", "b#0", "x/y")
WORDS = "red blue green amber slate river stone cloud lamp violin bridge harbor".split()
TAGS = ("red", "blue", "green")

texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=22).map(" ".join)
metadatas = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"tag": st.sampled_from(TAGS)},
        optional={"n": st.integers(0, 3), "flag": st.booleans(), "drop": st.none()},
    ),
)
wheres = st.sampled_from(
    [
        {"tag": "red"},
        {"tag": {"$in": ["blue", "green"]}},
        {"n": {"$gte": 2}},
        {"flag": True},
        {"$or": [{"tag": "red"}, {"n": 0}]},
        {"$and": [{"tag": "blue"}, {"n": {"$lte": 1}}]},
    ]
)


def matches(md: dict[str, Any], where: dict[str, Any]) -> bool:
    """Chroma's semantics for the filters above, in Python (a missing key never matches)."""
    ((key, cond),) = where.items()
    if key == "$or":
        return any(matches(md, c) for c in cond)
    if key == "$and":
        return all(matches(md, c) for c in cond)
    if key not in md:
        return False
    value = md[key]
    if not isinstance(cond, dict):
        return value == cond
    ((op, arg),) = cond.items()
    return {"$in": lambda: value in arg, "$gte": lambda: value >= arg, "$lte": lambda: value <= arg}[op]()


@dataclass
class Rec:
    """A record the memory must hold: its document (parent), chunk index and count, text, user metadata."""

    parent: str
    chunk: int
    num_chunks: int
    text: str
    md: dict[str, Any] = field(default_factory=dict)


class Env:
    """What every machine shares: the networks, one Chroma client, the chunker the model uses."""

    mac: Any = None
    client: Any = None
    chunker = Chunker(CHUNK, CHUNK // 5, unit="char")
    steps = 0
    sequences = 0


class MemoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        Env.sequences += 1
        self.collection = f"sm_{uuid.uuid4().hex[:12]}"
        self.memory = self._open()
        self.opened_at = Env.steps
        self.model: dict[tuple[str, str], Rec] = {}  # (namespace, record id) -> record
        self.content_ids: dict[tuple[str, str], str] = {}  # (namespace, text) -> id the memory gave it

    def _open(self) -> Any:
        from mac_memory.memory import MACMemory

        return MACMemory(
            client=Env.client,
            collection=self.collection,
            model=Env.mac,
            embedder=HashEmbedder(),
            chunk_unit="char",
            chunk_size=CHUNK,
            chunk_overlap=CHUNK // 5,
            show_progress=False,
        )

    def teardown(self) -> None:
        Env.client.delete_collection(self.collection)

    # ------------------------------------------------------------------ the model's add
    def _plan(
        self, ns: str, docs: list[tuple[str, str, dict[str, Any]]]
    ) -> dict[tuple[str, str], Rec] | None:
        """The records ``add_texts`` must write, or None when it must refuse (DuplicateIdError)."""
        new: dict[tuple[str, str], Rec] = {}
        parents = {doc_id for doc_id, _, _ in docs}
        for doc_id, text, md in docs:
            chunks = Env.chunker.split(text)
            for c in chunks:
                rid = doc_id if len(chunks) == 1 else f"{doc_id}#{c.index}"
                if (ns, rid) in new:
                    return None  # two documents of the call would write the same record
                clean = {k: v for k, v in (md or {}).items() if v is not None}
                new[(ns, rid)] = Rec(doc_id, c.index, len(chunks), c.text, clean)
        for key, rec in new.items():
            old = self.model.get(key)
            if old is not None and old.parent != rec.parent and old.parent not in parents:
                return None  # the id already holds a chunk of another document
        return new

    def _apply(self, ns: str, new: dict[tuple[str, str], Rec]) -> None:
        parents = {r.parent for r in new.values()}
        for key in [k for k, r in self.model.items() if k[0] == ns and r.parent in parents]:
            del self.model[key]
        self.model.update(new)

    # ------------------------------------------------------------------ rules
    @rule(
        ns=st.sampled_from(NAMESPACES),
        docs=st.lists(st.tuples(st.sampled_from(IDS), texts, metadatas), min_size=1, max_size=3),
    )
    def add_named(self, ns: str, docs: list[tuple[str, str, Any]]) -> None:
        ids = [d[0] for d in docs]
        new = None if len(set(ids)) < len(ids) else self._plan(ns, docs)
        before = self._records()
        if new is None:
            with pytest.raises(DuplicateIdError):
                self.memory.add_texts([d[1] for d in docs], [d[2] for d in docs], ids, namespace=ns)
            assert self._records() == before, "a refused add changed the store"
            return
        assert self.memory.add_texts([d[1] for d in docs], [d[2] for d in docs], ids, namespace=ns) == ids
        self._apply(ns, new)

    @rule(ns=st.sampled_from(NAMESPACES), batch=st.lists(st.tuples(texts, metadatas), min_size=1, max_size=3))
    def add_by_content(self, ns: str, batch: list[tuple[str, Any]]) -> None:
        got = self.memory.add_texts([t for t, _ in batch], [m for _, m in batch], namespace=ns)
        for (text, _), doc_id in zip(batch, got, strict=True):
            assert self.content_ids.setdefault((ns, text), doc_id) == doc_id, "content id is not stable"
            assert doc_id not in IDS and "#" not in doc_id
        assert len({t for t, _ in batch}) == len(set(got)), "different texts got the same id"
        docs = list({doc_id: (doc_id, t, m) for (t, m), doc_id in zip(batch, got, strict=True)}.values())
        new = self._plan(ns, docs)
        assert new is not None
        self._apply(ns, new)

    def _known_ids(self) -> list[str]:
        return sorted(set(IDS) | {i for (_, _), i in self.content_ids.items()})

    @rule(ns=st.sampled_from(NAMESPACES), data=st.data(), with_where=st.booleans(), where=wheres)
    def delete_by_ids(self, ns: str, data: Any, with_where: bool, where: dict[str, Any]) -> None:
        ids = data.draw(st.lists(st.sampled_from(self._known_ids()), max_size=3, unique=True))
        targets = {
            k
            for k, r in self.model.items()
            if k[0] == ns and (k[1] in ids or r.parent in ids) and (not with_where or matches(r.md, where))
        }
        n = self.memory.delete(ids, where=where if with_where else None, namespace=ns)
        assert n == len(targets), (n, sorted(targets))
        for key in targets:
            del self.model[key]

    @rule(ns=st.sampled_from(NAMESPACES), where=wheres)
    def delete_by_filter(self, ns: str, where: dict[str, Any]) -> None:
        targets = {k for k, r in self.model.items() if k[0] == ns and matches(r.md, where)}
        assert self.memory.delete(where=where, namespace=ns) == len(targets)
        for key in targets:
            del self.model[key]

    @rule(ns=st.sampled_from(NAMESPACES))
    def delete_namespace(self, ns: str) -> None:
        targets = [k for k in self.model if k[0] == ns]
        assert self.memory.delete(namespace=ns) == len(targets)
        for key in targets:
            del self.model[key]

    @precondition(lambda self: Env.steps - self.opened_at >= 3)  # not twice in a row: opening costs
    @rule()
    def reopen(self) -> None:
        """A new MACMemory on the same collection, as after a restart (same client: same data)."""
        self.memory = self._open()
        self.opened_at = Env.steps

    @precondition(lambda self: bool(self.model))
    @rule(ns=st.sampled_from(NAMESPACES), k=st.integers(1, 6), use_where=st.booleans(), where=wheres)
    def answer(self, ns: str, k: int, use_where: bool, where: dict[str, Any]) -> None:
        expected = {
            rid for (n, rid), r in self.model.items() if n == ns and (not use_where or matches(r.md, where))
        }
        answer = self.memory.answer(
            "which lamp is red?", k=k, namespace=ns, where=where if use_where else None, max_new_tokens=1
        )
        got = [s.id for s in answer.sources]
        assert set(got) <= expected and len(got) == len(set(got)) == min(k, len(expected)), (got, expected)
        assert all(s.namespace == ns for s in answer.sources)

    # ------------------------------------------------------------------ checked after every step
    def _records(self, got: dict[str, Any] | None = None) -> dict[tuple[str, str], Rec]:
        got = got or self.memory.store.collection.get(include=["metadatas", "documents"])
        out = {}
        for cid, doc, md in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
            ns, rid = md["mac_namespace"], md["mac_id"]
            assert cid == f"{ns}/{rid}"
            user = {k: v for k, v in md.items() if not k.startswith("mac_")}
            out[(ns, rid)] = Rec(md["mac_parent"], md["mac_chunk"], md["mac_num_chunks"], doc, user)
        return out

    @invariant()
    def stored_exactly_what_the_model_says_and_every_record_is_whole(self) -> None:
        Env.steps += 1
        got = self.memory.store.collection.get(include=["metadatas", "documents", "embeddings"])
        assert self._records(got) == self.model
        assert record_problems(self.memory, HashEmbedder(), got=got) == []
        assert self.memory.count() == len(self.model)
        ns = NAMESPACES[Env.steps % len(NAMESPACES)]
        assert self.memory.count(ns) == sum(k[0] == ns for k in self.model)

    @invariant()
    def every_record_is_retrievable_in_its_namespace_only(self) -> None:
        for ns in NAMESPACES:
            expected = {rid for (n, rid) in self.model if n == ns}
            hits = self.memory.retrieve("lamp", k=max(1, len(expected)) + 2, namespace=ns)
            assert {h.id for h in hits} == expected and len(hits) == len(expected), ns
            assert all(h.namespace == ns for h in hits)

    @invariant()
    def a_document_reads_back_in_chunk_order(self) -> None:
        parents: dict[tuple[str, str], list[Rec]] = {}
        for (ns, _), r in self.model.items():
            parents.setdefault((ns, r.parent), []).append(r)
        if parents:
            (ns, parent), recs = sorted(parents.items())[Env.steps % len(parents)]
            hits = [h for h in self.memory.get([parent], namespace=ns) if h.parent_id == parent]
            assert [h.text for h in hits] == [r.text for r in sorted(recs, key=lambda r: r.chunk)]


def _run(tiny_path: Any, sequences: int, steps: int) -> None:
    import chromadb

    Env.mac = tiny_mac(str(tiny_path("llama")))
    Env.client = chromadb.EphemeralClient(settings=settings())
    Env.steps = Env.sequences = 0
    run_state_machine_as_test(
        MemoryMachine,
        settings=hsettings(
            max_examples=sequences,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
        ),
    )
    print(f"state machine: {Env.sequences} sequences, {Env.steps} checked steps")


def test_storage_semantics_match_the_model(tiny_path):
    _run(tiny_path, sequences=scaled(20), steps=10)


@pytest.mark.slow
def test_storage_semantics_match_the_model_many_sequences(tiny_path):
    _run(tiny_path, sequences=scaled(1000), steps=12)


def test_a_record_the_vector_index_misses_is_still_retrieved(tiny_path, monkeypatch):
    """Chroma's HNSW search is approximate even inside a tiny filtered set: the slow run of the state
    machine once saw a namespace of 3 records answered with 2 (after deletes and re-adds; not
    reproducible, HNSW graph construction is multi-threaded). When Chroma returns fewer rows than asked
    while more records match, the memory ranks the matching records exactly. Simulated here by
    dropping a row from Chroma's answer."""
    import chromadb

    from mac_memory.memory import MACMemory

    memory = MACMemory(
        client=chromadb.EphemeralClient(settings=settings()),
        collection=f"miss_{uuid.uuid4().hex[:8]}",
        model=tiny_mac(str(tiny_path("llama"))),
        embedder=HashEmbedder(),
        show_progress=False,
    )
    memory.add_texts(["red lamp", "blue lamp", "green lamp"], ids=["a", "b", "c"], namespace="alpha")
    memory.add_texts(["red lamp"], ids=["a"], namespace="beta")
    full = memory.retrieve("lamp", k=5, namespace="alpha")
    real = memory.store.query

    def lossy(*args: Any, **kwargs: Any) -> Any:
        return [row for row in real(*args, **kwargs) if not row[0].endswith("/b")]

    monkeypatch.setattr(memory.store, "query", lossy)
    for k in (3, 5):
        hits = memory.retrieve("lamp", k=k, namespace="alpha")
        assert [(h.id, round(h.score, 5)) for h in hits] == [(h.id, round(h.score, 5)) for h in full][:k]
    assert {s.id for s in memory.answer("lamp", k=5, namespace="alpha", max_new_tokens=1).sources} == {
        "a",
        "b",
        "c",
    }
    assert [h.id for h in memory.retrieve("lamp", k=5, namespace="beta")] == ["a"]  # the wall still holds
