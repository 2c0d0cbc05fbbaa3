"""The document-stream format: one JSON object per line, one document (with its questions) per object.

Every dataset mac-memory trains or evaluates on — SQuAD-Seq and the synthetic world alike — is a stream
of :class:`Document` records in JSON Lines, optionally gzip-compressed::

    {"doc_id": "dev-027-000", "title": "Immune_system", "context": "The immune system is ...",
     "qas": [{"qid": "5726e65e...", "question": "What is the immune system?",
              "answers": ["a system of many ...", "..."], "row": 6477}]}

``title`` is optional (default ``""``) and so is ``qas`` (a document to ingest needs no questions).
Any other key on a line is kept in ``metadata`` (``Document.metadata`` for the document,
``QA.metadata`` for a question, e.g. SQuAD-Seq's ``row``), so reading then writing a file loses nothing.

Example:
    >>> doc = Document("d1", "Velmora Quistan was born in Belby.",
    ...                (QA("d1-q0", "Where was Velmora Quistan born?", ("Belby",)),))
    >>> write_stream("/tmp/example.jsonl.gz", [doc])
    1
    >>> load_stream("/tmp/example.jsonl.gz") == [doc]
    True
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import DataFormatError

logger = logging.getLogger(__name__)

__all__ = ["QA", "Document", "load_stream", "read_stream", "write_stream"]

PathLike = str | os.PathLike[str]

_GZIP_MAGIC = b"\x1f\x8b"
# Keys the format itself defines; anything else on a line is metadata.
_DOC_KEYS = ("doc_id", "title", "context", "qas")
_QA_KEYS = ("qid", "question", "answers")


@dataclass(frozen=True)
class QA:
    """One question about a document and all its reference answers (scored max-over-references).

    ``question`` and ``answers`` are stripped of surrounding whitespace on construction (a few SQuAD
    questions carry stray spaces), so a written-then-read stream compares equal to the original.
    """

    qid: str
    question: str
    answers: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    """Extra keys of the question's JSON object (e.g. SQuAD-Seq's ``row``; the synthetic attribute)."""

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise through object.__setattr__ so lists passed by callers become
        # tuples (otherwise a QA built from a list would never equal the same QA read from disk).
        if not isinstance(self.question, str):
            raise DataFormatError(f"QA {self.qid!r}: question must be a string, got {_short(self.question)}")
        if isinstance(self.answers, str) or not all(isinstance(a, str) for a in self.answers):
            raise DataFormatError(
                f"QA {self.qid!r}: answers must be a sequence of strings, got {_short(self.answers)}"
            )
        object.__setattr__(self, "question", self.question.strip())
        object.__setattr__(self, "answers", tuple(a.strip() for a in self.answers))


@dataclass(frozen=True)
class Document:
    """A document of the stream: its text, its questions and any extra information from the file."""

    doc_id: str
    context: str
    qas: tuple[QA, ...] = ()
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    """Extra keys of the document's JSON object (e.g. the synthetic world's ``entity`` and ``facts``)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "qas", tuple(self.qas))


# --------------------------------------------------------------------------------------------- reading


def _short(value: Any, limit: int = 60) -> str:
    """repr() of an offending value, cut so a 10 kB context does not flood the error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _LineError(Exception):
    """Internal: a field-level problem, turned into a DataFormatError with file and line by the reader."""


def _finite_float(text: str) -> float:
    """``parse_float`` for json.loads: a number too large for a float (``1e999``) is refused, not inf."""
    value = float(text)
    if not math.isfinite(value):
        raise _LineError(f"the number {_short(text, 20)} is out of range for a float")
    return value


def _no_constant(name: str) -> Any:
    """``parse_constant`` for json.loads: NaN/Infinity are not JSON (and write_stream refuses them)."""
    raise _LineError(f"{name} is not a JSON value (NaN and Infinity are refused)")


def _surrogate_field(value: Any, where: str = "") -> str | None:
    """The field (``context``, ``qas[0].question``, ...) of the first str that is not valid Unicode.

    JSON can spell a lone surrogate (``"\\udc80"``), which Python accepts but nothing downstream can
    encode (tokenizers, Chroma, ``write_stream``); it is reported where it is read instead.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "value"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{where}.{key}" if where else str(key)
            found = _surrogate_field(key, sub) or _surrogate_field(item, sub)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _surrogate_field(item, f"{where}[{i}]")
            if found:
                return found
    return None


def _bad(field_name: str, need: str, value: Any) -> _LineError:
    return _LineError(f"field '{field_name}' {need}, got {_short(value)}")


