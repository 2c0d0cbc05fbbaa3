"""Crash safety: a process SIGKILLed at a random point of ``add_texts`` or ``delete`` leaves a memory that
opens cleanly, holds only whole records (text, embedding and modulation present and belonging together)
and no half-applied record; running the same call again completes it, without duplicates.

The killed processes are children forked by ``tests/helpers/crash_worker.py`` (a zygote that imported
everything once), so a kill costs well under a second. Each child opens the persistent memory afresh,
exactly like a restarted application. Chroma writes are cut into batches of 32 records so that a large
ingest has many commit points for a kill to land between. Two kills in three wait until the first write
has reached Chroma, so they land inside the writes rather than in the amortization before them.

What a crash may leave, record by record (checked against a model computed here):

* a record the call did not touch: exactly as before (same text, metadata, modulation bytes);
* a record the call (re)writes: its old version or its new version, whole — never a mix, never absent
  when it existed before (replacement is one upsert);
* an old chunk the new version no longer has: present or deleted; deleted only once every new record
  is present (new chunks are written before stale ones are removed);
* a record a delete targets: as before, or gone.

A document can be left with some chunks new and some old (a partially applied call); re-running the call
always converges to exactly the expected records.

The default suite runs the same checks in process, exhaustively and in seconds: each call is cut (an
exception instead of its n-th Chroma write) before its first, second, ... write. The slow suite sends
``$MAC_RELIABILITY_SCALE`` times 24 real SIGKILLs into ``add_texts`` and 24 into ``delete``.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers.reliability import save_tiny_checkpoint, scaled, settings, tiny_mac

from mac_memory.memory.chunking import Chunker

WORKER = Path(__file__).resolve().parent / "helpers" / "crash_worker.py"
NAMESPACE = "crash"
CHUNK_SIZE = 120
RESERVED_COMPARED = ("mac_parent", "mac_chunk", "mac_num_chunks", "mac_char_start", "mac_char_end")
WORDS = (
    "amber basalt cobalt delta ember fjord garnet harbor iris juniper kelp lumen marsh nickel onyx pewter "
    "quartz river slate tundra umber violet willow xenon yarrow zephyr"
).split()


class Zygote:
    """The crash worker process: send it commands, read the events of its children."""

    def __init__(self, checkpoint: Path) -> None:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "ANONYMIZED_TELEMETRY": "False",
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(checkpoint)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.next(timeout=180)
        assert first.get("ready"), first

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self.events.put(json.loads(line))
        self.events.put({"eof": True})

    def next(self, timeout: float = 120) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the crash worker went silent") from None
        if event.get("eof"):
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the crash worker exited: {err[-3000:]}")
        return event

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tiny_path, tmp_path_factory):
    checkpoint = save_tiny_checkpoint(tiny_path("llama"), tmp_path_factory.mktemp("crash") / "ckpt")
    z = Zygote(checkpoint)
    yield z
    z.close()


class SimulatedCrash(BaseException):
    """Raised in place of a Chroma call by the in-process variant (BaseException: nothing catches it)."""


class Campaign:
    """One persistent memory, a model of what it must hold, and the kill/re-run/check cycle.

    ``zygote`` runs every call in a fresh child process (SIGKILL variant); without it calls run in this
    process on ``client`` and a "crash" is :class:`SimulatedCrash` raised instead of the n-th Chroma write.
    """

    def __init__(
        self,
        path: Path,
        seed: int,
        zygote: Zygote | None = None,
        memory_kwargs: Any = None,
        max_batch: int = 32,
    ) -> None:
        self.zygote, self.path, self.rng, self.max_batch = zygote, path, random.Random(seed), max_batch
        self.memory_kwargs = memory_kwargs or {}
        self.collection = f"crash_{uuid.uuid4().hex[:8]}"
        self.chunker = Chunker(CHUNK_SIZE, CHUNK_SIZE // 6, unit="char")
        self.state: dict[
            str, dict[str, Any]
        ] = {}  # Chroma id -> {"text", "md"} after the last completed call
        self.write_window = {"add": 1.0, "delete": 0.3}  # seconds from first write to return, measured
        self.kills = {"add": 0, "delete": 0}
        self.hangs: list[str] = []  # re-runs that hung before opening the memory (retried once each)
        self.runs = 0
        self.seq = 0

    # ------------------------------------------------------------------ running calls
    def run(self, action: dict[str, Any] | None, *, kill: str | int | None = None) -> dict[str, Any]:
        """Run ``action`` on a freshly opened memory and report like the crash worker does.

        ``kill``: "anywhere" / "in-write" SIGKILL the child on the way; an int crashes the in-process
        call just before its Chroma write number ``kill`` (0 = the first).
        """
        self.runs += 1
        if self.zygote is None:
            return self._run_here(action, kill)
        self.seq += 1
        tag = f"r{self.seq}"
        self.zygote.send(
            {
                "tag": tag,
                "path": str(self.path),
                "collection": self.collection,
                "chunk_size": CHUNK_SIZE,
                "max_batch": self.max_batch,
                "verify_before": kill is None,
                "verify_after": kill is None,
                "check_values": sorted(self._touched(action)) if kill is None and action else [],
                "action": action,
            }
        )
        events: dict[str, Any] = {}
        start = time.monotonic()
        deadline = None
        if kill == "anywhere":
            deadline = start + self.rng.uniform(0.0, 0.6 + self.write_window[action["op"]])
        while True:
            timeout = 120.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                event = self.zygote.events.get(timeout=timeout)
            except queue.Empty:
                if deadline is None:  # not a planned kill: the call hung for 120 s
                    events["hung"] = f"no event for 120 s after {sorted(events)}"
                self.zygote.send({"kill": True})
                deadline = None
                continue
            if event.get("eof"):
                self.zygote.next()  # raises with the worker's stderr
            name = event.get("event")
            if name == "write":
                events["write_at"] = time.monotonic()
                if kill == "in-write":
                    deadline = time.monotonic() + self.rng.uniform(0.0, self.write_window[action["op"]])
            elif name == "acted":
                if "write_at" in events and kill is None:
                    self.write_window[action["op"]] = time.monotonic() - events["write_at"]
            elif name == "verified":
                events[event["when"]] = event
            elif name in ("done", "error"):
                events[name] = event
            elif "exit" in event or "signal" in event:
                events["exit"], events["signal"] = event["exit"], event["signal"]
                report = Path(f"{self.path}.hang-{tag}.txt")
                if report.is_file() and report.stat().st_size:
                    events["hung"] = f"{events.get('hung', 'hung')}; stacks:\n{report.read_text()[-6000:]}"
                report.unlink(missing_ok=True)
                return events

    def _run_here(self, action: dict[str, Any] | None, crash_at: Any) -> dict[str, Any]:
        from helpers.crash_worker import describe
        from helpers.reliability import HashEmbedder, record_problems

        from mac_memory.memory import MACMemory

        embedder = HashEmbedder()
        memory = MACMemory(
            collection=self.collection,
            embedder=embedder,
            chunk_unit="char",
            chunk_size=CHUNK_SIZE,
            chunk_overlap=CHUNK_SIZE // 6,
            show_progress=False,
            **self.memory_kwargs,
        )
        memory.store.max_batch = self.max_batch
        events: dict[str, Any] = {"exit": 0, "signal": None, "calls": 0}

        def verify(when: str) -> None:
            problems = record_problems(memory, embedder, check_values=self._touched(action))
            events[when] = {"problems": problems, "records": describe(memory)}

        if crash_at is None:
            verify("before")
        collection = memory.store.collection
        for name in ("upsert", "delete"):
            real = getattr(collection, name)

            def counted(*args: Any, _real: Any = real, **kwargs: Any) -> Any:
                if events["calls"] == crash_at:
                    raise SimulatedCrash
                events["calls"] += 1
                return _real(*args, **kwargs)

            setattr(collection, name, counted)
        try:
            if action and action["op"] == "add":
                result: Any = memory.add_texts(
                    action["texts"], action["metadatas"], action["ids"], namespace=action["namespace"]
                )
            elif action:
                result = memory.delete(action["ids"], where=action["where"], namespace=action["namespace"])
            events["done"] = {"result": result}
        except SimulatedCrash:
            events.update(exit=None, signal="simulated")
        finally:
            for name in ("upsert", "delete"):
                delattr(collection, name)  # the instance attributes shadowed the methods
        if crash_at is None:
            verify("after")
        return events

    # ------------------------------------------------------------------ the model
    def _touched(self, action: dict[str, Any] | None) -> set[str]:
        if not action or action["op"] != "add":
            return set()
        return {cid for doc_id, text, md in self._docs(action) for cid in self._records(doc_id, text, md)}

    def _docs(self, action: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
        from mac_memory.memory.memory import _content_id

        ids = action["ids"] or [_content_id(NAMESPACE, t) for t in action["texts"]]
        return list(zip(ids, action["texts"], action["metadatas"], strict=True))

    def _records(self, doc_id: str, text: str, md: dict[str, Any]) -> dict[str, dict[str, Any]]:
        chunks = self.chunker.split(text)
        out = {}
        for c in chunks:
            rid = doc_id if len(chunks) == 1 else f"{doc_id}#{c.index}"
            out[f"{NAMESPACE}/{rid}"] = {
                "text": c.text,
                "md": {
                    **md,
                    "mac_parent": doc_id,
                    "mac_chunk": c.index,
                    "mac_num_chunks": len(chunks),
                    "mac_char_start": c.start,
                    "mac_char_end": c.end,
                },
            }
        return out

    def expect(self, action: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """(records the call writes, Chroma ids of existing records it may remove)."""
        if action["op"] == "add":
            new: dict[str, dict[str, Any]] = {}
            for doc_id, text, md in self._docs(action):
                new.update(self._records(doc_id, text, md))
            parents = {doc_id for doc_id, _, _ in self._docs(action)}
            removable = {cid for cid, r in self.state.items() if r["md"]["mac_parent"] in parents} - set(new)
            return new, removable
        if action.get("ids") is not None:
            ids = set(action["ids"])
            targets = {
                c for c, r in self.state.items() if r["md"]["mac_parent"] in ids or r["md"]["mac_id"] in ids
            }
        else:
            ((key, value),) = action["where"].items()
            targets = {c for c, r in self.state.items() if r["md"].get(key) == value}
        return {}, targets

    @staticmethod
    def _is_version(record: dict[str, Any], wanted: dict[str, Any]) -> bool:
        md = record["md"]
        user = {k: v for k, v in md.items() if not k.startswith("mac_")}
        wanted_user = {k: v for k, v in wanted["md"].items() if not k.startswith("mac_")}
        return (
            record["text"] == wanted["text"]
            and user == wanted_user
            and all(md.get(k) == wanted["md"][k] for k in RESERVED_COMPARED)
        )

    def check_crashed(self, seen: dict[str, Any], action: dict[str, Any]) -> None:
        """The state a killed call left (as the next process sees it) is one the rules above allow."""
        assert seen["problems"] == [], seen["problems"][:5]
        records = seen["records"]
        new, removable = self.expect(action)
        for cid, record in records.items():
            old = self.state.get(cid)
            ok = record == old or (cid in new and self._is_version(record, new[cid]))
            assert ok, (
                f"{cid} is neither its old nor its new version: {record} (old {old}, new {new.get(cid)})"
            )
        missing = set(self.state) - set(records)
        assert missing <= removable, f"records lost by a crash: {sorted(missing - removable)[:5]}"
        if action["op"] == "add" and missing:
            absent_new = set(new) - set(records)
            assert not absent_new, (
                f"stale chunks were removed before new records {sorted(absent_new)[:3]} existed"
            )

    def check_complete(self, run: dict[str, Any], action: dict[str, Any]) -> None:
        """A completed call: exactly the model's records, unrelated records byte-identical, no duplicates."""
        assert run["exit"] == 0 and "done" in run, run.get("error")
        for when in ("before", "after"):
            assert run[when]["problems"] == [], run[when]["problems"][:5]
        records = run["after"]["records"]
        new, removable = self.expect(action)
        expected = (set(self.state) - removable) | set(new)
        assert set(records) == expected, (sorted(set(records) ^ expected)[:5], len(records), len(expected))
        for cid, record in records.items():
            if cid in new:
                assert self._is_version(record, new[cid]), (cid, record, new[cid])
            else:
                assert record == self.state[cid], cid
        self.state = records

    # ------------------------------------------------------------------ workloads
    def _text(self, long: bool) -> str:
        n = self.rng.randint(40, 110) if long else self.rng.randint(4, 14)
        return " ".join(self.rng.choice(WORDS) for _ in range(n)) + f" ({uuid.uuid4().hex[:6]})."

    def add_action(self, size: int) -> dict[str, Any]:
        """New documents, some chunked, plus replacements of existing ones that change their chunking."""
        existing = sorted(
            {r["md"]["mac_parent"] for r in self.state.values() if r["md"].get("kind") == "named"}
        )
        replace = self.rng.sample(existing, min(len(existing), size // 4))
        named = self.rng.random() < 0.75
        texts = [self._text(self.rng.random() < 0.25) for _ in range(size)]
        tag = self.rng.choice(["red", "green", "blue"])
        metadatas = [{"kind": "named" if named else "content", "tag": tag, "n": i} for i in range(size)]
        if named:
            ids = replace + [f"doc-{uuid.uuid4().hex[:10]}" for _ in range(size - len(replace))]
            return {"op": "add", "texts": texts, "ids": ids, "metadatas": metadatas, "namespace": NAMESPACE}
        return {"op": "add", "texts": texts, "ids": None, "metadatas": metadatas, "namespace": NAMESPACE}

    def delete_action(self) -> dict[str, Any]:
        parents = sorted({r["md"]["mac_parent"] for r in self.state.values()})
        if self.rng.random() < 0.5 and parents:
            ids = self.rng.sample(parents, max(1, len(parents) // 3))
            return {"op": "delete", "ids": ids, "where": None, "namespace": NAMESPACE}
        return {
            "op": "delete",
            "ids": None,
            "where": {"tag": self.rng.choice(["red", "green", "blue"])},
            "namespace": NAMESPACE,
        }

    def crash_then_complete(self, action: dict[str, Any], kill: int | None = None, attempts: int = 4) -> bool:
        """Kill a run of ``action``; verify what it left; re-run it to completion. True if a kill landed.

        ``kill`` (in-process variant): crash just before that Chroma write; else SIGKILL at random.
        """
        for _ in range(attempts if kill is None else 1):
            how = kill if kill is not None else self.rng.choice(["anywhere", "in-write", "in-write"])
            killed = self.run(action, kill=how)
            if killed["signal"] is not None:
                self.kills[action["op"]] += 1
                break
            # The call finished before the kill: that is a completed call; check it as one.
            assert killed["exit"] == 0 and "done" in killed, killed.get("error")
        rerun = self.run(action)
        if "hung" in rerun and "before" not in rerun and len(self.hangs) < 2:
            # A child that hangs before it has opened the memory is the harness's fork, not the memory
            # (the memory is checked by the next process, as in every other run); counted and reported.
            self.hangs.append(rerun["hung"])
            warnings.warn(f"crash worker hung before opening the memory; retried: {rerun['hung']}", stacklevel=1)
            rerun = self.run(action)
        assert "before" in rerun, (
            "the re-run after a crash did not open and verify the memory: "
            f"{rerun.get('hung') or rerun.get('error', {}).get('traceback') or rerun}"
        )
        self.check_crashed(rerun["before"], action)
        self.check_complete(rerun, action)
        return killed["signal"] is not None


def _campaign(zygote: Zygote, tmp_path: Path, add_kills: int, delete_kills: int, batch: int) -> Campaign:
    c = Campaign(tmp_path / "mem", seed=int.from_bytes(os.urandom(4), "little"), zygote=zygote)
    first = c.add_action(batch)
    c.check_complete(c.run(first), first)  # the starting state (and the first write-window estimate)
    while c.kills["add"] < add_kills or c.kills["delete"] < delete_kills:
        if c.kills["delete"] < delete_kills and (c.kills["add"] >= add_kills or c.rng.random() < 0.4):
            if len(c.state) < batch:
                refill = c.add_action(batch)
                c.check_complete(c.run(refill), refill)
            c.crash_then_complete(c.delete_action())
        else:
            c.crash_then_complete(c.add_action(batch))
        assert c.runs < 8 * (add_kills + delete_kills) + 10, "kills keep missing their window"
    return c


def test_crash_before_every_chroma_write_leaves_whole_records(tiny_path, tmp_path):
    """In process, exhaustively: the call is cut before its 1st, 2nd, ... Chroma write, for adds and deletes.

    Same checks as the SIGKILL campaign; it cannot test Chroma's own atomicity (that needs a real kill),
    but it covers every boundary between mac-memory's writes deterministically and in seconds.
    """
    import chromadb

    client = chromadb.EphemeralClient(settings=settings())  # durability is the SIGKILL test's subject
    mac = tiny_mac(str(tiny_path("llama")))
    for round_ in range(scaled(1)):
        c = Campaign(
            tmp_path / "mem", seed=round_, memory_kwargs={"model": mac, "client": client}, max_batch=8
        )
        first = c.add_action(16)
        c.check_complete(c.run(first), first)
        crashes = {"add": 0, "delete": 0}
        for op in ("add", "delete"):
            for k in range(100):
                for _ in range(3):  # a call with fewer than k + 1 writes completes: try a fresh one
                    if op == "delete" and len(c.state) < 32:
                        refill = c.add_action(16)
                        c.check_complete(c.run(refill), refill)
                    action = c.add_action(16) if op == "add" else c.delete_action()
                    if c.crash_then_complete(action, kill=k):
                        crashes[op] += 1
                        break
                else:
                    break  # three calls in a row made at most k writes: every boundary has been cut
        assert crashes["add"] >= 3 and crashes["delete"] >= 3, crashes
        print(
            f"crash (in-process): cut before write #0..#{crashes['add'] - 1} of adds and "
            f"#0..#{crashes['delete'] - 1} of deletes; {c.runs} calls, {len(c.state)} records at the end"
        )


@pytest.mark.slow
def test_sigkill_during_add_and_delete_leaves_whole_records(zygote, tmp_path):
    """≥ 20 real SIGKILLs of each kind, on batches of 120 documents (~160 records, 5+ Chroma writes)."""
    c = _campaign(zygote, tmp_path, add_kills=scaled(24), delete_kills=scaled(24), batch=120)
    print(
        f"crash (SIGKILL): {c.kills} kills, {c.runs} child processes, {len(c.state)} records at the end, "
        f"{len(c.hangs)} hung re-runs retried"
    )
