"""Hostile and malformed input: each is refused with a specific error whose message says what is wrong,
and the memory is unchanged afterwards (every record, modulation bytes included, compared before/after).
Valid but odd input (binary-looking text, NUL bytes, 1-10 MB documents) is stored exactly.

Already covered elsewhere, not repeated here: empty/whitespace/non-str texts, nested or bytes metadata,
reserved keys, duplicate ids in a call, a chunk id collision, bad namespace/k/where, a NaN modulation
(``tests/test_memory.py::test_bad_input_raises_specific_errors_and_changes_nothing``); codec byte flips,
truncation and forged headers (``tests/test_memory_codec.py``); damaged checkpoints and a checkpoint
loaded onto another base LM (``tests/test_checkpoint.py``); bad documents and questions for the engine
(``tests/test_errors_input.py``). Randomised inputs: ``tests/test_reliability_fuzz.py``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import pickle
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers.reliability import HashEmbedder, record_problems, settings, snapshot, tiny_mac

from mac_memory import errors
from mac_memory.memory.codec import encode_modulation, modulation_to_b64

QUESTION = "Where was Velmora Quistan born?"
FACT = "Velmora Quistan was born in Ostravel in 1871 and works for Brindlecorp as a cartographer."
OTHER = "Kado Fen, a violinist, grew up in Marrowick; his sister works for Telvane."


@pytest.fixture(scope="module")
def mac(tiny_path):
    return tiny_mac(str(tiny_path("llama")))


@pytest.fixture
def make_memory(mac):
    import chromadb

    client = chromadb.EphemeralClient(settings=settings())

    def make(**kwargs: Any) -> Any:
        from mac_memory.memory import MACMemory

        kwargs.setdefault("model", mac)
        kwargs.setdefault("embedder", HashEmbedder())
        if "path" not in kwargs:
            kwargs.setdefault("client", client)
        kwargs.setdefault("collection", f"h_{uuid.uuid4().hex[:12]}")
        kwargs.setdefault("show_progress", False)
        return MACMemory(**kwargs)

    return make


@pytest.fixture
def memory(make_memory):
    """Two namespaces, a chunked document and plain ones: something for a bad call to damage."""
    m = make_memory(chunk_size=12, chunk_overlap=2)
    m.add_texts([FACT, OTHER], metadatas=[{"source": "a"}, {"source": "b"}], ids=["fact", "other"])
    m.add_texts([OTHER], ids=["x"], namespace="B")
    return m


# ----------------------------------------------------------------------------- refused input


class Weird:
    def __repr__(self) -> str:
        return "<Weird>"


HOSTILE = [
    # texts: wrong container types and text that is not valid Unicode
    ("texts=None", lambda m: m.add_texts(None), "InputTypeError", "list of texts, got NoneType"),
    ("texts=dict", lambda m: m.add_texts({"a": 1}), "InputTypeError", "list of texts, got dict"),
    ("texts=bytes", lambda m: m.add_texts(b"raw bytes"), "InputTypeError", "got bytes"),
    ("texts=generator", lambda m: m.add_texts(t for t in ["a"]), "InputTypeError", "got generator"),
    (
        "bytes item",
        lambda m: m.add_texts(["ok", b"raw"]),
        "InputTypeError",
        r"texts\[1\] must be a str, got bytes",
    ),
    (
        "lone surrogate (content id)",
        lambda m: m.add_texts(["ok", "caf\udce9"]),
        "InvalidInputError",
        r"texts\[1\].*not valid Unicode",
    ),
    (
        "lone surrogate (explicit id)",
        lambda m: m.add_texts(["caf\udce9"], ids=["s"]),
        "InvalidInputError",
        r"texts\[0\].*not valid Unicode",
    ),
    ("surrogate pair halves", lambda m: m.add_texts(["\ud83d"]), "InvalidInputError", "not valid Unicode"),
    # ids
    ("id not a str", lambda m: m.add_texts(["a"], ids=[7]), "InvalidInputError", r"ids\[0\]=7"),
    (
        "id with a lone surrogate",
        lambda m: m.add_texts(["a"], ids=["i\udcff"]),
        "InvalidInputError",
        r"ids\[0\].*invalid",
    ),
    ("id None", lambda m: m.add_texts(["a"], ids=[None]), "InvalidInputError", r"ids\[0\]=None"),
    ("ids as a str", lambda m: m.add_texts(["a"], ids="a"), "InvalidInputError", "ids must be a list"),
    (
        "re-used chunk id",
        lambda m: m.add_texts(["short"], ids=["fact#1"]),
        "DuplicateIdError",
        "already holds",
    ),
    # namespaces
    ("namespace int", lambda m: m.add_texts(["a"], namespace=3), "InvalidInputError", "namespace=3"),
    (
        "namespace surrogate",
        lambda m: m.add_texts(["a"], namespace="n\udcff"),
        "InvalidInputError",
        "namespace=",
    ),
    ("namespace control char", lambda m: m.delete(namespace="a\x00"), "InvalidInputError", "namespace="),
    # metadata Chroma would reject (or silently change)
    (
        "metadata key $",
        lambda m: m.add_texts(["a"], metadatas=[{"$and": 1}]),
        "InvalidMetadataError",
        r"'\$and'",
    ),
    (
        "metadata key #",
        lambda m: m.add_texts(["a"], metadatas=[{"#document": 1}]),
        "InvalidMetadataError",
        "'#document'",
    ),
    (
        "int beyond int64",
        lambda m: m.add_texts(["a"], metadatas=[{"n": 2**70}]),
        "InvalidMetadataError",
        "64-bit",
    ),
    (
        "int list beyond int64",
        lambda m: m.add_texts(["a"], metadatas=[{"n": [1, -(2**63) - 1]}]),
        "InvalidMetadataError",
        "64-bit",
    ),
    (
        "numpy uint64 beyond int64",
        lambda m: m.add_texts(["a"], metadatas=[{"n": np.uint64(2**64 - 1)}]),
        "InvalidMetadataError",
        "64-bit",
    ),
    (
        "numpy nan",
        lambda m: m.add_texts(["a"], metadatas=[{"x": np.float32("nan")}]),
        "InvalidMetadataError",
        "finite",
    ),
    (
        "value surrogate",
        lambda m: m.add_texts(["a"], metadatas=[{"k": "v\udcff"}]),
        "InvalidMetadataError",
        "not valid Unicode",
    ),
    (
        "key surrogate",
        lambda m: m.add_texts(["a"], metadatas=[{"k\udcff": 1}]),
        "InvalidMetadataError",
        "not valid Unicode",
    ),
    ("set value", lambda m: m.add_texts(["a"], metadatas=[{"k": {1, 2}}]), "InvalidMetadataError", "set"),
    (
        "datetime value",
        lambda m: m.add_texts(["a"], metadatas=[{"k": datetime.datetime(2024, 1, 1)}]),
        "InvalidMetadataError",
        "isoformat",
    ),
    (
        "2-d array value",
        lambda m: m.add_texts(["a"], metadatas=[{"k": np.zeros((2, 2))}]),
        "InvalidMetadataError",
        "one scalar type",
    ),
    (
        "object value",
        lambda m: m.add_texts(["a"], metadatas=[{"k": Weird()}]),
        "InvalidMetadataError",
        "Weird",
    ),
    ("int key", lambda m: m.add_texts(["a"], metadatas=[{1: "x"}]), "InvalidMetadataError", "keys must be"),
    ("metadatas=dict", lambda m: m.add_texts(["a"], metadatas={"k": 1}), "InvalidMetadataError", "one dict"),
    # reads and deletes
    ("question bytes", lambda m: m.answer(b"where?"), "InputTypeError", "must be a str, got bytes"),
    ("question surrogate", lambda m: m.answer("wh\udcffere?"), "InvalidInputError", "not valid Unicode"),
    ("retrieve surrogate", lambda m: m.retrieve("wh\udcffere?"), "InvalidInputError", "not valid Unicode"),
    ("k=True", lambda m: m.retrieve(QUESTION, k=True), "InvalidInputError", "k=True"),
    ("k=2.5", lambda m: m.answer(QUESTION, k=2.5), "InvalidInputError", "k=2.5"),
    (
        "where list",
        lambda m: m.retrieve(QUESTION, where=[("a", 1)]),
        "InvalidInputError",
        "where must be a dict",
    ),
    (
        "where unknown op",
        lambda m: m.delete(where={"source": {"$regexp": "a"}}),
        "InvalidInputError",
        "not a valid Chroma filter",
    ),
    ("where empty $and", lambda m: m.delete(where={"$and": []}), "InvalidInputError", "not a valid Chroma"),
    ("delete ids=str", lambda m: m.delete(ids="fact"), "InvalidInputError", "ids must be a list"),
    ("delete ids=[None]", lambda m: m.delete(ids=[None]), "InvalidInputError", r"ids\[0\]"),
    ("get ids surrogate", lambda m: m.get(["f\udcffact"]), "InvalidInputError", r"ids\[0\]"),
    (
        "chat content surrogate",
        lambda m: m.chat([{"role": "user", "content": "hi \udcff"}]),
        "InvalidInputError",
        "not valid Unicode",
    ),
    ("chat not a list", lambda m: m.chat("hello"), "InvalidInputError", "non-empty list"),
    (
        "messages surrogate",
        lambda m: m.add_messages([{"role": "user", "content": "\udcff"}]),
        "InvalidInputError",
        "not valid Unicode",
    ),
]


@pytest.mark.parametrize(("name", "call", "error", "match"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_input_is_refused_and_changes_nothing(memory, name, call, error, match):
    before = snapshot(memory)
    with pytest.raises(getattr(errors, error), match=match) as info:
        call(memory)
    assert isinstance(info.value, errors.MACError)
    assert snapshot(memory) == before, f"{name} changed the store"


def test_huge_question_is_refused_before_it_reaches_the_lm(memory):
    """A question longer than the base LM's context would allocate gigabytes (40 GB measured for 140 kB)."""
    before = snapshot(memory)
    limit = memory.mac.lm.model.config.max_position_embeddings
    for question in ("where? " * 20_000, "x" * 10_000_000):
        for call in (
            lambda q: memory.answer(q, max_new_tokens=2),
            lambda q: memory.answer_stream(q, max_new_tokens=2),
            lambda q: memory.chat([{"role": "user", "content": q}], max_new_tokens=2),
        ):
            with pytest.raises(errors.InvalidInputError, match=f"at most {limit} positions"):
                call(question)
    # Long chat history is the same problem; the retrieval-only path has no LM and accepts it.
    history = [{"role": "user", "content": "blah " * 400}, {"role": "assistant", "content": "ok"}] * 3
    with pytest.raises(errors.InvalidInputError, match="max_new_tokens"):
        memory.chat([*history, {"role": "user", "content": QUESTION}], history_turns=6)
    assert memory.retrieve("where? " * 20_000, k=1)
    assert memory.answer(QUESTION, max_new_tokens=2).sources  # a normal question still works
    assert snapshot(memory) == before


