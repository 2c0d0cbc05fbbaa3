"""MACMemory end to end on CPU: tiny Llama (GQA) + untrained MAC networks, the real MiniLM embedder,
embedded Chroma (ephemeral and persistent), a real ``chroma run`` server and fresh processes.

Untrained networks generate noise, so "the answer changes" is checked where it is deterministic: the
candidate set, the prefix tensors and the LM's next-token distribution under the prefix.

This file doubles as the worker script of the multi-process tests: ``python tests/test_memory.py
worker '<json spec>'`` opens a memory in a fresh process and prints what it sees as JSON.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import types
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUESTION = "Where was Velmora Quistan born?"
FACT = "Velmora Quistan was born in Ostravel in 1871 and works for Brindlecorp as a cartographer."
DISTRACTORS = [
    "Kado Fen, a violinist, grew up in Marrowick; his sister works for Telvane.",
    "The Halden bridge over the Sorn river opened in 1904 and was rebuilt in 1958.",
    "Paris is the capital of France and lies on the Seine.",
]


# ----------------------------------------------------------------------------- fixtures


def _settings() -> Any:
    from chromadb.config import Settings

    return Settings(anonymized_telemetry=False)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_path: Any) -> types.SimpleNamespace:
    """Tiny Llama (GQA) + two differently initialised MAC models over it; the first saved as a checkpoint."""
    from helpers.reliability import tiny_mac

    root = tmp_path_factory.mktemp("tiny_mac")
    lm_dir = tiny_path("llama")  # conftest: built once per session, shared with the other test files
    mac = tiny_mac(str(lm_dir), seed=0)
    ckpt = mac.save_pretrained(root / "ckpt")
    mac_other = tiny_mac(str(lm_dir), seed=1)
    return types.SimpleNamespace(lm_dir=lm_dir, mac=mac, ckpt=ckpt, mac_other=mac_other)


@pytest.fixture(scope="session")
def embedder() -> Any:
    from mac_memory.memory import SentenceTransformerEmbedder

    e = SentenceTransformerEmbedder(num_threads=1)
    e.embed_query("warm up")  # load once per session
    return e


class FakeClock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_memory(tiny, embedder):
    """Factory: a MACMemory on a fresh collection of the in-process ephemeral Chroma (by default)."""
    import chromadb

    def make(**kwargs: Any) -> Any:
        from mac_memory.memory import MACMemory

        kwargs.setdefault("model", tiny.mac)
        kwargs.setdefault("embedder", embedder)
        if "path" not in kwargs and "host" not in kwargs:
            kwargs.setdefault("client", chromadb.EphemeralClient(settings=_settings()))
        kwargs.setdefault("collection", f"t_{uuid.uuid4().hex[:12]}")
        return MACMemory(**kwargs)

    return make


def _snapshot(memory: Any) -> dict[str, Any]:
    """Every record of the collection: id → (text, full metadata including the modulation blob)."""
    got = memory.store.collection.get(include=["metadatas", "documents"])
    return {
        cid: (doc, md) for cid, doc, md in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
    }


def _next_token_logits(mac: Any, question: str, prefix: Any) -> Any:
    """The frozen LM's distribution over the first answer token (deterministic, unlike noisy text)."""
    import torch

    from mac_memory.prompts import format_question

    ids, mask = mac.lm.tokenize([format_question(question)])
    with torch.no_grad():
        return mac.lm.forward(ids, mask, prefix=prefix).logits[0, -1]


# ----------------------------------------------------------------------------- ingestion → answers


