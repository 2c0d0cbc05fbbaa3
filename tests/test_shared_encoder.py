"""One encoder pass for embedding and amortization (:mod:`mac_memory.memory.shared_encoder`).

When the ``encoder`` amortizer's frozen backbone is the embedder's model, a written chunk is read once:
the stored embedding must still be exactly what the embedder gives (queries are embedded by the
embedder), the modulation exactly what the amortizer alone gives, and any model that is not the same
must fall back to two passes. Tiny BERT (hidden 32) for most tests, the real all-MiniLM-L6-v2 for one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

MAX_LENGTH = 64  # the tiny amortizers' max_length (conftest's make_config)
TEXTS = [
    "Velmora Quistan was born in Ostravel in 1871.",
    "Kado Fen, a VIOLINIST, grew up in Marrowick; his sister works for Telvane!",
    "Paris is the capital of France. " * 40,  # past every max_length here: truncation must agree
]


def _amortizer(
    path: Path, *, max_length: int = MAX_LENGTH, freeze: bool = True, tokenizer: Any = None
) -> Any:
    """An encoder amortizer on the backbone at ``path`` (seeded head), in eval mode."""
    from transformers import AutoModel, AutoTokenizer

    from mac_memory.config import AmortizerConfig
    from mac_memory.networks.amortizer import build_amortizer

    config = AmortizerConfig(
        kind="encoder",
        backbone=str(path),
        num_tokens=4,
        d_mem=32,
        head_hidden=32,
        decoder_layers=1,
        max_length=max_length,
        freeze_backbone=freeze,
    )
    torch.manual_seed(0)
    return build_amortizer(
        config,
        lm=None,
        max_length=max_length,  # type: ignore[arg-type]
        backbone=AutoModel.from_pretrained(path),
        tokenizer=tokenizer or AutoTokenizer.from_pretrained(path),
    ).eval()


def _st_embedder(path: Path, max_seq_length: int | None = MAX_LENGTH) -> Any:
    """A SentenceTransformerEmbedder on the model at ``path`` (sentence-transformers adds mean pooling)."""
    from mac_memory.memory import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(str(path), num_threads=1, name=f"st:{path.name}")
    if max_seq_length is not None:
        embedder.model.max_seq_length = max_seq_length
    return embedder


@pytest.fixture
def bert(tiny_path: Callable[..., Path]) -> Path:
    return tiny_path("bert")


# ----------------------------------------------------------------------------- the pass itself


def _check_shared_pass(amortizer: Any, embedder: Any) -> None:
    from mac_memory.memory.shared_encoder import SharedEncoderPass

    shared, reason = SharedEncoderPass.build(amortizer, embedder)
    assert shared is not None, reason
    memory, embeddings = shared(TEXTS)
    with torch.no_grad():
        alone = amortizer(TEXTS)  # (B, T, d_mem)
    assert torch.equal(memory, alone)
    expected = embedder.embed_documents(TEXTS)
    assert embeddings.dtype == np.float32 and embeddings.shape == expected.shape
    assert np.allclose(embeddings, expected, atol=1e-5, rtol=0)


def test_tiny_shared_pass_gives_the_embedders_embeddings_and_the_amortizers_tokens(bert):
    _check_shared_pass(_amortizer(bert), _st_embedder(bert))


def test_minilm_shared_pass_gives_the_embedders_embeddings_and_the_amortizers_tokens():
    """The case that matters: the bench's MiniLM amortizer and the default embedder, as shipped."""
    from mac_memory.memory import SentenceTransformerEmbedder
    from mac_memory.memory.embedder import default_model_path
    from mac_memory.memory.shared_encoder import SharedEncoderPass

    embedder = SentenceTransformerEmbedder(num_threads=1)
    _check_shared_pass(_amortizer(Path(default_model_path()), max_length=256), embedder)
    # Reading 128 tokens, the amortizer would embed long chunks from fewer tokens than the embedder does.
    shared, reason = SharedEncoderPass.build(_amortizer(Path(default_model_path()), max_length=128), embedder)
    assert shared is None and "reads 256 tokens, the amortizer 128" in reason


# ----------------------------------------------------------------------------- refusals


