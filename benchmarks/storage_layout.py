"""Bytes per record and read latency of modulations stored in Chroma metadata (MACMemory's layout).

Reproduces the storage table in docs/results.md:  python benchmarks/storage_layout.py
(1,000 records per configuration; a local PersistentClient, then a `chroma run` server on loopback.)
The `mac-memory bench` command of the performance issue will subsume this script.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from mac_memory.memory import store as S
from mac_memory.memory.codec import b64_to_modulation, modulation_to_b64
from mac_memory.memory.store import ChromaStore, Record

N = 1000
WORK = tempfile.mkdtemp(prefix="mac-storage-bench-")
rng = np.random.default_rng(0)


def records(T, d, codec):
    out = []
    for i in range(N):
        e = rng.standard_normal(384).astype(np.float32)
        e /= np.linalg.norm(e)
        md = {
            S.K_NAMESPACE: "default",
            S.K_ID: f"d{i}",
            S.K_PARENT: f"d{i}",
            S.K_CHUNK: 0,
            S.K_NUM_CHUNKS: 1,
            S.K_START: 0,
            S.K_END: 60,
            S.K_TIME: time.time(),
            S.K_SHA: "0" * 64,
            S.K_MODULATION: modulation_to_b64(rng.standard_normal((T, d)).astype(np.float32), codec),
            S.K_FINGERPRINT: "f" * 64,
            "source": "bench",
        }
        out.append(
            Record(f"default/d{i}", f"Document number {i} about some topic or other, sixty chars.", e, md)
        )
    return out


def timeit(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def du(path):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def run(store, T, d, codec, disk=None):
    recs = records(T, d, codec)
    t = time.perf_counter()
    store.write(recs, {})
    add_s = time.perf_counter() - t
    ids8 = [f"default/d{i}" for i in rng.choice(N, 8, replace=False)]
    ids_all = [f"default/d{i}" for i in range(N)]
    q = recs[5].embedding
    g8 = timeit(lambda: store.get(ids8), 30)
    g8d = timeit(
        lambda: [b64_to_modulation(r["metadata"][S.K_MODULATION]) for r in store.get(ids8).values()], 30
    )
    g1000 = timeit(lambda: store.get(ids_all), 5)
    g1000d = timeit(
        lambda: [b64_to_modulation(r["metadata"][S.K_MODULATION]) for r in store.get(ids_all).values()], 5
    )
    q8 = timeit(
        lambda: store.query(q, 8, {S.K_NAMESPACE: "default"}, ["metadatas", "documents", "distances"]), 30
    )
    q8ids = timeit(lambda: store.query(q, 8, {S.K_NAMESPACE: "default"}, ["distances"]), 30)
    b64 = len(recs[0].metadata[S.K_MODULATION])
    res = dict(
        T=T,
        d=d,
        codec=codec,
        blob_bytes=b64 * 3 // 4 - recs[0].metadata[S.K_MODULATION].count("="),
        b64_chars=b64,
        add_1000_s=round(add_s, 2),
        get8_ms=round(g8, 2),
        get8_decode_ms=round(g8d, 2),
        get1000_ms=round(g1000, 1),
        get1000_decode_ms=round(g1000d, 1),
        query8_ms=round(q8, 2),
        query8_ids_only_ms=round(q8ids, 2),
    )
    if disk:
        res["disk_bytes_per_record"] = du(disk) // N
    return res


configs = [(4, 32, "float16"), (8, 256, "float16"), (8, 256, "int8")]
results = []
for T, d, codec in configs:
    path = os.path.join(WORK, f"pc_{T}_{d}_{codec}")
    shutil.rmtree(path, ignore_errors=True)
    st = ChromaStore.open(collection="bench_docs", path=path)
    r = run(st, T, d, codec, disk=path)
    r["backend"] = "persistent"
    results.append(r)
    print(json.dumps(r), flush=True)

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
srv_path = os.path.join(WORK, "server")
shutil.rmtree(srv_path, ignore_errors=True)
server = subprocess.Popen(
    [
        os.path.join(os.path.dirname(sys.executable), "chroma"),
        "run",
        "--path",
        srv_path,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
try:
    import urllib.request

    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    for T, d, codec in configs:
        st = ChromaStore.open(collection=f"bench_{T}_{d}_{codec}", host="127.0.0.1", port=port)
        r = run(st, T, d, codec)
        r["backend"] = "server"
        results.append(r)
        print(json.dumps(r), flush=True)
finally:
    server.kill()
    server.wait()