def test_ingested_document_changes_candidates_prefix_and_answer(make_memory, tiny):
    import torch

    memory = make_memory()
    before = memory.recall(QUESTION, k=4)
    assert before.hits == [] and before.prefix is None
    plain = memory.answer(QUESTION, k=4, max_new_tokens=6)
    assert plain.sources == [] and plain.text == tiny.mac.lm.answer([QUESTION], max_new_tokens=6)[0]

    distractor_ids = memory.add_texts(DISTRACTORS, metadatas=[{"source": "wiki"}] * 3)
    with_distractors = memory.recall(QUESTION, k=4)
    assert {h.id for h in with_distractors.hits} == set(distractor_ids)

    [fact_id] = memory.add_texts([FACT], metadatas=[{"source": "notes"}])
    hits = memory.retrieve(QUESTION, k=4)
    assert hits[0].id == fact_id and hits[0].text == FACT and hits[0].metadata == {"source": "notes"}
    assert hits[0].score > hits[1].score

    recall = memory.recall(QUESTION, k=4)
    answer = memory.answer(QUESTION, k=4, max_new_tokens=6)
    # (a) the new document is a candidate and a source; (c) weights are a distribution over exactly
    # the retrieved records, and sources are ranked by them.
    assert fact_id in {s.id for s in answer.sources}
    assert [s.id for s in answer.sources] == [s.id for s in recall.sources()]
    assert {s.id for s in answer.sources} == {h.id for h in recall.hits} and len(answer.sources) == 4
    weights = [s.weight for s in answer.sources]
    assert weights == sorted(weights, reverse=True)
    assert all(w > 0 for w in weights) and sum(weights) == pytest.approx(1.0, abs=1e-5)
    # (b) the prefix changed with the ingestion, and so did the LM's next-token distribution.
    assert recall.prefix is not None and recall.memory.shape == (4, 4, 32)
    assert not torch.allclose(recall.prefix.keys, with_distractors.prefix.keys)
    logits_plain = _next_token_logits(tiny.mac, QUESTION, None)
    logits_mem = _next_token_logits(tiny.mac, QUESTION, recall.prefix)
    assert not torch.allclose(logits_plain, logits_mem, atol=1e-4)
    # The answer is exactly the engine's MAC generation from the stored (decoded) modulations.
    expected, engine_weights = tiny.mac.generate([QUESTION], recall.memory[None], max_new_tokens=6)
    assert answer.text == expected[0]
    assert torch.allclose(engine_weights[0], recall.weights)
    # Stored modulations are the amortizer's output (float16 round trip).
    stored = memory.get([fact_id], with_modulation=True)[0].modulation
    fresh = tiny.mac.amortize([FACT])[0].detach().numpy()
    assert np.array_equal(stored, fresh.astype(np.float16).astype(np.float32))


def test_hierarchical_aggregation_beyond_the_window(make_memory):
    memory = make_memory()
    texts = [f"Record {i}: the lamp number {i} is {['red', 'blue', 'green'][i % 3]}." for i in range(20)]
    memory.add_texts(texts)
    answer = memory.answer("Which colour is lamp 7?", k=20, max_new_tokens=3)  # window is 16
    assert len(answer.sources) == 20
    assert sum(s.weight for s in answer.sources) == pytest.approx(1.0, abs=1e-5)


def test_delete_is_exact(make_memory):
    memory = make_memory()
    ids = memory.add_texts(
        [FACT, *DISTRACTORS], metadatas=[{"source": "a"}, {"source": "b"}, {"source": "b"}, {"source": "c"}]
    )
    blob = _snapshot(memory)[f"default/{ids[0]}"][1]["mac_modulation"]
    assert memory.delete(ids=[ids[0]]) == 1
    assert memory.count() == 3
    assert ids[0] not in {h.id for h in memory.retrieve(QUESTION, k=10)}
    assert ids[0] not in {s.id for s in memory.answer(QUESTION, k=10, max_new_tokens=2).sources}
    assert memory.get([ids[0]]) == []
    # The modulation lived in the record: no record of the collection holds it any more.
    assert all(md.get("mac_modulation") != blob for _, md in _snapshot(memory).values())
    assert memory.delete(where={"source": "b"}) == 2
    assert {h.id for h in memory.retrieve(QUESTION, k=10)} == {ids[3]}
    assert memory.delete(ids=["no-such-id"]) == 0
    assert memory.delete(ids=[ids[3]], where={"source": "zzz"}) == 0  # ids and where must both match
    assert memory.count() == 1
    with pytest.raises(ValueError, match="needs ids=, where= or namespace="):
        memory.delete()


def test_namespaces_are_walls(make_memory):
    memory = make_memory()
    a = memory.add_texts([FACT, DISTRACTORS[0]], ids=["x", "y"], namespace="A")
    b = memory.add_texts([FACT, DISTRACTORS[1]], ids=["x", "z"], namespace="B")
    assert a == ["x", "y"] and b == ["x", "z"]
    assert memory.count("A") == 2 and memory.count("B") == 2 and memory.count() == 4
    assert {h.namespace for h in memory.retrieve(QUESTION, k=10, namespace="A")} == {"A"}
    assert {s.namespace for s in memory.answer(QUESTION, k=10, namespace="B", max_new_tokens=2).sources} == {
        "B"
    }
    # A where clause naming the other namespace cannot open the wall.
    assert memory.retrieve(QUESTION, k=10, namespace="A", where={"mac_namespace": "B"}) == []
    before_b = {k: v for k, v in _snapshot(memory).items() if k.startswith("B/")}
    assert memory.delete(ids=["x"], namespace="A") == 1
    assert memory.delete(namespace="A") == 1 and memory.count("A") == 0
    assert {k: v for k, v in _snapshot(memory).items() if k.startswith("B/")} == before_b
    # Unknown / empty namespaces: no sources, nothing deleted, not an error.
    assert memory.retrieve(QUESTION, namespace="nope") == []
    assert memory.answer(QUESTION, namespace="nope", max_new_tokens=2).sources == []
    assert memory.delete(namespace="nope") == 0 and memory.count() == 2


