"""Worker of the crash-safety tests: a zygote that forks one child per command, to be killed with SIGKILL.

``python tests/helpers/crash_worker.py <checkpoint dir>`` imports the whole stack and loads the tiny MAC
networks once (seconds), prints ``{"ready": true}``, then reads one JSON command per line from stdin. For
each it forks a child (milliseconds: everything is already imported) and prints ``{"tag", "pid"}``; the
child opens the memory at ``path`` afresh, optionally verifies it, runs the action, optionally verifies
again, and prints its report. When the child ends (done, failed or killed by the test) the zygote prints
``{"tag", "exit", "signal"}``. A line ``{"kill": true}`` while a child runs makes the zygote SIGKILL it:
only the parent kills, because only until the parent reaps a child is its pid sure not to be reused.
The zygote itself never opens Chroma and never runs a model, so forking it is safe.

Command::

    {"tag": "k3", "path": "/tmp/mem", "collection": "crash", "max_batch": 32, "chunk_size": 120,
     "verify_before": true, "verify_after": true, "check_values": ["ns/doc#0", ...],
     "action": {"op": "add", "texts": [...], "ids": [...] | null, "metadatas": [...], "namespace": "n"}
             | {"op": "delete", "ids": [...] | null, "where": {...} | null, "namespace": "n"}
             | null}

Child output lines: ``{"tag", "event": "opened"}``, ``{"tag", "event": "write"}`` (just before the first
write or delete reaches Chroma), ``{"tag", "event": "verified", "when": "before"|"after", "problems",
"records"}``, ``{"tag", "event": "acted"}`` (the action returned), then ``{"tag", "event": "done",
"result"}`` or ``{"tag", "event": "error", "error"}``.
"""

from __future__ import annotations

import faulthandler
import hashlib
import json
import os
import select
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def describe(memory: Any) -> dict[str, dict[str, Any]]:
    """Every record as the tests compare it: text, metadata (the modulation blob as its sha256)."""
    got = memory.store.collection.get(include=["metadatas", "documents"])
    out = {}
    for cid, doc, md in zip(got["ids"], got["documents"], got["metadatas"], strict=True):
        md = dict(md or {})
        blob = md.pop("mac_modulation", None)
        md["mac_modulation_sha256"] = hashlib.sha256(str(blob).encode()).hexdigest()
        out[cid] = {"text": doc, "md": md}
    return out


def child(cmd: dict[str, Any], mac: Any, embedder: Any) -> None:
    """Runs in the forked child: open, verify, act, verify, report (see the module docstring)."""
    from helpers.reliability import record_problems
    from mac_memory.memory import MACMemory
    from mac_memory.memory.store import ChromaStore

    tag = cmd["tag"]
    announced = False
    # A child that makes no progress for 90 s dumps every thread's stack next to the memory and exits:
    # the test then shows where it hung instead of a bare timeout (seen once in CI, not reproduced).
    hang_report = open(f"{cmd['path']}.hang-{tag}.txt", "w")  # open until the child exits
    faulthandler.dump_traceback_later(90, exit=True, file=hang_report)

    def announce(original: Any) -> Any:
        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal announced
            if not announced:
                announced = True
                _emit({"tag": tag, "event": "write"})
            return original(self, *args, **kwargs)

        return wrapped

    ChromaStore.write = announce(ChromaStore.write)  # type: ignore[method-assign]
    ChromaStore.delete = announce(ChromaStore.delete)  # type: ignore[method-assign]
    memory = MACMemory(
        path=cmd["path"],
        collection=cmd["collection"],
        model=mac,
        embedder=embedder,
        chunk_unit="char",
        chunk_size=cmd["chunk_size"],
        chunk_overlap=cmd["chunk_size"] // 6,
        show_progress=False,
    )
    # Many small Chroma writes instead of one: more commit points for a kill to land between
    # (Chroma Cloud allows 300 records per write; a local Chroma 5461).
    memory.store.max_batch = int(cmd.get("max_batch", memory.store.max_batch))
    _emit({"tag": tag, "event": "opened"})

    def verify(when: str) -> None:
        problems = record_problems(memory, embedder, check_values=set(cmd.get("check_values") or []))
        _emit(
            {"tag": tag, "event": "verified", "when": when, "problems": problems, "records": describe(memory)}
        )

    if cmd.get("verify_before"):
        verify("before")
    action = cmd.get("action")
    result: Any = None
    if action and action["op"] == "add":
        result = memory.add_texts(
            action["texts"], action.get("metadatas"), action.get("ids"), namespace=action["namespace"]
        )
    elif action and action["op"] == "delete":
        result = memory.delete(action.get("ids"), where=action.get("where"), namespace=action["namespace"])
    _emit({"tag": tag, "event": "acted"})
    if cmd.get("verify_after"):
        verify("after")
    _emit({"tag": tag, "event": "done", "result": result})


class _Lines:
    """Lines from a file descriptor without Python's buffering, so ``select`` sees what is pending."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.eof = fd, b"", False

    def poll(self, timeout: float) -> list[str]:
        if not self.eof and select.select([self.fd], [], [], timeout)[0]:
            chunk = os.read(self.fd, 1 << 16)
            self.eof = not chunk
            self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines if line.strip()]


def main(checkpoint: str) -> None:
    import torch

    torch.set_num_threads(1)  # before any op: no OpenMP pool exists when the zygote forks
    import chromadb  # noqa: F401  (imported once here, so children start in milliseconds)

    from helpers.reliability import HashEmbedder
    from mac_memory.memory import MACMemory  # noqa: F401
    from mac_memory.model import MACModel

    mac = MACModel.from_pretrained(checkpoint, device="cpu")
    embedder = HashEmbedder()
    _emit({"ready": True})
    stdin = _Lines(sys.stdin.fileno())
    pending: list[str] = []
    while not (stdin.eof and not pending):
        pending += stdin.poll(0.5)
        if not pending:
            continue
        cmd = json.loads(pending.pop(0))
        if "kill" in cmd:
            continue  # a kill for a child that had already finished
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child(cmd, mac, embedder)
            except BaseException as exc:
                _emit(
                    {
                        "tag": cmd["tag"],
                        "event": "error",
                        "error": f"{type(exc).__name__}: {exc}",
                        "traceback": traceback.format_exc()[-4000:],
                    }
                )
                code = 1
            finally:
                os._exit(code)
        _emit({"tag": cmd["tag"], "pid": pid})
        # Until the child is reaped its pid cannot be reused, so only this parent kills it (on request).
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            for line in stdin.poll(0.002):
                if "kill" in json.loads(line):
                    os.kill(pid, signal.SIGKILL)
                else:
                    pending.append(line)
        _emit(
            {
                "tag": cmd["tag"],
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            }
        )


if __name__ == "__main__":
    main(sys.argv[1])