# ----------------------------------------------------------------------------- valid but odd input


ODD_TEXTS = {
    "nul bytes": "before\x00after\x00",
    "control and ANSI": "\x01\x02\x1b[31mred\x1b[0m\x7f bell\x07",
    "binary-looking": os.urandom(600).decode("latin-1"),
    "mixed scripts": "Ωμέγα מים 水 🧪 e\u0301 \u200b zero-width \u202e rtl",
    "line endings": "a\r\nb\rc\nd\u2028e",
}


def test_binary_looking_and_odd_text_is_stored_exactly(make_memory):
    memory = make_memory(chunk_unit="char", chunk_size=1_000)
    ids = memory.add_texts(list(ODD_TEXTS.values()), ids=list(ODD_TEXTS))
    for doc_id, text in ODD_TEXTS.items():
        hits = memory.get([doc_id])
        assert "".join(h.text for h in hits) == text.strip(), doc_id
    assert record_problems(memory, HashEmbedder(), check_values=True) == []
    # Odd text as a question or as metadata is fine too.
    assert memory.retrieve(ODD_TEXTS["binary-looking"], k=1)
    memory.add_texts(["tagged"], metadatas=[{"blob": ODD_TEXTS["nul bytes"], "\x00k": 1}], ids=["tagged"])
    assert memory.get(["tagged"])[0].metadata == {"blob": ODD_TEXTS["nul bytes"], "\x00k": 1}
    assert memory.delete(ids=ids) == len(ODD_TEXTS) and memory.count() == 1