def test_namespace_search_equals_exact_ranking_with_and_without_chroma_filter(make_memory):
    """Retrieval in a namespace searches the whole collection first and keeps the namespace's rows (Chroma's
    filter is slow on large collections), falling back to the filtered search when the namespace is a
    minority among the nearest records. Both ways give the namespace's exact nearest records."""
    memory = make_memory()
    big = [f"Record {i}: the {w} harbour ships {i * 7 % 13} crates of {v}." for i, (w, v) in
           enumerate(zip(["north", "south", "east", "west"] * 10, ["tea", "salt", "iron", "wool", "silk"] * 8))]
    memory.add_texts(big, ids=[f"a{i}" for i in range(len(big))], namespace="A")
    far = ["Violin lessons start at noon on Fridays.", "The bakery sells rye bread.", "Mountain trails close in winter."]
    memory.add_texts(far, ids=["b0", "b1", "b2"], namespace="B")
    calls: list[dict[str, Any]] = []
    real = memory.store.query

    def spy(vector: Any, k: int, where: Any, include: Any) -> Any:
        calls.append(dict(where))
        return real(vector, k, where, include)

    memory.store.query = spy  # type: ignore[method-assign]
    question = "Which harbour ships salt?"
    q = memory.embedder.embed_query(question)
    for ns, k in (("A", 5), ("B", 2)):
        calls.clear()
        got = [h.id for h in memory.retrieve(question, k=k, namespace=ns)]
        rows = memory.store.collection.get(where={"mac_namespace": ns}, include=["embeddings", "metadatas"])
        dist = {md["mac_id"]: 1 - float(np.dot(e, q)) for e, md in zip(rows["embeddings"], rows["metadatas"])}
        assert got == sorted(dist, key=dist.get)[:k]
        assert calls[0] == {}  # the unfiltered search comes first
        # A: 40 of 43 records, found unfiltered; B: 3 far-off records of 43, so the filtered search ran.
        assert (len(calls) > 1) == (ns == "B"), calls


def test_readd_same_id_replaces_text_metadata_and_modulation(make_memory, tiny):
    memory = make_memory(chunk_size=12, chunk_overlap=2)
    long_text = " ".join(DISTRACTORS)
    memory.add_texts([long_text], metadatas=[{"a": 1, "b": "old"}], ids=["doc"])
    n_chunks = memory.count()
    assert n_chunks > 2 and {h.id for h in memory.get(["doc"])} == {f"doc#{i}" for i in range(n_chunks)}
    memory.add_texts(["Short new text."], metadatas=[{"a": 2}], ids=["doc"])
    [hit] = memory.get(["doc"], with_modulation=True)
    assert (hit.id, hit.text, hit.metadata, memory.count()) == ("doc", "Short new text.", {"a": 2}, 1)
    [(_, (_, md))] = _snapshot(memory).items()
    assert "b" not in md and md["mac_num_chunks"] == 1  # no stale keys survive the replacement
    fresh = tiny.mac.amortize(["Short new text."])[0].detach().numpy().astype(np.float16).astype(np.float32)
    assert np.array_equal(hit.modulation, fresh)
    # And back to a chunked version: the single record is replaced by chunks, nothing stale remains.
    memory.add_texts([long_text], ids=["doc"])
    assert memory.count() == n_chunks and all(h.parent_id == "doc" for h in memory.get(["doc"]))


def test_same_content_without_ids_is_not_duplicated(make_memory):
    memory = make_memory()
    first = memory.add_texts([FACT, FACT])
    second = memory.add_texts([FACT], metadatas=[{"v": 2}])
    assert first[0] == first[1] == second[0] and memory.count() == 1
    assert memory.get(second)[0].metadata == {"v": 2}
    assert memory.add_texts([FACT], namespace="other") != second  # the namespace is part of the identity
    assert memory.count() == 2


