"""A mixed add / answer / delete workload for the concurrency tests, and the checks of what it leaves.

:func:`run_mixed` is what one thread (or one process) does for a bounded time: add documents under its own
ids (some long enough to be chunked), re-add a few shared "hot" documents that every worker adds with
the same text (same content id: must never be duplicated), answer questions over the shared namespace,
and delete some of its own documents. It logs every call with wall-clock start and end times.
:func:`check_mixed` then checks the logs of all workers together against the memory.

As a script it is the process worker of ``test_reliability_concurrency.py``: ``python
tests/helpers/mixed_load.py '<json spec>'`` imports the stack, waits for one line on stdin (so that both
workers start together), connects to the Chroma server, runs the workload and prints its log as JSON.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

NAMESPACE = "shared"
CHUNK = 60
HOT = [f"Hot fact {i}: the beacon on tower {i} is lit every night." for i in range(4)]
WORDS = "red blue green amber slate river stone cloud lamp violin bridge harbor tower beacon".split()
QUESTIONS = ["Which lamp is red?", "Where is the beacon lit?", "Who plays the violin?"]


def memory_kwargs() -> dict[str, Any]:
    """How every worker opens the memory (the checks recompute chunks with the same settings)."""
    from helpers.reliability import HashEmbedder

    return {
        "embedder": HashEmbedder(),
        "chunk_unit": "char",
        "chunk_size": CHUNK,
        "chunk_overlap": CHUNK // 6,
        "show_progress": False,
    }


def run_mixed(memory: Any, owner: str, seconds: float, seed: int) -> dict[str, Any]:
    """Mix calls on ``memory`` for ``seconds``; returns ``{"owner", "log", "errors"}``."""
    rng = random.Random(seed)
    alive: list[str] = []
    log: list[dict[str, Any]] = []
    errors: list[str] = []
    n = 0
    stop_at = time.time() + seconds
    while time.time() < stop_at:
        r = rng.random()
        start = time.time()
        try:
            if r < 0.4:
                k = rng.randint(1, 3)
                ids = [f"{owner}-{n + i}" for i in range(k)]
                n += k
                texts = [
                    " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) + f" {i}." for i in ids
                ]
                mds = [{"owner": owner, "batch": rng.randint(0, 2)} for _ in ids]
                assert memory.add_texts(texts, mds, ids, namespace=NAMESPACE) == ids
                alive += ids
                log.append({"kind": "add", "start": start, "end": time.time(), "docs": dict(zip(ids, texts))})
            elif r < 0.5:
                texts = rng.sample(HOT, 2)
                ids = memory.add_texts(texts, namespace=NAMESPACE)
                log.append({"kind": "hot", "start": start, "end": time.time(), "docs": dict(zip(ids, texts))})
            elif r < 0.85:
                answer = memory.answer(
                    rng.choice(QUESTIONS), k=rng.randint(1, 8), namespace=NAMESPACE, max_new_tokens=2
                )
                log.append(
                    {
                        "kind": "answer",
                        "start": start,
                        "end": time.time(),
                        "sources": [[s.id, s.parent_id, s.text, s.namespace] for s in answer.sources],
                    }
                )
            elif alive:
                ids = rng.sample(alive, min(len(alive), rng.randint(1, 3)))
                deleted = memory.delete(ids, namespace=NAMESPACE)
                for i in ids:
                    alive.remove(i)
                log.append(
                    {"kind": "delete", "start": start, "end": time.time(), "ids": ids, "deleted": deleted}
                )
        except Exception as exc:  # reported, and the test fails on it
            import traceback

            errors.append(f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}")
    return {"owner": owner, "log": log, "errors": errors}


def check_mixed(memory: Any, results: list[dict[str, Any]]) -> dict[str, int]:
    """Every worker's calls against each other and against the final memory; returns counts of calls."""
    from helpers.reliability import HashEmbedder, record_problems
    from mac_memory.memory.chunking import Chunker

    chunker = Chunker(CHUNK, CHUNK // 6, unit="char")
    for r in results:
        assert r["errors"] == [], r["errors"][:2]
    calls = [c for r in results for c in r["log"]]
    added = {d: (c["start"], c["end"], t) for c in calls if c["kind"] == "add" for d, t in c["docs"].items()}
    hot = {d: t for c in calls if c["kind"] == "hot" for d, t in c["docs"].items()}
    deleted = {d: (c["start"], c["end"]) for c in calls if c["kind"] == "delete" for d in c["ids"]}
    assert len(hot) <= len(HOT), "the same text got different content ids"

    def chunk_texts(text: str) -> list[str]:
        return [c.text for c in chunker.split(text)]

    for c in calls:
        if c["kind"] == "delete":
            expected = sum(len(chunk_texts(added[d][2])) for d in c["ids"])
            assert c["deleted"] == expected, c  # a delete removes exactly its documents' records
        if c["kind"] != "answer":
            continue
        assert len({s[0] for s in c["sources"]}) == len(c["sources"]), "a source appears twice"
        for rid, parent, text, ns in c["sources"]:
            assert ns == NAMESPACE
            if parent in hot:
                assert text in chunk_texts(hot[parent])
                continue
            assert parent in added, f"answer source {rid} was never added"
            assert added[parent][0] < c["end"], f"answer source {rid} was added after the answer ended"
            if parent in deleted:
                assert deleted[parent][1] > c["start"], (
                    f"answer source {rid} was deleted before the answer began"
                )
            assert text in chunk_texts(added[parent][2]), f"answer source {rid} has another document's text"
    alive = {d: t for d, (_, _, t) in added.items() if d not in deleted} | hot
    expected_records = sum(len(chunk_texts(t)) for t in alive.values())
    assert memory.count(NAMESPACE) == expected_records, "records were lost or duplicated"
    for doc_id, text in alive.items():
        assert [h.text for h in memory.get([doc_id], namespace=NAMESPACE)] == chunk_texts(text), doc_id
    assert memory.get(sorted(deleted), namespace=NAMESPACE) == []
    assert record_problems(memory, HashEmbedder()) == []
    kinds = [c["kind"] for c in calls]
    return {k: kinds.count(k) for k in ("add", "hot", "answer", "delete")} | {"records": expected_records}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One process of the server test: import, wait for the go line, run the workload against the server."""
    import torch

    torch.set_num_threads(1)
    import chromadb

    from mac_memory.memory import MACMemory
    from mac_memory.model import MACModel

    mac = MACModel.from_pretrained(spec["checkpoint"], device="cpu")
    from helpers.reliability import settings

    client = chromadb.HttpClient(host="127.0.0.1", port=spec["port"], settings=settings())
    sys.stdin.readline()
    memory = MACMemory(client=client, collection=spec["collection"], model=mac, **memory_kwargs())
    return run_mixed(memory, spec["owner"], spec["seconds"], spec["seed"])


if __name__ == "__main__":
    print(json.dumps(worker(json.loads(sys.argv[1]))))