def _huge_document(memory: Any, megabytes: int) -> None:
    rng = np.random.default_rng(0)
    words = np.array(["alpha", "beta", "gamma", "delta", "\x00", "ü", "水", "\n"])
    text = " ".join(words[rng.integers(0, len(words), megabytes * 300_000)])[: megabytes * 1_000_000]
    assert len(text) == megabytes * 1_000_000 and len(text.encode()) > megabytes * 1_000_000
    before = snapshot(memory)
    [doc_id] = memory.add_texts([text], ids=["huge"])
    chunks = memory.get([doc_id])
    covered = np.zeros(len(text), bool)
    stored = memory.store.collection.get(where={"mac_parent": "huge"}, include=["metadatas", "documents"])
    for md, doc in zip(stored["metadatas"], stored["documents"], strict=True):
        assert text[md["mac_char_start"] : md["mac_char_end"]] == doc
        covered[md["mac_char_start"] : md["mac_char_end"]] = True
    assert not "".join(text[i] for i in np.flatnonzero(~covered)).strip()  # only whitespace is left out
    assert len(chunks) == len(stored["ids"]) == memory.count() - len(before)
    assert memory.answer("gamma?", k=8, max_new_tokens=2).sources
    assert record_problems(memory, HashEmbedder()) == []
    assert memory.delete(ids=[doc_id]) == len(chunks)
    assert snapshot(memory) == before


