"""Storage building blocks of the memory component, without models: codec, chunking, metadata rules."""

from __future__ import annotations

import base64
import hashlib
import itertools

import numpy as np
import pytest
import torch

from mac_memory.errors import (
    ConfigError,
    CorruptModulationError,
    InvalidInputError,
    InvalidMetadataError,
    MACError,
    ModulationError,
)
from mac_memory.memory.chunking import Chunker
from mac_memory.memory.codec import (
    b64_to_modulation,
    decode_modulation,
    encode_modulation,
    encoded_size,
    modulation_to_b64,
)
from mac_memory.memory.store import check_collection_name, check_namespace, clean_metadata, combine_where
from mac_memory.tiny_models import build_tokenizer

RNG = np.random.default_rng(0)


def _x(shape=(4, 32), scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- codec


@pytest.mark.parametrize("shape", [(32,), (4, 32), (8, 256), (2, 3, 16), (1, 2, 3, 4)])
@pytest.mark.parametrize("codec", ["float16", "int8", "float32"])
def test_codec_round_trip(shape, codec):
    x = _x(shape, scale=3.0)
    blob = encode_modulation(x, codec)
    assert len(blob) == encoded_size(shape, codec)
    y = decode_modulation(blob)
    assert y.shape == x.shape and y.dtype == np.float32
    if codec == "float32":
        assert np.array_equal(x, y)
    elif codec == "float16":
        assert np.array_equal(y, x.astype(np.float16).astype(np.float32))
    else:
        # Per-token absmax scale: every value within half a quantisation step of the original.
        rows = x.reshape(-1, shape[-1])
        step = np.abs(rows).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(y.reshape(rows.shape) - rows) <= step / 2 + 1e-6)
    # Deterministic bytes: the same modulation always stores the same way.
    assert encode_modulation(x, codec) == blob


def test_codec_accepts_torch_and_sizes_shrink():
    x = torch.randn(8, 256)
    assert np.allclose(decode_modulation(encode_modulation(x)), x.numpy(), atol=1e-2)
    sizes = {c: encoded_size((8, 256), c) for c in ("float32", "float16", "int8")}
    assert sizes == {"float32": 8240, "float16": 4144, "int8": 2128}
    assert b64_to_modulation(modulation_to_b64(x, "int8")).shape == (8, 256)


