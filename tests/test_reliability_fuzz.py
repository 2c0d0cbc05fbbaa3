"""Bounded fuzzing of the public API and of the document-stream loader with hypothesis.

The property is the same everywhere: a call either succeeds and does what it says, or raises one of the
library's own errors (a :class:`~mac_memory.errors.MACError`; for the loader a ``DataFormatError``) and
changes nothing. Any other exception — a ``UnicodeEncodeError`` from deep inside, a ``TypeError`` from
Chroma, a ``zlib.error`` from a damaged gzip — is a failure: the user could not tell what was wrong.

Examples per test: ``$MAC_RELIABILITY_SCALE`` times 60 (API) / 150 (loader) in the default suite, 10x in
the slow suite. Hand-picked cases live in ``tests/test_reliability_hostile.py``.
"""

from __future__ import annotations

import gzip
import json
import math
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.reliability import HashEmbedder, record_problems, scaled, settings, snapshot, tiny_mac
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from mac_memory.data.stream import QA, Document, load_stream, write_stream
from mac_memory.errors import DataFormatError, MACError

_SETTINGS = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))

# ----------------------------------------------------------------------------- strategies

surrogate = st.characters(categories=["Cs"])
any_text = st.one_of(
    st.text(max_size=40),
    st.text(st.one_of(st.characters(), surrogate), max_size=10),
    st.sampled_from(["", " ", "\n\t", "\x00", "ok", "a#0", "x/y", "mac_id", "$and", "#document"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    any_text,
    st.binary(max_size=4),
    st.integers(-(2**70), 2**70),
    st.sampled_from([np.float32(1.5), np.int64(3), np.bool_(True), np.float64("nan"), np.uint64(2**64 - 1)]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(any_text, inner, max_size=2),
        st.frozensets(st.integers(), max_size=2),
    ),
    max_leaves=4,
)
metadata = st.one_of(
    st.none(),
    st.dictionaries(st.one_of(any_text, st.integers()), values, max_size=3),
    st.integers(),
    any_text,
)
texts_arg = st.one_of(
    st.lists(st.one_of(any_text, st.integers(), st.none(), st.binary(max_size=4)), max_size=4),
    any_text,
    st.none(),
    st.binary(max_size=4),
    st.dictionaries(any_text, any_text, max_size=1),
)
ids_arg = st.one_of(st.none(), st.lists(st.one_of(any_text, st.integers(), st.none()), max_size=4), any_text)
namespace_arg = st.one_of(st.none(), any_text, st.integers(), st.sampled_from(["default", "B"]))


@st.composite
def add_calls(draw: Any) -> tuple[Any, Any, Any, Any]:
    """Arguments of ``add_texts``: a third anything at all, two thirds plausible (right lengths, mostly
    valid text), so that both the refusals and the stored results get exercised."""
    if draw(st.integers(0, 2)) == 0:
        metadatas = st.one_of(st.none(), st.lists(metadata, max_size=4), metadata)
        return draw(texts_arg), draw(metadatas), draw(ids_arg), draw(namespace_arg)
    texts = draw(st.lists(st.one_of(st.text(min_size=1, max_size=60), any_text), min_size=1, max_size=4))
    n = len(texts)
    md = st.one_of(st.none(), st.dictionaries(st.text(max_size=8), values, max_size=3))
    metadatas = draw(st.one_of(st.none(), st.lists(md, min_size=n, max_size=n)))
    ids = draw(st.one_of(st.none(), st.lists(any_text, min_size=n, max_size=n)))
    namespace = draw(st.one_of(st.none(), st.sampled_from(["default", "B", "tenant é"]), any_text))
    return texts, metadatas, ids, namespace


COUNTS: Counter[str] = Counter()
"""Outcomes of the fuzzed calls (printed at the end of the module, for docs/reliability.md)."""


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Any:
    yield
    print(f"fuzz outcomes: {dict(sorted(COUNTS.items()))}")


# ----------------------------------------------------------------------------- the public API


@pytest.fixture(scope="module")
def memory(tiny_path):
    import chromadb

    from mac_memory.memory import MACMemory

    m = MACMemory(
        client=chromadb.EphemeralClient(settings=settings()),
        collection=f"f_{uuid.uuid4().hex[:12]}",
        model=tiny_mac(str(tiny_path("llama"))),
        embedder=HashEmbedder(),
        chunk_unit="char",
        chunk_size=200,
        show_progress=False,
    )
    m.add_texts(["Velmora lives in Ostravel.", "Kado Fen plays the violin."], ids=["a", "b"])
    m.add_texts(["Other tenant."], ids=["a"], namespace="B")
    return m


def _expect_refusal_or_success(memory: Any, call: Any) -> Any:
    """Run ``call``; a MACError must leave the store as it was; any other exception fails the test."""
    before = snapshot(memory)
    try:
        result = call()
    except MACError as exc:
        COUNTS[f"refused ({type(exc).__name__})"] += 1
        assert snapshot(memory) == before, "a refused call changed the store"
        return None
    COUNTS["accepted"] += 1
    return result


def _fuzz_add(memory: Any, texts: Any, metadatas: Any, ids: Any, namespace: Any) -> None:
    got = _expect_refusal_or_success(
        memory, lambda: memory.add_texts(texts, metadatas, ids, namespace=namespace)
    )
    if got is None:
        return
    ns = namespace if namespace is not None else "default"
    assert len(got) == len(texts)
    for doc_id, text in zip(got, texts, strict=True):
        hits = [h for h in memory.get([doc_id], namespace=ns) if h.parent_id == doc_id]
        assert hits and all(h.namespace == ns for h in hits)
        assert [h.text for h in hits] == [text.strip()]  # chunks of 200 characters: one record each
        for h in hits:
            for key, value in h.metadata.items():  # only Chroma-native, finite values are stored
                assert isinstance(key, str) and not key.startswith(("mac_", "$", "#"))
                assert isinstance(value, (str, int, float, bool, list)), (key, value)
                assert not isinstance(value, float) or math.isfinite(value)
    assert record_problems(memory, HashEmbedder()) == []


@hsettings(max_examples=scaled(60), **_SETTINGS)
@given(call=add_calls())
def test_add_texts_refuses_or_stores_faithfully(memory, call):
    _fuzz_add(memory, *call)


@pytest.mark.slow
@hsettings(max_examples=scaled(600), **_SETTINGS)
@given(call=add_calls())
def test_add_texts_refuses_or_stores_faithfully_many(memory, call):
    _fuzz_add(memory, *call)


where_arg = st.one_of(
    st.none(),
    metadata,
    st.sampled_from(
        [
            {"$and": []},
            {"$or": [{"a": 1}]},
            {"a": {"$bogus": 1}},
            {"a": {"$in": []}},
            {"a": [1, 2]},
            {"$and": [{"a": 1}, {"b": {"$gte": "x"}}]},
            {"mac_namespace": "B"},
        ]
    ),
)


def _fuzz_reads(memory: Any, kind: str, query: Any, k: Any, where: Any, ids: Any, namespace: Any) -> None:
    calls = {
        "retrieve": lambda: memory.retrieve(query, k, namespace=namespace, where=where),
        "answer": lambda: memory.answer(query, k, namespace=namespace, where=where, max_new_tokens=1),
        "get": lambda: memory.get(ids, namespace=namespace),
        "delete": lambda: memory.delete(ids, where=where, namespace=namespace),
        "count": lambda: memory.count(namespace),
        "chat": lambda: memory.chat(
            [{"role": "user", "content": query}], k, namespace=namespace, max_new_tokens=1
        ),
    }
    before = snapshot(memory)
    result = _expect_refusal_or_success(memory, calls[kind])
    if result is None or kind == "count":
        return
    ns = namespace if namespace is not None else "default"
    if kind == "delete":
        after = snapshot(memory)
        assert set(after) <= set(before) and all(c.startswith(f"{ns}/") for c in set(before) - set(after))
        assert len(before) - len(after) == result
        if result:  # put the fixture's records back for the next example
            memory.add_texts(["Velmora lives in Ostravel.", "Kado Fen plays the violin."], ids=["a", "b"])
            memory.add_texts(["Other tenant."], ids=["a"], namespace="B")
        return
    items = result.sources if kind in ("answer", "chat") else result
    assert all(x.namespace == ns for x in items)
    assert snapshot(memory) == before  # reads never write


@hsettings(max_examples=scaled(60), **_SETTINGS)
@given(
    kind=st.sampled_from(["retrieve", "answer", "get", "delete", "count", "chat"]),
    query=st.one_of(any_text, st.integers(), st.none(), st.binary(max_size=3)),
    k=st.one_of(st.integers(-2, 60), st.floats(), st.booleans(), st.none()),
    where=where_arg,
    ids=ids_arg,
    namespace=namespace_arg,
)
def test_reads_and_deletes_refuse_or_stay_in_their_namespace(memory, kind, query, k, where, ids, namespace):
    _fuzz_reads(memory, kind, query, k, where, ids, namespace)


@pytest.mark.slow
@hsettings(max_examples=scaled(600), **_SETTINGS)
@given(
    kind=st.sampled_from(["retrieve", "answer", "get", "delete", "count", "chat"]),
    query=st.one_of(any_text, st.integers(), st.none(), st.binary(max_size=3)),
    k=st.one_of(st.integers(-2, 60), st.floats(), st.booleans(), st.none()),
    where=where_arg,
    ids=ids_arg,
    namespace=namespace_arg,
)
def test_reads_and_deletes_refuse_or_stay_in_their_namespace_many(
    memory, kind, query, k, where, ids, namespace
):
    _fuzz_reads(memory, kind, query, k, where, ids, namespace)


# ----------------------------------------------------------------------------- the stream loader


def _valid_line(i: int) -> bytes:
    return json.dumps(
        {
            "doc_id": f"d{i}",
            "title": "t",
            "context": f"context {i} " * 5,
            "qas": [{"qid": f"q{i}", "question": "Where?", "answers": ["here"]}],
        }
    ).encode()


GOOD = b"\n".join(_valid_line(i) for i in range(6)) + b"\n"
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(st.one_of(st.characters(), surrogate))
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)
plain = st.text(st.characters(exclude_categories=["Cs", "Cc", "Z"]), min_size=1, max_size=8)
"""Non-empty text without whitespace or control characters: a field the format accepts."""
json_plain = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), plain
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(plain, inner, max_size=3)),
    max_leaves=6,
)
"""JSON values that survive a round trip (metadata a well-behaved producer writes)."""
qa_objects = st.fixed_dictionaries(
    {"qid": st.one_of(plain, plain, json_values), "question": st.one_of(plain, plain, any_text, json_values)},
    optional={
        "answers": st.one_of(
            st.lists(plain, min_size=1, max_size=2), st.lists(any_text, max_size=2), json_values
        ),
        "row": json_values,
    },
)
good_qa = st.fixed_dictionaries(
    {"qid": plain, "question": plain, "answers": st.lists(plain, min_size=1, max_size=2)},
    optional={"row": json_plain},
)
good_doc = st.fixed_dictionaries(
    {"doc_id": plain, "context": plain},
    optional={"title": plain, "qas": st.lists(good_qa, max_size=2), "extra": json_plain},
)
line_objects = st.one_of(
    good_doc,
    good_doc,
    json_values,
    st.fixed_dictionaries(  # documents whose every field may be off
        {
            "doc_id": st.one_of(plain, st.text(max_size=6), st.integers()),
            "context": st.one_of(plain, any_text, json_values),
        },
        optional={
            "title": st.one_of(st.text(max_size=6), json_values),
            "qas": st.one_of(st.lists(st.one_of(good_qa, qa_objects), max_size=2), json_values),
            "extra": st.one_of(json_plain, json_values),
        },
    ),
)