def test_a_one_megabyte_document_is_chunked_whole(make_memory):
    _huge_document(make_memory(chunk_unit="char", chunk_size=2_000, chunk_overlap=100), megabytes=1)


@pytest.mark.slow
def test_a_ten_megabyte_document_is_chunked_whole(make_memory):
    _huge_document(make_memory(chunk_unit="char", chunk_size=2_000, chunk_overlap=100), megabytes=10)


# ----------------------------------------------------------------------------- modulations


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e6])
@pytest.mark.parametrize("codec", ["float16", "int8", "float32"])
def test_non_finite_modulation_is_never_stored(memory, monkeypatch, value, codec):
    """NaN/Inf from the networks (or float16 overflow) refuses the whole call before any write."""
    import torch

    memory.codec = codec
    real = memory.mac.amortize

    def poisoned(texts: Any, batch_size: Any = None) -> Any:
        out = real(texts, batch_size)
        out[-1, 1, 3] = value
        return out

    before = snapshot(memory)
    monkeypatch.setattr(memory.mac, "amortize", poisoned)
    with torch.no_grad():
        if value == 1e6 and codec != "float16":  # representable: stored, and read back as stored
            [doc] = memory.add_texts(["big values are fine in " + codec])
            stored = max(h.modulation.max() for h in memory.get([doc], with_modulation=True))
            assert stored == pytest.approx(1e6, rel=1e-2)
            return
        with pytest.raises(errors.ModulationError, match="NaN/Inf" if value != 1e6 else "overflow float16"):
            memory.add_texts(["fine", "poisoned"])
    assert snapshot(memory) == before