def test_chunks_keep_parent_links(make_memory):
    memory = make_memory(chunk_size=10, chunk_overlap=3)
    text = FACT + " " + DISTRACTORS[0]
    [doc_id] = memory.add_texts([text], metadatas=[{"source": "notes"}])
    chunks = memory.get([doc_id])
    assert len(chunks) > 2
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert all(c.parent_id == doc_id and c.id == f"{doc_id}#{c.chunk_index}" for c in chunks)
    assert all(c.metadata == {"source": "notes"} for c in chunks)
    stored = _snapshot(memory)
    for c in chunks:
        md = stored[f"default/{c.id}"][1]
        assert text[md["mac_char_start"] : md["mac_char_end"]] == c.text
    assert {h.parent_id for h in memory.retrieve(QUESTION, k=3)} == {doc_id}
    assert memory.delete(ids=[doc_id]) == len(chunks) and memory.count() == 0
    with pytest.raises(ValueError, match="chunk_size"):
        make_memory(chunk_size=10_000)


def test_as_of_and_prefer_newest(make_memory):
    clock = FakeClock(1_000.0)
    memory = make_memory(clock=clock)
    [old] = memory.add_texts(["Velmora Quistan lives in Ostravel."])
    clock.now = 1_500.0
    [job] = memory.add_texts(["Velmora Quistan works for Brindlecorp as a cartographer."])
    clock.now = 2_000.0
    [new] = memory.add_texts(["Velmora Quistan lives in Belvik."])
    memory.add_texts(DISTRACTORS)
    question = "Where does Velmora Quistan live?"
    assert {h.id for h in memory.retrieve(question, k=10, as_of=1_200.0)} == {old}
    assert {h.id for h in memory.retrieve(question, k=10, as_of=datetime.fromtimestamp(1_200.0))} == {old}
    assert {s.id for s in memory.answer(question, k=10, as_of=1_500.0, max_new_tokens=2).sources} == {
        old,
        job,
    }
    assert memory.retrieve(question, as_of=999.0) == []
    assert [h.ingested_at for h in memory.get([old, job, new])] == [1_000.0, 1_500.0, 2_000.0]
    assert {h.id for h in memory.retrieve(question, k=3)} == {old, job, new}
    # prefer_newest: the newer near-duplicate supersedes the old version; a different fact about
    # the same person (cosine ~0.6 < supersede_threshold) stays, and k is still filled.
    newest = memory.retrieve(question, k=3, prefer_newest=True)
    assert (
        new in {h.id for h in newest} and job in {h.id for h in newest} and old not in {h.id for h in newest}
    )
    assert len(newest) == 3
    sources = memory.answer(question, k=3, prefer_newest=True, max_new_tokens=2).sources
    assert old not in {s.id for s in sources} and new in {s.id for s in sources}
    # Only among candidates of the same query: with as_of before the update the old version is back.
    assert old in {h.id for h in memory.retrieve(question, k=3, prefer_newest=True, as_of=1_500.0)}
    with pytest.raises(ValueError, match="as_of"):
        memory.retrieve(question, as_of="yesterday")


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_mismatch_is_refused_and_reindex_fixes_it(make_memory, tiny, tmp_path):
    from mac_memory.errors import BaseModelMismatchError

    path = tmp_path / "mem"
    memory = make_memory(path=path, collection="mac_memory")
    ids = memory.add_texts([FACT, *DISTRACTORS])
    before = _snapshot(memory)
    with pytest.raises(BaseModelMismatchError, match="mac-memory reindex"):
        make_memory(path=path, collection="mac_memory", model=tiny.mac_other)
    assert _snapshot(memory) == before
    stale = make_memory(path=path, collection="mac_memory", model=tiny.mac_other, check_checkpoint=False)
    assert len(stale.retrieve(QUESTION, k=2)) == 2  # search does not need modulations
    with pytest.raises(BaseModelMismatchError, match="reindex"):
        stale.answer(QUESTION, max_new_tokens=2)
    assert stale.stats()["stale_records"] == 4
    assert stale.reindex() == 4 and stale.reindex() == 0  # resumable: current records are skipped
    fresh = tiny.mac_other.amortize([FACT])[0].detach().numpy().astype(np.float16).astype(np.float32)
    assert np.array_equal(stale.get([ids[0]], with_modulation=True)[0].modulation, fresh)
    assert {s.id for s in stale.answer(QUESTION, k=4, max_new_tokens=2).sources} == set(ids)
    after = _snapshot(stale)
    assert {
        k: (v[0], {m: x for m, x in v[1].items() if m not in ("mac_modulation", "mac_fingerprint")})
        for k, v in after.items()
    } == {
        k: (v[0], {m: x for m, x in v[1].items() if m not in ("mac_modulation", "mac_fingerprint")})
        for k, v in before.items()
    }  # text, metadata and ingestion time survive a reindex
    make_memory(path=path, collection="mac_memory", model=tiny.mac_other)  # now opens normally
    with pytest.raises(BaseModelMismatchError, match="mac-memory reindex"):
        make_memory(path=path, collection="mac_memory", model=tiny.mac)