def _mutate(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    raw = bytearray(data)
    for pos, byte in edits:
        if raw:
            raw[pos % len(raw)] = byte
    return bytes(raw)


def _load_checked(path: Path) -> None:
    """Loading yields documents or raises DataFormatError; what loads writes back and reloads equal."""
    try:
        docs = load_stream(path)
    except DataFormatError:
        COUNTS["stream refused (DataFormatError)"] += 1
        return
    COUNTS["stream loaded"] += 1
    out = path.with_name("round-trip.jsonl")
    write_stream(out, docs)
    assert load_stream(out) == docs


@st.composite
def stream_files(draw: Any) -> tuple[str, bytes]:
    how = draw(
        st.sampled_from(["lines", "lines", "lines", "mutated", "mutated-gzip", "truncated-gzip", "bytes"])
    )
    if how == "lines":
        objs = draw(st.lists(line_objects, min_size=1, max_size=3))
        raw = b"\n".join(json.dumps(o, allow_nan=True).encode("utf-8", "surrogatepass") for o in objs)
        return "s.jsonl", raw + b"\n"
    if how == "bytes":
        return "s.jsonl", draw(st.binary(max_size=200))
    edits = draw(st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
    if how == "mutated":
        return "s.jsonl", _mutate(GOOD, edits)
    packed = gzip.compress(GOOD, mtime=0)
    if how == "truncated-gzip":
        return "s.jsonl.gz", packed[: draw(st.integers(0, len(packed) - 1))]
    return "s.jsonl.gz", _mutate(packed, [(10 + p, b) for p, b in edits])  # past the gzip header


def _fuzz_stream(tmp_path_factory: Any, file: tuple[str, bytes]) -> None:
    name, raw = file
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(raw)
    _load_checked(path)


@hsettings(max_examples=scaled(150), **_SETTINGS)
@given(file=stream_files())
def test_stream_loader_refuses_or_round_trips(tmp_path_factory, file):
    _fuzz_stream(tmp_path_factory, file)


@pytest.mark.slow
@hsettings(max_examples=scaled(1500), **_SETTINGS)
@given(file=stream_files())
def test_stream_loader_refuses_or_round_trips_many(tmp_path_factory, file):
    _fuzz_stream(tmp_path_factory, file)


good_document = st.builds(
    Document,
    doc_id=plain,
    context=plain,
    qas=st.lists(
        st.builds(QA, qid=plain, question=plain, answers=st.lists(plain, min_size=1).map(tuple)), max_size=2
    ),
    title=st.text(max_size=5),
    metadata=st.dictionaries(st.text(max_size=5), json_plain, max_size=2),
)
documents = st.one_of(
    good_document,
    good_document,
    st.builds(  # every field may be off
        Document,
        doc_id=st.one_of(plain, st.text(max_size=6), st.integers()),
        context=st.one_of(plain, any_text),
        qas=st.lists(
            st.builds(
                QA,
                qid=st.one_of(plain, st.text(max_size=4)),
                question=st.one_of(plain, st.text(max_size=8)),
                answers=st.lists(st.text(max_size=4), max_size=2).map(tuple),
            ),
            max_size=2,
        ),
        title=st.one_of(st.text(max_size=5), st.integers()),
        metadata=st.dictionaries(st.text(max_size=5), st.one_of(json_plain, json_values), max_size=2),
    ),
)


@hsettings(max_examples=scaled(80), **_SETTINGS)
@given(docs=st.lists(documents, max_size=2))
def test_stream_writer_refuses_or_round_trips(tmp_path_factory, docs):
    """``write_stream`` writes only what ``load_stream`` reads back equal; a refusal leaves no file."""
    path = tmp_path_factory.mktemp("w") / "out.jsonl.gz"
    try:
        n = write_stream(path, docs)
    except DataFormatError:
        COUNTS["write refused (DataFormatError)"] += 1
        assert list(path.parent.iterdir()) == []
        return
    COUNTS["write round-tripped"] += 1
    assert n == len(docs) and load_stream(path) == docs