def _forge(blob_b64: str, edit: Any) -> str:
    """Decode a stored blob, let ``edit`` change its body, recompute the checksum (a deliberate forgery)."""
    raw = bytearray(base64.b64decode(blob_b64)[:-32])
    edit(raw)
    return base64.b64encode(bytes(raw) + hashlib.sha256(bytes(raw)).digest()).decode()


def _nan_payload(raw: bytearray) -> None:
    raw[-2:] = np.array([np.nan], dtype="<f2").tobytes()


TAMPER = {
    # kind: (new metadata value(s), error, words in the message)
    "flipped base64 char": (
        lambda b: b[:40] + ("A" if b[40] != "A" else "B") + b[41:],
        "CorruptModulationError",
        "sha256",
    ),
    "truncated": (lambda b: b[: len(b) // 2 // 4 * 4], "CorruptModulationError", "sha256|truncated|bytes"),
    "not base64": (lambda b: "%%" + b[2:], "CorruptModulationError", "base64"),
    "emptied": (lambda b: "", "CorruptModulationError", "truncated"),
    "removed": (lambda b: None, "CorruptModulationError", "missing its modulation"),
    "NaN with recomputed checksum": (lambda b: _forge(b, _nan_payload), "CorruptModulationError", "NaN/Inf"),
    "other shape": (
        lambda b: modulation_to_b64(np.ones((3, 32), np.float32)),
        "BaseModelMismatchError",
        r"shape \(3, 32\)",
    ),
    "float16 inf": (lambda b: base64.b64encode(_inf_blob()).decode(), "CorruptModulationError", "NaN/Inf"),
}


def _inf_blob() -> bytes:
    raw = bytearray(encode_modulation(np.ones((4, 32), np.float32))[:-32])
    raw[-2:] = np.array([np.inf], dtype="<f2").tobytes()
    return bytes(raw) + hashlib.sha256(bytes(raw)).digest()


@pytest.mark.parametrize("kind", list(TAMPER))
def test_tampered_stored_modulation_is_refused_naming_the_record_and_reindex_repairs_it(memory, kind):
    damage, error, words = TAMPER[kind]
    cid = "default/fact#1"
    blob = memory.store.collection.get(ids=[cid])["metadatas"][0]["mac_modulation"]
    memory.store.collection.update(ids=[cid], metadatas=[{"mac_modulation": damage(blob)}])
    before = snapshot(memory)
    for call in (
        lambda: memory.answer(FACT, k=10, max_new_tokens=2),
        lambda: memory.recall(FACT, k=10),
        lambda: memory.get(["fact"], with_modulation=True),
    ):
        with pytest.raises(getattr(errors, error), match=words) as info:
            call()
        assert "'fact#1'" in str(info.value) and "default" in str(info.value), str(info.value)
    assert snapshot(memory) == before  # refused, never "repaired" behind the user's back
    assert {h.id for h in memory.retrieve(FACT, k=10)} >= {"fact#1"}  # search needs no modulation
    assert memory.answer(OTHER, k=1, namespace="B", max_new_tokens=2).sources  # other records still answer
    # reindex() re-amortizes unreadable records from their stored text (and leaves the others alone).
    assert memory.reindex() == 1
    fresh = memory.mac.amortize([memory.get(["fact#1"])[0].text])[0].detach().numpy()
    assert np.array_equal(
        memory.get(["fact#1"], with_modulation=True)[0].modulation,
        fresh.astype(np.float16).astype(np.float32),
    )
    assert memory.answer(FACT, k=10, max_new_tokens=2).sources
    assert record_problems(memory, HashEmbedder()) == []


# ----------------------------------------------------------------------------- checkpoints


def _copy_checkpoint(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _reseal(ckpt: Path, name: str) -> None:
    """Recompute a file's manifest checksum: an attacker who controls the directory can do that too."""
    manifest = json.loads((ckpt / "mac_manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
    (ckpt / "mac_manifest.json").write_text(json.dumps(manifest))


class _Marker:
    """Unpickling this creates a file: proof that a loader executed what it loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def saved(mac, tmp_path_factory):
    return mac.save_pretrained(tmp_path_factory.mktemp("hostile_ckpt") / "ckpt")


def _pickled_weights(ckpt: Path) -> None:
    (ckpt / "mac_model.safetensors").write_bytes(pickle.dumps({"w": _Marker(str(ckpt / "EXECUTED"))}))
    _reseal(ckpt, "mac_model.safetensors")


CHECKPOINT_DAMAGE = {
    "truncated weights": (
        lambda c: (c / "mac_model.safetensors").write_bytes((c / "mac_model.safetensors").read_bytes()[:100]),
        "CheckpointError",
        "checksum",
    ),
    "flipped byte": (
        lambda c: (c / "mac_config.json").write_text(
            (c / "mac_config.json").read_text().replace("4", "5", 1)
        ),
        "CheckpointError",
        "checksum",
    ),
    "resealed truncated weights": (
        lambda c: (
            (c / "mac_model.safetensors").write_bytes((c / "mac_model.safetensors").read_bytes()[:100]),
            _reseal(c, "mac_model.safetensors"),
        ),
        "CheckpointError",
        "Cannot read",
    ),
    "resealed pickle as weights": (_pickled_weights, "CheckpointError", "Cannot read"),
}


@pytest.mark.parametrize("kind", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_is_refused_and_the_memory_is_untouched(saved, make_memory, tmp_path, kind):
    damage, error, words = CHECKPOINT_DAMAGE[kind]
    path = tmp_path / "mem"
    good = make_memory(path=path, collection="mac_memory")
    good.add_texts([FACT, OTHER])
    before = snapshot(good)
    ckpt = _copy_checkpoint(saved, tmp_path / "ckpt")
    damage(ckpt)
    from mac_memory.memory import MACMemory

    with pytest.raises(getattr(errors, error), match=words):
        MACMemory(path=path, collection="mac_memory", checkpoint=ckpt, embedder=HashEmbedder())
    assert not (ckpt / "EXECUTED").exists(), "loading the checkpoint executed pickled code"
    assert snapshot(make_memory(path=path, collection="mac_memory")) == before


def test_memory_written_for_another_base_lm_is_refused_untouched(make_memory, tiny_path, tmp_path):
    """Networks trained for tiny GPT-2 cannot open a memory written by networks for tiny Llama."""
    from mac_memory.config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig
    from mac_memory.frozen_lm import FrozenLM
    from mac_memory.model import MACModel

    path = tmp_path / "mem"
    good = make_memory(path=path, collection="mac_memory")
    good.add_texts([FACT, OTHER])
    before = snapshot(good)
    gpt2 = tiny_path("gpt2")
    other = MACModel(
        MACConfig(
            base_lm=BaseLMConfig(str(gpt2)),
            amortizer=AmortizerConfig(kind="kv_anchored", num_tokens=4, d_mem=32),
            aggregator=AggregatorConfig(num_layers=1, num_heads=4),
        ),
        FrozenLM.from_pretrained(gpt2, device="cpu"),
    )
    ckpt = other.save_pretrained(tmp_path / "gpt2-ckpt")
    from mac_memory.memory import MACMemory

    with pytest.raises(errors.BaseModelMismatchError, match="reindex"):
        MACMemory(path=path, collection="mac_memory", checkpoint=ckpt, embedder=HashEmbedder())
    # ... and the Llama checkpoint cannot be loaded onto the GPT-2 base LM either.
    with pytest.raises(errors.BaseModelMismatchError, match="base LM"):
        MACModel.from_pretrained(good.mac.save_pretrained(tmp_path / "llama-ckpt"), lm=str(gpt2))
    assert snapshot(make_memory(path=path, collection="mac_memory")) == before