def _prompted(path: Path) -> Any:
    """An embedder that passes every structural check but embeds ``passage: <text>``: only the probe sees it."""
    from mac_memory.memory import SentenceTransformerEmbedder

    class Prompted(SentenceTransformerEmbedder):
        def embed_documents(self, texts: Any) -> np.ndarray:
            return super().embed_documents([f"passage: {t}" for t in texts])

    embedder = Prompted(str(path), num_threads=1)
    embedder.model.max_seq_length = MAX_LENGTH
    return embedder


def _cls_pooling(path: Path) -> Any:
    embedder = _st_embedder(path)
    embedder.model[1] = type(embedder.model[1])(embedder.dim, pooling_mode="cls")
    return embedder


def _other_tokenizer(path: Path) -> Any:
    from mac_memory.tiny_models import build_tokenizer

    return _amortizer(path, tokenizer=build_tokenizer(vocab_size=300))


def _bench_hash_embedder(path: Path) -> Any:
    from mac_memory.bench.models import HashEmbedder

    return HashEmbedder()


REFUSALS: dict[str, tuple[Callable[..., Any] | None, Callable[..., Any] | None, str]] = {
    # row: (amortizer from (bert path, other bert path) or None = the tiny one, embedder or None, reason)
    "backbone trainable": (lambda p, q: _amortizer(p, freeze=False), None, "backbone is trainable"),
    "other weights": (lambda p, q: _amortizer(q), None, "different weights"),
    "other tokenizer": (lambda p, q: _other_tokenizer(p), None, "tokenizer is not the amortizer's"),
    "longer embedder": (None, lambda p: _st_embedder(p, max_seq_length=None), "the amortizer 64"),
    "cls pooling": (None, _cls_pooling, "does not mean-pool"),
    "not sentence-transformers": (None, _bench_hash_embedder, "not a SentenceTransformerEmbedder"),
    "embeds something else": (None, _prompted, "probe's embeddings differ"),
}


@pytest.mark.parametrize("row", list(REFUSALS))
def test_sharing_is_refused_when_the_models_differ(row, bert, tiny_path):
    """Each difference alone refuses sharing, and for its own reason (so every check is exercised)."""
    from mac_memory.memory.shared_encoder import SharedEncoderPass

    make_amortizer, make_embedder, expected = REFUSALS[row]
    other = tiny_path("bert", seed=1)  # same config and tokenizer, other weights
    amortizer = make_amortizer(bert, other) if make_amortizer else _amortizer(bert)
    embedder = make_embedder(bert) if make_embedder else _st_embedder(bert)
    shared, reason = SharedEncoderPass.build(amortizer, embedder)
    assert shared is None
    assert expected in reason


def test_sharing_is_refused_for_other_amortizer_kinds(make_mac, bert):
    from mac_memory.memory.shared_encoder import SharedEncoderPass

    shared, reason = SharedEncoderPass.build(make_mac("kv_anchored", "gpt2").amortizer, _st_embedder(bert))
    assert shared is None and "not an encoder amortizer" in reason


# ----------------------------------------------------------------------------- MACMemory


def _records(memory: Any) -> dict[str, tuple[str, np.ndarray, str]]:
    """Every record: id → (text, embedding, modulation blob)."""
    from mac_memory.memory import store as S

    got = memory.store.collection.get(include=["documents", "embeddings", "metadatas"])
    return {
        cid: (doc, np.asarray(emb), md[S.K_MODULATION])
        for cid, doc, emb, md in zip(
            got["ids"], got["documents"], got["embeddings"], got["metadatas"], strict=True
        )
    }


