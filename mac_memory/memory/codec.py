"""Modulation ⇄ bytes: the storage format of one document's memory tokens.

A stored modulation is self-describing and self-checking, because it travels inside a Chroma record
(possibly on a server, possibly copied between machines) and a silently damaged one would steer the
frozen LM without anyone noticing::

    offset  size        field
    0       4           magic  b"MACM"
    4       1           format version (1)
    5       1           dtype code: 1 = float16, 2 = int8 with a float32 scale per token, 3 = float32
    6       1           rank r (1..4)
    7       1           reserved (0)
    8       4 * r       shape, uint32 little-endian
    ...     payload     float16/float32: the values (little-endian, C order)
                        int8: prod(shape[:-1]) float32 scales, then the int8 values
    end-32  32          sha256 of every byte before it

``float16`` is the default (half the bytes of float32, well within the precision the aggregator uses);
``int8`` halves it again with a per-token absmax scale (max error ``scale / 2`` per value). Non-finite
values are refused at encode time; any header, length or checksum problem, and any NaN/Inf in what
decodes (a forged blob), is refused at decode time with
:class:`~mac_memory.errors.CorruptModulationError`, never "repaired".

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((4, 32)).astype("float32")
    >>> blob = encode_modulation(x, "int8")
    >>> len(blob)  # 8 header + 4*2 shape + 4*4 scales + 128 values + 32 checksum
    192
    >>> bool(np.abs(decode_modulation(blob) - x).max() < 0.05)
    True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import Any

import numpy as np

from ..errors import CorruptModulationError, ModulationError

__all__ = [
    "CODECS",
    "b64_to_modulation",
    "decode_modulation",
    "encode_modulation",
    "encoded_size",
    "modulation_to_b64",
]

MAGIC = b"MACM"
VERSION = 1
CODECS: dict[str, int] = {"float16": 1, "int8": 2, "float32": 3}
_NAMES = {code: name for name, code in CODECS.items()}
_DIGEST = 32
_FP16_MAX = 65504.0
_HEADER = struct.Struct("<4sBBBB")  # magic, version, dtype code, rank, reserved


def _as_float32(modulation: Any) -> np.ndarray:
    """A C-contiguous float32 numpy copy of a torch tensor or array-like (no torch import needed)."""
    if hasattr(modulation, "detach"):  # torch.Tensor, without importing torch here
        modulation = modulation.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(modulation, dtype=np.float32))


def encode_modulation(modulation: Any, codec: str = "float16") -> bytes:
    """Bytes for one modulation (e.g. ``(T, d_mem)``); raises :class:`ModulationError` on NaN/Inf."""
    if codec not in CODECS:
        raise ModulationError(f"Unknown modulation codec {codec!r}; choose one of {sorted(CODECS)}.")
    x = _as_float32(modulation)
    if not 1 <= x.ndim <= 4 or x.size == 0:
        raise ModulationError(f"A modulation must be a non-empty array of rank 1..4, got shape {x.shape}.")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise ModulationError(
            f"Refusing to store a modulation with {bad} NaN/Inf values (shape {x.shape}); "
            "the amortization network produced non-finite output for this document."
        )
    header = _HEADER.pack(MAGIC, VERSION, CODECS[codec], x.ndim, 0) + struct.pack(f"<{x.ndim}I", *x.shape)
    if codec == "float16":
        if float(np.abs(x).max()) > _FP16_MAX:
            # Casting would give inf, and a stored inf would poison every answer that reads it.
            raise ModulationError(
                f"Modulation values up to {float(np.abs(x).max()):.3g} overflow float16; "
                "use codec='int8' or codec='float32'."
            )
        payload = x.astype("<f2").tobytes()
    elif codec == "float32":
        payload = x.astype("<f4").tobytes()
    else:  # int8, one absmax scale per token (row of the last axis)
        rows = x.reshape(-1, x.shape[-1])  # (prod(shape[:-1]), d)
        scales = (np.abs(rows).max(axis=1) / 127.0).astype("<f4")  # (rows,)
        safe = np.where(scales > 0, scales, 1.0)[:, None]
        q = np.clip(np.rint(rows / safe), -127, 127).astype(np.int8)
        payload = scales.tobytes() + q.tobytes()
    body = header + payload
    return body + hashlib.sha256(body).digest()


def encoded_size(shape: tuple[int, ...], codec: str = "float16") -> int:
    """Bytes :func:`encode_modulation` produces for ``shape`` (before base64), without encoding anything."""
    n = int(np.prod(shape))
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    payload = {"float16": 2 * n, "float32": 4 * n, "int8": n + 4 * rows}[codec]
    return _HEADER.size + 4 * len(shape) + payload + _DIGEST


def decode_modulation(blob: bytes) -> np.ndarray:
    """The float32 array stored in ``blob``; :class:`CorruptModulationError` unless every check passes."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CorruptModulationError(f"A stored modulation must be bytes, got {type(blob).__name__}.")
    blob = bytes(blob)
    if len(blob) < _HEADER.size + _DIGEST:
        raise CorruptModulationError(
            f"Stored modulation is truncated: {len(blob)} bytes is shorter than "
            "any valid one. Re-add the document or run `mac-memory reindex`."
        )
    body, digest = blob[:-_DIGEST], blob[-_DIGEST:]
    # Checksum first: a flipped byte anywhere (header included) is reported as what it is.
    if hashlib.sha256(body).digest() != digest:
        raise CorruptModulationError(
            "Stored modulation failed its sha256 check (tampered with or truncated). "
            "Re-add the document or run `mac-memory reindex`."
        )
    magic, version, code, rank, _ = _HEADER.unpack_from(body)
    if magic != MAGIC:
        raise CorruptModulationError(f"Not a mac-memory modulation (magic {magic!r}).")
    if version > VERSION:
        raise CorruptModulationError(
            f"Modulation format version {version} is newer than this mac-memory "
            f"reads ({VERSION}); upgrade mac-memory."
        )
    if code not in _NAMES or not 1 <= rank <= 4:
        raise CorruptModulationError(
            f"Stored modulation has an invalid header (dtype code {code}, rank {rank})."
        )
    offset = _HEADER.size + 4 * rank
    if len(body) < offset:
        raise CorruptModulationError("Stored modulation is truncated inside its header.")
    shape = struct.unpack_from(f"<{rank}I", body, _HEADER.size)
    expected = encoded_size(shape, _NAMES[code]) - _DIGEST
    if len(body) != expected:
        raise CorruptModulationError(
            f"Stored modulation of shape {shape} ({_NAMES[code]}) should be "
            f"{expected + _DIGEST} bytes, got {len(blob)}."
        )
    payload = memoryview(body)[offset:]
    if code == CODECS["float16"]:
        out = np.frombuffer(payload, dtype="<f2").astype(np.float32)
    elif code == CODECS["float32"]:
        out = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    else:
        rows = int(np.prod(shape[:-1])) if rank > 1 else 1
        scales = np.frombuffer(payload[: 4 * rows], dtype="<f4")
        q = np.frombuffer(payload[4 * rows :], dtype=np.int8).reshape(rows, shape[-1])
        out = q.astype(np.float32) * scales[:, None]
    if not np.isfinite(out).all():
        # Encoding refuses NaN/Inf, so these bytes were forged (checksum recomputed) or written by
        # something else; a non-finite value would poison every answer that reads it.
        raise CorruptModulationError(
            f"Stored modulation holds {int((~np.isfinite(out)).sum())} NaN/Inf values; refusing to use it."
        )
    return out.reshape(shape)


def modulation_to_b64(modulation: Any, codec: str = "float16") -> str:
    """:func:`encode_modulation` as an ASCII string (Chroma metadata holds str, not bytes)."""
    return base64.b64encode(encode_modulation(modulation, codec)).decode("ascii")


def b64_to_modulation(text: Any) -> np.ndarray:
    """Inverse of :func:`modulation_to_b64`; malformed base64 is a :class:`CorruptModulationError` too."""
    if not isinstance(text, str):
        raise CorruptModulationError(
            f"Stored modulation must be a base64 string, got {type(text).__name__} "
            "(the record is missing its modulation)."
        )
    try:
        blob = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise CorruptModulationError(f"Stored modulation is not valid base64 ({exc}).") from exc
    return decode_modulation(blob)