def _nonempty_str(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise _LineError(f"field '{where}' is missing (must be a non-empty string)")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise _bad(where, "must be a non-empty string", value)
    return value


def _parse_qa(raw: Any, i: int) -> QA:
    where = f"qas[{i}]"
    if not isinstance(raw, dict):
        raise _bad(where, "must be an object", raw)
    qid = _nonempty_str(raw, "qid", f"{where}.qid")
    question = _nonempty_str(raw, "question", f"{where}.question")
    answers = raw.get("answers")
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(a, str) and a.strip() for a in answers)
    ):
        raise _bad(f"{where}.answers", "must be a non-empty list of non-empty strings", answers)
    extra = {k: v for k, v in raw.items() if k not in _QA_KEYS}
    return QA(qid=qid, question=question, answers=tuple(answers), metadata=extra)


def _parse_document(obj: Any) -> Document:
    if not isinstance(obj, dict):
        raise _LineError(f"the line must be a JSON object, got {_short(obj)}")
    doc_id = _nonempty_str(obj, "doc_id", "doc_id")
    context = _nonempty_str(obj, "context", "context")
    title = obj.get("title", "")
    if not isinstance(title, str):
        raise _bad("title", "must be a string", title)
    raw_qas = obj.get("qas", [])
    if not isinstance(raw_qas, list):
        raise _bad("qas", "must be a list of question objects", raw_qas)
    qas = tuple(_parse_qa(raw, i) for i, raw in enumerate(raw_qas))
    extra = {k: v for k, v in obj.items() if k not in _DOC_KEYS}
    return Document(doc_id=doc_id, context=context, qas=qas, title=title, metadata=extra)


def _open_binary(path: Path) -> BinaryIO:
    """Open for reading, decompressing gzip when the name ends in .gz or the file starts with its magic."""
    with open(path, "rb") as probe:
        magic = probe.read(2)
    if path.suffix == ".gz" or magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def read_stream(path: PathLike, *, limit: int | None = None) -> Iterator[Document]:
    """Yield the documents of a JSONL(.gz) stream in file order, validating every line.

    Blank lines are skipped. A malformed line raises :class:`~mac_memory.errors.DataFormatError`
    naming the file, the 1-based line number and the field, e.g.
    ``test.jsonl.gz line 17: field 'qas[2].answers' must be a non-empty list of non-empty strings, got []``.
    Validation is lazy: documents before the bad line have already been yielded.

    Args:
        path: a ``.jsonl`` or ``.jsonl.gz`` file (gzip is also detected by its magic bytes).
        limit: stop after this many documents (None = all).
    """
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no document stream at {path}")
    # Arguments are checked now; the file is read from the first next() on (a plain generator would
    # defer even these checks to then).
    return _read(path, limit)


def _read(path: Path, limit: int | None) -> Iterator[Document]:
    name = path.name
    seen: dict[str, int] = {}  # doc_id -> line, to say where the first copy was
    if limit == 0:
        return
    count = 0
    lineno = 0
    with _open_binary(path) as fh:
        try:
            for lineno, raw_line in enumerate(fh, start=1):
                if not raw_line.strip():
                    continue
                try:
                    line = raw_line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(f"{name} line {lineno}: not valid UTF-8 ({e.reason})") from None
                try:
                    obj = json.loads(line, parse_float=_finite_float, parse_constant=_no_constant)
                    bad_text = _surrogate_field(obj) if "\\ud" in line.lower() else None
                    if bad_text:
                        raise _LineError(f"field '{bad_text}' is not valid Unicode text (a lone surrogate)")
                    doc = _parse_document(obj)
                except json.JSONDecodeError as e:
                    raise DataFormatError(
                        f"{name} line {lineno}: invalid JSON ({e.msg} at column {e.colno})"
                    ) from None
                except RecursionError:
                    raise DataFormatError(f"{name} line {lineno}: invalid JSON (nested too deeply)") from None
                except _LineError as e:
                    raise DataFormatError(f"{name} line {lineno}: {e}") from None
                if doc.doc_id in seen:
                    raise DataFormatError(
                        f"{name} line {lineno}: field 'doc_id' must be unique in the file, got "
                        f"{doc.doc_id!r} (already on line {seen[doc.doc_id]})"
                    )
                seen[doc.doc_id] = lineno
                yield doc
                count += 1
                if limit is not None and count >= limit:
                    return
        except (EOFError, OSError, zlib.error) as e:
            # A truncated or corrupt gzip member (EOFError, BadGzipFile) surfaces mid-iteration; name it.
            raise DataFormatError(f"{name} after line {lineno}: cannot read or decompress ({e})") from e