def test_default_checkpoint_is_pluggable(monkeypatch, tmp_path, tiny, embedder):
    from mac_memory.errors import CheckpointError, MACError
    from mac_memory.memory import MACMemory
    from mac_memory.memory import memory as memory_module

    monkeypatch.delenv("MAC_MEMORY_CHECKPOINT", raising=False)
    monkeypatch.setattr(memory_module, "_checkpoint_resolvers", [])
    from mac_memory.training import default as default_module

    monkeypatch.setattr(default_module, "PACKAGED", tmp_path / "nothing-packaged")  # no trained default available
    monkeypatch.setenv("MAC_MEMORY_HOME", str(tmp_path / "home"))
    with pytest.raises(CheckpointError, match="no default checkpoint yet") as info:
        MACMemory(embedder=embedder)
    assert isinstance(info.value, MACError) and not (tmp_path / "home").exists()  # nothing created
    memory_module.register_default_checkpoint(lambda: tiny.ckpt)
    memory = MACMemory(embedder=embedder)
    assert memory.store.location == str(tmp_path / "home" / "chroma")
    assert memory.fingerprint == tiny.mac.fingerprint()
    monkeypatch.delenv("MAC_MEMORY_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert memory_module.default_data_dir() == tmp_path / "xdg" / "mac-memory"


# ----------------------------------------------------------------------------- bad input


BAD_ADDS = [
    ("empty text", lambda m: m.add_texts(["ok", ""]), "EmptyInputError", "texts\\[1\\] is empty"),
    ("whitespace text", lambda m: m.add_texts([" \n\t "]), "EmptyInputError", "whitespace"),
    ("non-string", lambda m: m.add_texts(["ok", 42]), "InputTypeError", "texts\\[1\\] must be a str"),
    ("bare string", lambda m: m.add_texts("a text"), "InputTypeError", "wrap a single text"),
    (
        "metadata count",
        lambda m: m.add_texts(["a", "b"], metadatas=[{}]),
        "InvalidMetadataError",
        "2 texts but 1",
    ),
    (
        "nested metadata",
        lambda m: m.add_texts(["a"], metadatas=[{"x": {"y": 1}}]),
        "InvalidMetadataError",
        "nested dict",
    ),
    (
        "bytes metadata",
        lambda m: m.add_texts(["a"], metadatas=[{"x": b"1"}]),
        "InvalidMetadataError",
        "bytes",
    ),
    (
        "reserved key",
        lambda m: m.add_texts(["a"], metadatas=[{"mac_parent": "p"}]),
        "InvalidMetadataError",
        "reserved",
    ),
    ("duplicate ids", lambda m: m.add_texts(["a", "b"], ids=["i", "i"]), "DuplicateIdError", "unique"),
    ("id count", lambda m: m.add_texts(["a", "b"], ids=["i"]), "InvalidInputError", "one id per text"),
    ("chunk id collision", lambda m: m.add_texts(["x"], ids=["kept#0"]), "DuplicateIdError", "already holds"),
    ("bad namespace", lambda m: m.add_texts(["a"], namespace="a/b"), "InvalidInputError", "namespace="),
    ("bad k", lambda m: m.retrieve(QUESTION, k=0), "InvalidInputError", "k=0"),
    ("empty question", lambda m: m.answer("  "), "EmptyInputError", "question"),
    (
        "bad where",
        lambda m: m.retrieve(QUESTION, where={"$bogus": 1}),
        "InvalidInputError",
        "not a valid Chroma",
    ),
    (
        "chat ends with assistant",
        lambda m: m.chat([{"role": "assistant", "content": "hi"}]),
        "InvalidInputError",
        "last message",
    ),
    ("chat bad role", lambda m: m.chat([{"role": "robot", "content": "hi"}]), "InvalidInputError", "role"),
]


def test_bad_input_raises_specific_errors_and_changes_nothing(make_memory, monkeypatch):
    from mac_memory import errors

    memory = make_memory(chunk_size=10, chunk_overlap=2)
    memory.add_texts([FACT], ids=["kept"])  # several chunks: kept#0, kept#1, ...
    memory.add_texts([DISTRACTORS[0]], ids=["other"], namespace="B")
    before = _snapshot(memory)
    for name, call, error, match in BAD_ADDS:
        with pytest.raises(getattr(errors, error), match=match) as info:
            call(memory)
        assert isinstance(info.value, errors.MACError), name
        assert _snapshot(memory) == before, f"{name} changed the store"
    # A network that emits NaN: refused before anything is written (never stored, never used).
    import torch

    real_amortize = memory.mac.amortize

    def nan_for_second(texts: Any, batch_size: int | None = None) -> Any:
        out = real_amortize(texts)
        return torch.where(torch.arange(len(texts))[:, None, None] == 1, torch.nan, out)

    with monkeypatch.context() as patch:
        patch.setattr(memory.mac, "amortize", nan_for_second)
        with pytest.raises(errors.ModulationError, match="NaN/Inf"):
            memory.add_texts(["fine", "poisoned"])
    assert _snapshot(memory) == before
    # numpy scalars are converted, not refused.
    [doc] = memory.add_texts(["numpy metadata"], metadatas=[{"score": np.float32(0.5), "n": np.int64(2)}])
    assert memory.get([doc])[0].metadata == {"score": 0.5, "n": 2}
    with pytest.raises(errors.ConfigError, match="collection="):
        make_memory(collection="m")


def test_unreachable_server_is_a_clear_error():
    from mac_memory.errors import MACError, StoreConnectionError
    from mac_memory.memory.store import ChromaStore

    port = _free_port()
    with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{port}") as info:
        ChromaStore.open(collection="mac_memory", host="127.0.0.1", port=port)
    assert isinstance(info.value, MACError) and isinstance(info.value, ConnectionError)
    assert "chroma run" in str(info.value)


# ----------------------------------------------------------------------------- chat, streaming, async


def test_stream_chat_messages_and_async(make_memory, tiny):
    memory = make_memory()
    memory.add_texts([FACT, *DISTRACTORS])
    answer = memory.answer(QUESTION, k=3, max_new_tokens=8)
    stream = memory.answer_stream(QUESTION, k=3, max_new_tokens=8)
    assert stream.sources == answer.sources  # known before generation starts
    pieces = list(stream)
    assert "".join(pieces) == stream.text == answer.text
    # A chat with no history is the plain question prompt: same answer, same sources.
    chat = memory.chat([{"role": "user", "content": QUESTION}], k=3, max_new_tokens=8)
    assert (chat.text, chat.sources) == (answer.text, answer.sources)
    # Streaming a chat with history joins to the non-streamed chat reply, sources known up front.
    turns = [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": QUESTION},
    ]
    replied = memory.chat(turns, k=3, max_new_tokens=8)
    chat_stream = memory.chat_stream(turns, k=3, max_new_tokens=8)
    assert chat_stream.sources == replied.sources
    assert "".join(chat_stream) == chat_stream.text == replied.text
    ids = memory.add_messages(
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "My favourite colour is teal."},
            {"role": "assistant", "content": "Noted: teal."},
        ],
        namespace="u1",
        conversation_id="c1",
    )
    assert len(ids) == 2 and memory.count("u1") == 2
    hits = memory.retrieve("What is my favourite colour?", k=1, namespace="u1")
    assert hits[0].text == "User: My favourite colour is teal."
    assert hits[0].metadata == {"kind": "message", "role": "user", "turn": 1, "conversation_id": "c1"}
    reply = memory.chat(
        [
            {"role": "user", "content": "Hello."},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "What is my favourite colour?"},
        ],
        k=2,
        namespace="u1",
        max_new_tokens=4,
        remember=True,
    )
    assert ids[0] in {s.id for s in reply.sources}
    assert memory.count("u1") == 2 + 1 + bool(reply.text)  # the new user turn (and reply) were stored

    async def concurrently() -> list[Any]:
        added = await memory.aadd_texts(["Async facts arrive too."], namespace="async")
        hits = await memory.aretrieve("async facts", k=1, namespace="async")
        answers = await asyncio.gather(*(memory.aanswer(QUESTION, k=3, max_new_tokens=8) for _ in range(3)))
        return [added, hits, answers]

    added, hits, answers = asyncio.run(concurrently())
    assert hits[0].id == added[0]
    assert all((a.text, a.sources) == (answer.text, answer.sources) for a in answers)