def test_codec_int8_zero_rows():
    x = np.zeros((3, 8), np.float32)
    x[1] = 1.0
    assert np.array_equal(decode_modulation(encode_modulation(x, "int8")), x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("codec", ["float16", "int8", "float32"])
def test_codec_refuses_non_finite(bad, codec):
    x = _x()
    x[2, 5] = bad
    with pytest.raises(ModulationError, match="NaN/Inf"):
        encode_modulation(x, codec)


def test_codec_refuses_float16_overflow_and_bad_input():
    with pytest.raises(ModulationError, match="overflow float16"):
        encode_modulation(np.full((2, 4), 1e6, np.float32))
    assert np.allclose(decode_modulation(encode_modulation(np.full((2, 4), 1e6, np.float32), "int8")), 1e6)
    with pytest.raises(ModulationError, match="rank"):
        encode_modulation(np.zeros((1, 1, 1, 1, 1), np.float32))
    with pytest.raises(ModulationError, match="Unknown modulation codec"):
        encode_modulation(_x(), "bfloat8")
    assert issubclass(ModulationError, ValueError) and issubclass(CorruptModulationError, MACError)


@pytest.mark.parametrize("codec", ["float16", "int8"])
def test_codec_detects_every_single_byte_flip(codec):
    blob = encode_modulation(_x(), codec)
    for pos in range(len(blob)):  # header, shape, scales, payload and checksum alike
        tampered = bytearray(blob)
        tampered[pos] ^= 0x01
        with pytest.raises(CorruptModulationError):
            decode_modulation(bytes(tampered))


@pytest.mark.parametrize("cut", [0, 1, 7, 12, 40, -33, -1])
def test_codec_detects_truncation(cut):
    blob = encode_modulation(_x())
    with pytest.raises(CorruptModulationError):
        decode_modulation(blob[:cut])
    with pytest.raises(CorruptModulationError):
        decode_modulation(blob + b"\x00")


def test_codec_checks_header_even_with_a_recomputed_checksum():
    """A forged blob (checksum recomputed after editing) still fails the structural checks."""
    blob = encode_modulation(_x((4, 32)))
    body = bytearray(blob[:-32])

    def forged(b: bytearray) -> bytes:
        return bytes(b) + hashlib.sha256(bytes(b)).digest()

    bad_magic = bytearray(body)
    bad_magic[0:4] = b"XXXX"
    with pytest.raises(CorruptModulationError, match="magic"):
        decode_modulation(forged(bad_magic))
    bad_shape = bytearray(body)
    bad_shape[8] = 5  # claims (5, 32): the payload no longer fits the shape
    with pytest.raises(CorruptModulationError, match="should be"):
        decode_modulation(forged(bad_shape))
    bad_code = bytearray(body)
    bad_code[5] = 9
    with pytest.raises(CorruptModulationError, match="invalid header"):
        decode_modulation(forged(bad_code))


def test_codec_base64_errors():
    with pytest.raises(CorruptModulationError, match="base64"):
        b64_to_modulation("not base64 !!")
    with pytest.raises(CorruptModulationError, match="missing its modulation"):
        b64_to_modulation(None)
    text = modulation_to_b64(_x())
    chopped = base64.b64encode(base64.b64decode(text)[:-5]).decode()
    with pytest.raises(CorruptModulationError):
        b64_to_modulation(chopped)


# ----------------------------------------------------------------------------- chunking


def test_char_chunking_spans_overlap_and_cover():
    text = " ".join(f"word{i}" for i in range(300))
    chunks = Chunker(size=100, overlap=20, unit="char").split(text)
    assert len(chunks) > 3
    assert [c.index for c in chunks] == list(range(len(chunks)))
    covered = np.zeros(len(text), bool)
    for c in chunks:
        assert text[c.start : c.end] == c.text and 0 < len(c.text) <= 100
        covered[c.start : c.end] = True
    assert all(covered[i] for i, ch in enumerate(text) if not ch.isspace())
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end  # consecutive chunks overlap


def test_token_chunking_respects_token_budget():
    tok = build_tokenizer()
    text = "Velmora Quistan was born in Ostravel in 1871. " * 12
    chunks = Chunker(size=24, overlap=6, tokenizer=tok).split(text)
    assert len(chunks) > 2
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert len(tok(c.text, add_special_tokens=False)["input_ids"]) <= 24 + 1  # +1: BPE boundary merge
    assert chunks[-1].end == len(text.rstrip())
    short = Chunker(size=24, overlap=6, tokenizer=tok).split("  A short note.  ")
    assert [(c.text, c.start, c.end) for c in short] == [("A short note.", 2, 15)]


@pytest.mark.parametrize(
    "kwargs",
    [dict(size=0), dict(size=10, overlap=10), dict(size=10, unit="word"), dict(size=10, unit="token")],
)
def test_chunker_config_errors(kwargs):
    with pytest.raises(ConfigError):
        Chunker(**kwargs)


# ----------------------------------------------------------------------------- metadata and names


def test_clean_metadata_converts_numpy_and_drops_none():
    md = clean_metadata(
        {
            "a": np.float32(1.5),
            "b": np.int64(3),
            "c": np.bool_(True),
            "d": None,
            "e": (1, 2),
            "f": np.array([0.5, 1.5]),
        },
        "metadatas[0]",
    )
    assert md == {"a": 1.5, "b": 3, "c": True, "e": [1, 2], "f": [0.5, 1.5]}
    assert type(md["a"]) is float and type(md["b"]) is int and type(md["c"]) is bool


@pytest.mark.parametrize(
    "md, match",
    [
        ({"x": {"y": 1}}, "nested dict"),
        ({"x": b"raw"}, "bytes"),
        ({"x": []}, "non-empty"),
        ({"x": [1, "a"]}, "one scalar type"),
        ({"mac_namespace": "evil"}, "reserved"),
        ({"chroma:document": "x"}, "reserved"),
        ({"": 1}, "non-empty strings"),
        ({"x": float("nan")}, "finite"),
        ({"x": object()}, "object"),
        ("not a dict", "must be a dict"),
    ],
)
def test_clean_metadata_refuses(md, match):
    with pytest.raises(InvalidMetadataError, match=match):
        clean_metadata(md, "metadatas[3]")


def test_names_and_where():
    assert check_collection_name("mac_memory") == "mac_memory"
    for bad in ["m", "a b c", "-abc", "x" * 513, 5]:
        with pytest.raises(ConfigError, match="collection="):
            check_collection_name(bad)
    assert check_namespace("user-1@example.com") == "user-1@example.com"
    for bad in ["", "  ", "a/b", "a\nb", None, "x" * 300]:
        with pytest.raises(InvalidInputError, match="namespace="):
            check_namespace(bad)
    assert combine_where({"a": 1}, None) == {"a": 1}
    assert combine_where({"a": 1}, {"b": 2}) == {"$and": [{"a": 1}, {"b": 2}]}


def test_heavy_imports_stay_out_of_import_time():
    """``import mac_memory`` and the CLI table never import chromadb or sentence-transformers."""
    import subprocess
    import sys

    code = (
        "import sys, mac_memory, mac_memory.cli.memory as c\n"
        "assert set(c.COMMANDS) == {'ingest', 'ask', 'reindex', 'stats'}\n"
        "heavy = {'chromadb', 'sentence_transformers', 'torch'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from mac_memory.memory import MACMemory, Answer, Source, Hit\n"
        "import mac_memory.memory as m\n"
        "assert m.__all__ == ['Answer', 'AnswerStream', 'Embedder', 'Hit', 'MACMemory', 'Recall',\n"
        "                     'SentenceTransformerEmbedder', 'Source']\n"
        "heavy = {'chromadb', 'sentence_transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
