"""The document-stream format: exact round-trips, the real SQuAD-Seq files, and clear errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mac_memory.data import QA, Document, load_stream, read_stream, write_stream
from mac_memory.errors import DataFormatError

SQUAD_SEQ = Path("/work/shared/data/squad-seq")

DOCS = [
    Document(
        doc_id="d-0",
        title="Zürich",
        context="Zürich liegt am See.\nSecond line — with “quotes” and 日本語.",
        qas=(
            QA("d-0-q0", "Where is Zürich?", ("am See", "See"), metadata={"row": 7}),
            QA("d-0-q1", "What script?", ("日本語",)),
        ),
        metadata={"entity": "Zürich", "facts": {"b": 1, "a": [1, 2]}, "score": 0.5},
    ),
    Document(doc_id="d-1", context="A document to ingest, with no questions."),
]


@pytest.mark.parametrize("name", ["stream.jsonl", "stream.jsonl.gz"])
def test_round_trip_is_exact(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    assert write_stream(path, DOCS) == 2
    assert load_stream(path) == DOCS
    # The raw lines keep non-ASCII text as is and the format's keys first, in a fixed order.
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        first = fh.readline()
    assert "Zürich" in first
    assert list(json.loads(first))[:4] == ["doc_id", "title", "context", "qas"]


def test_gzip_output_is_byte_identical_and_detected_by_magic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_stream(a, DOCS)
    write_stream(b, DOCS)
    assert a.read_bytes() == b.read_bytes()  # no timestamp or file name in the gzip header
    renamed = tmp_path / "no_suffix.jsonl"
    renamed.write_bytes(a.read_bytes())
    assert load_stream(renamed) == DOCS


def test_whitespace_blank_lines_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    lines = [
        {"doc_id": "a", "context": "x", "qas": [{"qid": "q", "question": " Who? \n", "answers": [" Bo "]}]},
        {"doc_id": "b", "context": "y", "qas": []},
        {"doc_id": "c", "context": "z", "qas": []},
    ]
    path.write_text("\n" + "\n\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    docs = load_stream(path)
    assert [d.doc_id for d in docs] == ["a", "b", "c"]
    assert docs[0].qas[0].question == "Who?"
    assert docs[0].qas[0].answers == ("Bo",)
    assert [d.doc_id for d in load_stream(path, limit=2)] == ["a", "b"]
    assert load_stream(path, limit=0) == []


def test_qa_normalises_lists_and_whitespace() -> None:
    assert QA("q", " Who? ", [" Bo "]) == QA("q", "Who?", ("Bo",))  # type: ignore[arg-type]
    with pytest.raises(DataFormatError, match="answers"):
        QA("q", "Who?", "Bo")  # type: ignore[arg-type]


def _good(doc_id: str = "ok") -> dict:
    return {"doc_id": doc_id, "context": "text", "qas": [{"qid": "q1", "question": "Q?", "answers": ["a"]}]}


def _with(**changes: object) -> str:
    obj = _good("bad")
    for key, value in changes.items():
        if value is _DROP:
            obj.pop(key)
        else:
            obj[key] = value
    return json.dumps(obj)


def _qa(**changes: object) -> str:
    qa: dict = {"qid": "q2", "question": "Q?", "answers": ["a"]}
    for key, value in changes.items():
        if value is _DROP:
            qa.pop(key)
        else:
            qa[key] = value
    obj = _good("bad")
    obj["qas"].append(qa)  # the bad question is qas[1]
    return json.dumps(obj)


_DROP = object()


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ('{"doc_id": "bad", "context": ', "invalid JSON"),
        ("[1, 2, 3]", "JSON object"),
        (_with(doc_id=_DROP), "field 'doc_id'"),
        (_with(doc_id="  "), "field 'doc_id'"),
        (_with(doc_id=17), "field 'doc_id'"),
        (_with(context=_DROP), "field 'context'"),
        (_with(context=""), "field 'context'"),
        (_with(title=3), "field 'title'"),
        (_with(qas={"qid": "q"}), "field 'qas'"),
        (_with(qas=["not a question"]), "field 'qas[0]'"),
        (_qa(qid=_DROP), "field 'qas[1].qid'"),
        (_qa(question=" "), "field 'qas[1].question'"),
        (_qa(answers=[]), "field 'qas[1].answers'"),
        (_qa(answers="a"), "field 'qas[1].answers'"),
        (_qa(answers=[1]), "field 'qas[1].answers'"),
        (_qa(answers=["  "]), "field 'qas[1].answers'"),
        (_qa(answers=_DROP), "field 'qas[1].answers'"),
        (json.dumps(_good("ok")), "field 'doc_id' must be unique"),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path: Path, bad_line: str, needle: str) -> None:
    path = tmp_path / "broken.jsonl"
    # Line 1 valid, line 2 blank (still counted), line 3 bad.
    path.write_text(json.dumps(_good("ok")) + "\n\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        load_stream(path)
    message = str(info.value)
    assert message.startswith("broken.jsonl line 3: ")
    assert needle in message
    assert isinstance(info.value, ValueError)  # callers catching ValueError keep working
    # Validation is lazy: what comes before the bad line is still readable.
    assert [d.doc_id for d in load_stream(path, limit=1)] == ["ok"]


def test_error_message_shows_the_offending_value(tmp_path: Path) -> None:
    path = tmp_path / "squad_seq_test.jsonl"
    lines = [json.dumps(_good(f"d{i}")) for i in range(16)] + [_qa(answers=[])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        load_stream(path)
    assert str(info.value) == (
        "squad_seq_test.jsonl line 17: field 'qas[1].answers' must be a non-empty list of non-empty "
        "strings, got []"
    )


def test_corrupt_bytes_and_truncated_gzip(tmp_path: Path) -> None:
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(_good()).encode() + b"\n" + b'{"doc_id": "\xe9"}\n')
    with pytest.raises(DataFormatError, match="line 2: not valid UTF-8"):
        load_stream(latin)

    full = tmp_path / "full.jsonl.gz"
    write_stream(full, [Document(f"d{i}", "some context " * 50) for i in range(200)])
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(DataFormatError, match=r"cut\.jsonl\.gz .*cannot read or decompress"):
        load_stream(cut)


def test_write_refuses_what_read_would_refuse_and_leaves_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(DataFormatError, match="appears twice"):
        write_stream(path, [DOCS[1], DOCS[1]])
    with pytest.raises(DataFormatError, match="clash"):
        write_stream(path, [Document("x", "text", metadata={"context": "other"})])
    with pytest.raises(DataFormatError, match="JSON-serialisable"):
        write_stream(path, [Document("x", "text", metadata={"when": object()})])
    with pytest.raises(DataFormatError, match="non-empty"):
        write_stream(path, [Document("x", "text", (QA("q", "Q?", ()),))])
    assert list(tmp_path.iterdir()) == []  # atomic: nothing half-written, no temporary left over


def test_bad_arguments_fail_at_call_time(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_stream(path, DOCS)
    with pytest.raises(ValueError, match="limit"):
        read_stream(path, limit=-1)
    with pytest.raises(FileNotFoundError, match="missing"):
        read_stream(tmp_path / "missing.jsonl")


@pytest.mark.parametrize(
    ("name", "n_docs", "n_questions"),
    [
        ("squad_seq_test.jsonl.gz", 1665, 8611),
        ("squad_seq_val.jsonl.gz", 1171, 5588),
    ],
)
def test_real_squad_seq_files_load(name: str, n_docs: int, n_questions: int) -> None:
    path = SQUAD_SEQ / name
    if not path.exists():
        pytest.skip(f"{path} is not available on this machine")
    docs = load_stream(path)
    assert len(docs) == n_docs
    assert sum(len(d.qas) for d in docs) == n_questions
    assert len({d.doc_id for d in docs}) == n_docs
    for doc in docs:
        for qa in doc.qas:
            assert qa.question == qa.question.strip()
            assert all(answer in doc.context for answer in qa.answers)  # the README's promise
            assert isinstance(qa.metadata["row"], int)  # extra keys are kept, not dropped
    if name == "squad_seq_test.jsonl.gz":
        assert docs[0].doc_id == "dev-027-000"  # stream order is kept
        assert docs[0].title == "Immune_system"