# ----------------------------------------------------------------------------- CLI


def test_cli_commands_ingest_ask_stats_reindex(tmp_path, tiny, capsys):
    import argparse

    from mac_memory.cli.memory import COMMANDS

    def run(name: str, *argv: str) -> str:
        _, add_arguments, fn = COMMANDS[name]
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        assert fn(parser.parse_args(list(argv))) == 0
        return capsys.readouterr().out

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "velmora.md").write_text("# Velmora\n\n" + FACT + "\n", encoding="utf-8")
    (docs / "stream.jsonl").write_text(
        json.dumps({"doc_id": "d1", "title": "Bridge", "context": DISTRACTORS[1], "qas": [], "year": 1904})
        + "\n",
        encoding="utf-8",
    )
    common = ["--path", str(tmp_path / "mem"), "--checkpoint", str(tiny.ckpt)]
    assert "ingested 2 documents" in run("ingest", str(docs), *common, "--namespace", "me")
    out = run("ask", QUESTION, "-k", "2", *common, "--namespace", "me", "--max-new-tokens", "3")
    assert "velmora.md" in out and "d1" in out
    stats = json.loads(run("stats", *common))
    assert stats["namespaces"] == {"me": 2} and stats["records"] == 2 and stats["stale_records"] == 0
    assert "reindexed 0 of 2" in run("reindex", *common)
    assert "no memory in namespace" in run("ask", QUESTION, *common, "--namespace", "empty")