class _Calls:
    """Counts forward calls of a module from now on."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        self._handle = module.register_forward_hook(lambda *_: self._count())

    def _count(self) -> None:
        self.n += 1

    def close(self) -> None:
        self._handle.remove()


@pytest.fixture
def open_memory(bert: Path) -> Callable[..., Any]:
    import chromadb
    from chromadb.config import Settings

    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))

    def make(mac: Any, embedder: Any, **kwargs: Any) -> Any:
        from mac_memory.memory import MACMemory

        kwargs.setdefault("collection", f"t_{uuid.uuid4().hex[:12]}")
        return MACMemory(
            client=client, model=mac, embedder=embedder, amortize_batch_size=2, show_progress=False, **kwargs
        )

    return make


def test_add_texts_with_one_pass_stores_what_two_passes_store(make_mac, open_memory, bert):
    """Same records either way; with sharing, the embedder's model never reads a written chunk."""
    mac = make_mac("encoder", "gpt2", freeze_backbone=True).eval()
    embedder = _st_embedder(bert)
    shared = open_memory(mac, embedder)
    separate = open_memory(mac, embedder, share_encoder_pass=False)
    assert shared.shares_encoder_pass and not separate.shares_encoder_pass

    docs = [
        "Velmora Quistan was born in Ostravel.",
        "Paris is the capital of France. " * 30,
        "Kado Fen plays.",
    ]
    runs = {}
    for name, memory in (("shared", shared), ("separate", separate)):
        embedder_calls, backbone_calls = _Calls(embedder.model[0]), _Calls(mac.amortizer.backbone)
        ids = memory.add_texts(docs, ids=["a", "b", "c"])
        runs[name] = (ids, _records(memory), embedder_calls.n, backbone_calls.n)
        embedder_calls.close()
        backbone_calls.close()

    (ids_a, recs_a, emb_calls_a, bb_calls_a), (ids_b, recs_b, emb_calls_b, bb_calls_b) = (
        runs["shared"],
        runs["separate"],
    )
    assert ids_a == ids_b and recs_a.keys() == recs_b.keys() and len(recs_a) > len(docs)  # "b" is chunked
    for cid, (text, emb, blob) in recs_a.items():
        text_b, emb_b, blob_b = recs_b[cid]
        assert text == text_b and blob == blob_b
        assert np.allclose(emb, emb_b, atol=1e-5, rtol=0)
    batches = -(-len(recs_a) // 2)  # amortize_batch_size=2
    assert (emb_calls_a, bb_calls_a) == (0, batches)
    assert emb_calls_b > 0 and bb_calls_b == batches


def test_memory_falls_back_to_two_passes_when_the_backbone_trains(make_mac, open_memory, bert):
    mac = make_mac("encoder", "gpt2", freeze_backbone=False).eval()
    embedder = _st_embedder(bert)
    memory = open_memory(mac, embedder)
    assert not memory.shares_encoder_pass
    calls = _Calls(embedder.model[0])
    memory.add_texts(TEXTS[:2], ids=["a", "b"])
    assert calls.n > 0
    stored = _records(memory)
    expected = embedder.embed_documents([stored[f"default/{i}"][0] for i in "ab"])
    assert np.allclose(np.stack([stored[f"default/{i}"][1] for i in "ab"]), expected, atol=1e-5, rtol=0)


def test_reindex_to_a_new_embedder_uses_the_shared_pass(make_mac, open_memory, bert, tiny_path):
    """A memory embedded by another model is re-embedded (and re-amortized) in one pass per batch."""
    mac = make_mac("encoder", "gpt2", freeze_backbone=True).eval()
    embedder = _st_embedder(bert)
    old = open_memory(mac, _st_embedder(tiny_path("bert", seed=1)))  # same width, other model and name
    old.add_texts(TEXTS[:2], ids=["a", "b"])
    new = open_memory(mac, embedder, collection=old.store.name, check_checkpoint=False)
    assert new.shares_encoder_pass
    calls = _Calls(embedder.model[0])
    assert new.reindex() == 2
    assert calls.n == 0
    stored = _records(new)
    texts = [stored[f"default/{i}"][0] for i in "ab"]
    assert np.allclose(
        np.stack([stored[f"default/{i}"][1] for i in "ab"]),
        embedder.embed_documents(texts),
        atol=1e-5,
        rtol=0,
    )


# ----------------------------------------------------------------------------- the benchmark


@pytest.mark.parametrize(
    ("amortizer", "embedder", "shares"), [("encoder", "minilm", True), ("encoder", "hash", False)]
)
def test_bench_encoder_models_share_the_pass_and_say_so(tmp_path, amortizer, embedder, shares):
    """``mac-memory bench --amortizer encoder`` measures MAC ingestion with one MiniLM pass per chunk."""
    from mac_memory.bench import ingestion
    from mac_memory.bench.config import BenchConfig
    from mac_memory.bench.models import BenchContext

    cfg = BenchConfig(
        models=("tiny",),
        amortizer=amortizer,
        embedder=embedder,
        isolation="none",
        threads=1,
        workdir=str(tmp_path),
    ).resolve()
    ctx = BenchContext(cfg, "tiny", tmp_path / "tiny")
    _, extra = ingestion._ingestor(ctx, "mac")
    assert extra["shared_encoder_pass"] is shares
