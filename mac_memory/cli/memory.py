"""``mac-memory ingest | ask | reindex | stats``: the memory component from the command line.

:data:`COMMANDS` maps each subcommand to ``(help, add_arguments(parser), run(namespace) -> exit code)``
for ``mac_memory.cli``. Nothing heavy is imported until a command runs, so ``--help`` stays instant.

Example::

    mac-memory ingest notes/ papers.jsonl --path ./mem --checkpoint ckpt/ --namespace me
    mac-memory ask "Where was Velmora Quistan born?" -k 8 --path ./mem --checkpoint ckpt/ --namespace me
    mac-memory reindex --path ./mem --checkpoint new-ckpt/
    mac-memory stats --path ./mem --checkpoint ckpt/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["COMMANDS"]

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
STREAM_SUFFIXES = (".jsonl", ".jsonl.gz")
INGEST_BATCH = 256


def _memory_args(parser: argparse.ArgumentParser, namespace: bool = True) -> None:
    parser.add_argument(
        "--path",
        default=None,
        help="directory of the embedded Chroma (default: the user data dir, "
        "$MAC_MEMORY_HOME or ~/.local/share/mac-memory/chroma)",
    )
    parser.add_argument("--host", default=None, help="Chroma server host (instead of --path)")
    parser.add_argument("--port", type=int, default=None, help="Chroma server port (default: 8000)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="MAC checkpoint directory (default: the trained default checkpoint)",
    )
    parser.add_argument("--collection", default="mac_memory", help="Chroma collection (default: mac_memory)")
    if namespace:
        parser.add_argument("--namespace", default="default", help="memory namespace (default: default)")
    parser.add_argument("--device", default=None, help="torch device for the networks (default: auto)")


def _open(ns: argparse.Namespace, **kwargs: Any) -> Any:
    from ..memory import MACMemory

    return MACMemory(
        ns.path,
        checkpoint=ns.checkpoint,
        collection=ns.collection,
        host=ns.host,
        port=ns.port,
        device=ns.device,
        **kwargs,
    )


# ----------------------------------------------------------------------------- ingest


def _ingest_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="text/markdown files, JSONL(.gz) document streams, or directories of them",
    )
    _memory_args(parser)
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress bars (default: for large ingests)",
    )


def _files(paths: list[str]) -> Iterator[Path]:
    from ..errors import InvalidInputError

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(
                p
                for p in path.rglob("*")
                if p.is_file() and p.name.lower().endswith(TEXT_SUFFIXES + STREAM_SUFFIXES)
            )
        elif path.is_file():
            yield path
        else:
            raise InvalidInputError(f"{raw}: no such file or directory.")


def _flat_metadata(extra: dict[str, Any]) -> dict[str, Any]:
    """Scalar extras of a stream document become metadata; nested ones cannot live in Chroma."""
    out = {}
    for key, value in extra.items():
        if isinstance(value, (str, int, float, bool)) and not key.startswith("mac_"):
            out[key] = value
        else:
            logger.debug("skipping non-scalar or reserved document field %r", key)
    return out


def _documents(path: Path) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(id, text, metadata)`` of every document in ``path``."""
    if path.name.lower().endswith(STREAM_SUFFIXES):
        from ..data.stream import read_stream

        for doc in read_stream(path):
            md = {**_flat_metadata(doc.metadata), "source": str(path)}
            if doc.title:
                md["title"] = doc.title
            yield doc.doc_id, doc.context, md
        return
    text = path.read_text(encoding="utf-8")
    if text.strip():
        # The file path is the id: ingesting an edited file again replaces the old version.
        yield os.path.normpath(str(path)), text, {"source": str(path), "title": path.name}
    else:
        logger.warning("skipping empty file %s", path)


def _ingest(ns: argparse.Namespace) -> int:
    import time

    start = time.perf_counter()
    memory = _open(ns, show_progress=ns.progress)
    batch: list[tuple[str, str, dict[str, Any]]] = []
    total = 0

    def flush() -> None:
        nonlocal total
        if batch:
            ids, texts, metas = zip(*batch, strict=True)
            memory.add_texts(list(texts), list(metas), list(ids), namespace=ns.namespace)
            total += len(batch)
            batch.clear()

    for file in _files(ns.paths):
        for doc in _documents(file):
            batch.append(doc)
            if len(batch) >= INGEST_BATCH:
                flush()
    flush()
    print(
        f"ingested {total} documents into namespace {ns.namespace!r} of {memory.store.name!r} at "
        f"{memory.store.location} in {time.perf_counter() - start:.1f}s "
        f"({memory.count(ns.namespace)} records in the namespace)"
    )
    return 0


# ----------------------------------------------------------------------------- ask


def _ask_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("question", help="the question to answer from memory")
    parser.add_argument("-k", type=int, default=8, help="candidates to retrieve (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="answer length limit (default: 32)")
    parser.add_argument("--prefer-newest", action="store_true", help="let newer near-duplicates win")
    parser.add_argument("--json", action="store_true", help="print the answer and sources as JSON")
    _memory_args(parser)


def _ask(ns: argparse.Namespace) -> int:
    memory = _open(ns)
    answer = memory.answer(
        ns.question,
        ns.k,
        namespace=ns.namespace,
        max_new_tokens=ns.max_new_tokens,
        prefer_newest=ns.prefer_newest,
    )
    if ns.json:
        print(json.dumps({"answer": answer.text, "sources": [s.__dict__ for s in answer.sources]}, indent=2))
        return 0
    print(answer.text)
    if not answer.sources:
        print(f"(no memory in namespace {ns.namespace!r}: the base LM answered unaided)")
    for s in answer.sources:
        print(f"  {s.weight:6.3f}  {s.id}  {s.text[:80]!r}")
    return 0


# ----------------------------------------------------------------------------- reindex, stats


def _reindex_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="rewrite records already up to date too")
    _memory_args(parser, namespace=False)


def _reindex(ns: argparse.Namespace) -> int:
    memory = _open(ns, check_checkpoint=False, show_progress=True)
    done = memory.reindex(force=ns.force)
    print(
        f"reindexed {done} of {memory.count()} records of {memory.store.name!r} at {memory.store.location} "
        f"for checkpoint {memory.fingerprint[:12]}"
    )
    return 0


def _stats_args(parser: argparse.ArgumentParser) -> None:
    _memory_args(parser, namespace=False)


def _stats(ns: argparse.Namespace) -> int:
    memory = _open(ns, check_checkpoint=False)
    print(json.dumps(memory.stats(), indent=2))
    return 0


COMMANDS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "ingest": (
        "Amortize text/markdown files or JSONL document streams into the memory.",
        _ingest_args,
        _ingest,
    ),
    "ask": ("Answer a question from the memory (prints the answer and its sources).", _ask_args, _ask),
    "reindex": (
        "Re-amortize every record for the current checkpoint (after switching checkpoints).",
        _reindex_args,
        _reindex,
    ),
    "stats": (
        "Show records per namespace, bytes per modulation and the checkpoint in use.",
        _stats_args,
        _stats,
    ),
}