# ----------------------------------------------------------------------------- other processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_worker(spec: dict[str, Any]) -> subprocess.Popen:
    """A fresh Python process that imports the stack, then waits for :func:`_go` (see :func:`worker`)."""
    # One intra-op thread each: workers run side by side on small CPUs, and oversubscribed OpenMP
    # threads spin against each other (stack-facts P-23).
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.Popen(
        [sys.executable, __file__, "worker", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _go(proc: subprocess.Popen, timeout: float = 120, **update: Any) -> dict[str, Any]:
    """Let a waiting worker run (with ``update`` merged into its spec) and read its JSON report."""
    out, err = proc.communicate(json.dumps(update) + "\n", timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _view(memory: Any, ids: list[str]) -> dict[str, Any]:
    """What both sides of a multi-process test compare: records, modulations (exact bytes), answers."""
    hits = memory.get(ids, with_modulation=True)
    answer = memory.answer(QUESTION, k=4, max_new_tokens=6)
    return {
        "count": memory.count(),
        "texts": {h.id: h.text for h in hits},
        "modulations": {h.id: base64.b64encode(h.modulation.tobytes()).decode() for h in hits},
        "answer": answer.text,
        "sources": [[s.id, s.weight] for s in answer.sources],
    }


class PlainMiniLM:
    """The default MiniLM through plain transformers (mean pooling + L2 norm), same name and vectors.

    Worker processes use it so that each spends no time importing sentence-transformers (which pulls
    scikit-learn and scipy: 5-10 s on a small CPU); ``test_plain_minilm_matches_the_default_embedder``
    checks that its vectors are the default embedder's.
    """

    def __init__(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        from mac_memory.memory.embedder import DEFAULT_EMBEDDER_NAME, default_model_path

        self.name = DEFAULT_EMBEDDER_NAME
        self.tokenizer = AutoTokenizer.from_pretrained(default_model_path())
        self.model = AutoModel.from_pretrained(default_model_path()).eval()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed_documents(self, texts: Any) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state  # (N, L, 384)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def test_plain_minilm_matches_the_default_embedder(embedder):
    from mac_memory.memory import Embedder

    plain = PlainMiniLM()
    assert isinstance(plain, Embedder) and plain.name == embedder.name
    for text in [QUESTION, FACT]:
        assert np.allclose(plain.embed_query(text), embedder.embed_query(text), atol=1e-5)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Open a memory from a checkpoint in this fresh process; add ``spec["add"]`` if given; report a view.

    The heavy imports happen first, then the worker blocks on one JSON line from stdin (merged into
    ``spec``), so the test overlaps process start-up with its own work and decides when to go.
    """
    # Import what the work needs now, while the test is still busy: the embedder's and the tiny LM's
    # modelling code, the engine; then wait.
    import importlib

    import chromadb

    from mac_memory.memory import MACMemory

    for module in (
        "transformers.models.bert.modeling_bert",
        "transformers.models.llama.modeling_llama",
        "mac_memory.model",
    ):
        importlib.import_module(module)

    spec.update(json.loads(sys.stdin.readline() or "{}"))
    target: dict[str, Any] = (
        {"path": spec["path"]}
        if "path" in spec
        else {"client": chromadb.HttpClient(host="127.0.0.1", port=spec["port"], settings=_settings())}
    )
    memory = MACMemory(
        checkpoint=spec["checkpoint"], collection=spec["collection"], embedder=PlainMiniLM(), **target
    )
    ids = memory.add_texts(spec["add"]) if spec.get("add") else spec["ids"]
    return {"ids": ids, **_view(memory, ids)}


def _same_view(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert (a["count"], a["texts"], a["modulations"], a["answer"]) == (
        b["count"],
        b["texts"],
        b["modulations"],
        b["answer"],
    )
    assert [s[0] for s in a["sources"]] == [s[0] for s in b["sources"]]
    assert np.allclose([s[1] for s in a["sources"]], [s[1] for s in b["sources"]], atol=1e-6)


def test_reopen_in_a_new_process_gives_identical_modulations_and_answers(make_memory, tiny, tmp_path):
    path = tmp_path / "mem"
    reader = _spawn_worker({"path": str(path), "checkpoint": str(tiny.ckpt), "collection": "mac_memory"})
    try:
        memory = make_memory(path=path, collection="mac_memory")
        ids = memory.add_texts([FACT, *DISTRACTORS])
        mine = _view(memory, ids)
        theirs = _go(reader, ids=ids)
    finally:
        with contextlib.suppress(Exception):
            reader.kill()
    _same_view(mine, theirs)
    assert len(theirs["modulations"]) == 4


@contextlib.contextmanager
def chroma_server(path: Path) -> Any:
    """``chroma run`` on a free loopback port for the duration of the block; yields (process, port)."""
    chroma = shutil.which("chroma") or str(Path(sys.executable).with_name("chroma"))
    port = _free_port()
    server = subprocess.Popen(
        [chroma, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield server, port
    finally:
        server.kill()
        server.wait(timeout=20)


def test_chroma_server_from_this_process(make_memory, tiny, tmp_path):
    import chromadb
    from helpers.reliability import wait_for_heartbeat

    from mac_memory.errors import StoreConnectionError

    with chroma_server(tmp_path / "server") as (server, port):
        wait_for_heartbeat(port, timeout=30.0)
        memory = make_memory(host="127.0.0.1", port=port, collection="server_docs")
        assert memory.store.remote and memory.store.location == f"127.0.0.1:{port}"
        ids = memory.add_texts([FACT, *DISTRACTORS], namespace="u1")
        other = make_memory(
            client=chromadb.HttpClient(host="127.0.0.1", port=port, settings=_settings()),
            collection="server_docs",
        )
        assert other.store.remote and other.count("u1") == 4
        assert other.retrieve(QUESTION, k=1, namespace="u1")[0].id == ids[0]
        fresh = tiny.mac.amortize([FACT])[0].detach().numpy().astype(np.float16).astype(np.float32)
        assert np.array_equal(other.get([ids[0]], namespace="u1", with_modulation=True)[0].modulation, fresh)
        a, b = (m.answer(QUESTION, k=4, namespace="u1", max_new_tokens=4) for m in (memory, other))
        assert (a.text, a.sources) == (b.text, b.sources) and len(a.sources) == 4
        # Replacement semantics hold on the server too (upsert + explicit None for dropped keys).
        memory.add_texts([FACT], metadatas=[{"a": 1, "b": 2}], ids=["r"], namespace="u1")
        other.add_texts(["Short new text."], metadatas=[{"a": 3}], ids=["r"], namespace="u1")
        [hit] = memory.get(["r"], namespace="u1")
        assert (hit.text, hit.metadata) == ("Short new text.", {"a": 3})
        server.kill()
        server.wait(timeout=20)
        with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{port}"):
            memory.count()
        with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{port}"):
            other.answer(QUESTION, namespace="u1")


@pytest.mark.slow  # two fresh processes + a server: ~35 s on a busy 2-core machine (the limit is 20 s)
def test_chroma_server_shared_by_two_processes(tiny, tmp_path):
    from helpers.reliability import wait_for_heartbeat

    with chroma_server(tmp_path / "server") as (_, port):
        spec = {"port": port, "checkpoint": str(tiny.ckpt), "collection": "shared_docs"}
        writer = _spawn_worker({**spec, "add": [FACT, *DISTRACTORS]})
        reader = _spawn_worker(spec)  # both import in parallel with the server's start-up
        try:
            wait_for_heartbeat(port, timeout=30.0)
            written = _go(writer)
            read = _go(reader, ids=written["ids"])
        finally:
            for proc in (writer, reader):
                with contextlib.suppress(Exception):
                    proc.kill()
    _same_view(written, read)
    assert read["count"] == 4 and len(read["modulations"]) == 4


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    print(json.dumps(worker(json.loads(sys.argv[2]))))