def load_stream(path: PathLike, limit: int | None = None) -> list[Document]:
    """Read a whole stream into a list (see :func:`read_stream`)."""
    return list(read_stream(path, limit=limit))


# --------------------------------------------------------------------------------------------- writing


def _sorted_json(value: Any) -> Any:
    """Nested dicts with sorted keys, so metadata written twice gives the same bytes."""
    if isinstance(value, dict):
        return {k: _sorted_json(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted_json(v) for v in value]
    return value


def _extras(metadata: dict[str, Any], reserved: tuple[str, ...], owner: str) -> dict[str, Any]:
    clash = sorted(k for k in metadata if k in reserved)
    if clash:
        raise DataFormatError(f"{owner}: metadata keys {clash} clash with the format's own fields")
    if not all(isinstance(k, str) for k in metadata):
        raise DataFormatError(f"{owner}: metadata keys must be strings")
    return {k: _sorted_json(metadata[k]) for k in sorted(metadata)}


def _document_record(doc: Document) -> dict[str, Any]:
    """The JSON object of one document, keys in a fixed order: the format's fields, then sorted extras."""
    if not isinstance(doc.doc_id, str) or not doc.doc_id.strip():
        raise DataFormatError(f"document {doc.doc_id!r}: doc_id must be a non-empty string")
    if not isinstance(doc.title, str):
        raise DataFormatError(f"document {doc.doc_id!r}: title must be a string, got {_short(doc.title)}")
    if not isinstance(doc.context, str) or not doc.context.strip():
        raise DataFormatError(f"document {doc.doc_id!r}: context must be a non-empty string")
    qas = []
    for i, qa in enumerate(doc.qas):
        owner = f"document {doc.doc_id!r} qas[{i}]"
        if not qa.qid or not qa.question or not qa.answers or not all(qa.answers):
            # Refuse what read_stream would refuse: a file we write must always load back.
            raise DataFormatError(f"{owner}: qid, question and every answer must be non-empty")
        qas.append(
            {
                "qid": qa.qid,
                "question": qa.question,
                "answers": list(qa.answers),
                **_extras(qa.metadata, _QA_KEYS, owner),
            }
        )
    record: dict[str, Any] = {"doc_id": doc.doc_id, "title": doc.title, "context": doc.context, "qas": qas}
    record.update(_extras(doc.metadata, _DOC_KEYS, f"document {doc.doc_id!r}"))
    return record


def write_stream(path: PathLike, documents: Iterable[Document]) -> int:
    """Write documents as a JSONL stream (gzip when ``path`` ends in ``.gz``); return how many.

    Output is deterministic (fixed key order, gzip header without name or time), UTF-8 with
    ``ensure_ascii=False``, and reads back equal with :func:`read_stream` (metadata as JSON has it:
    tuples come back as lists, dict keys sorted). The file is written to a
    temporary name and moved into place, so a crash never leaves a half-written stream behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    n = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            # mtime=0 and an empty embedded filename: same documents -> byte-identical .gz files.
            sink: BinaryIO = (
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)  # type: ignore[assignment]
                if path.suffix == ".gz"
                else raw
            )
            with io.TextIOWrapper(sink, encoding="utf-8", newline="\n") as out:
                for doc in documents:
                    if doc.doc_id in seen:
                        raise DataFormatError(f"document {doc.doc_id!r}: doc_id appears twice in the stream")
                    seen.add(doc.doc_id)
                    try:
                        # allow_nan=False: NaN/Infinity are not JSON, other readers would choke on them.
                        record = _document_record(doc)
                        line = json.dumps(record, ensure_ascii=False, allow_nan=False)
                    except (TypeError, ValueError, RecursionError) as e:
                        if isinstance(e, DataFormatError):
                            raise
                        raise DataFormatError(
                            f"document {doc.doc_id!r}: metadata is not JSON-serialisable ({e})"
                        ) from e
                    try:
                        line.encode("utf-8")
                    except UnicodeEncodeError:
                        raise DataFormatError(
                            f"document {doc.doc_id!r}: field '{_surrogate_field(record)}' is not valid "
                            "Unicode text (a lone surrogate), which UTF-8 cannot store"
                        ) from None
                    out.write(line)
                    out.write("\n")
                    n += 1
        # mkstemp creates 0600 files; a data file should be readable like any other.
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.debug("wrote %d documents to %s", n, path)
    return n
