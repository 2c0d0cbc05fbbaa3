"""Scale: a memory of 1k, 10k, 100k documents — ingestion throughput, query latency, full aggregation.

One memory grows through the sizes. Its first ``scale_real_docs`` documents are ingested through
:meth:`MACMemory.add_texts` (synthetic text); the rest are random modulations (scaled like the real ones)
and random unit embeddings written straight through the store layer with complete record metadata
(amortizing 100k documents would take hours on a CPU and measures nothing new; the report records how
many records were inserted which way). At each size:

* ``probe_ingest`` — documents per second of ``add_texts`` into the memory of that size (real documents);
* ``direct_insert`` — records per second of the store-layer insertion (Chroma upserts);
* ``query`` — p50/p95 over ``scale_queries`` questions of ``recall`` (retrieve top ``mac_k`` + decode +
  aggregate) and of the end-to-end answer (plus ``new_tokens`` generated tokens); the Chroma search alone,
  with the namespace filter MACMemory always applies and without it (``chroma_query``); cProfile's top
  functions of one recall and of one ``add_texts`` batch (where the time goes as the memory grows);
* ``full_aggregation`` — hierarchical aggregation over *all* N modulations at once
  (:meth:`MACModel.aggregate`): seconds, and peak memory beyond the ``(N, T, d_mem)`` input (op-by-op
  tensor tracking on CPU, the allocator's peak on CUDA; RSS growth too);
* ``chroma_disk_bytes_per_record``.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..memory import store as S
from ..memory.codec import modulation_to_b64
from ..prompts import format_question
from .data import record_text
from .measure import PeakRSS, python_profile, summarize, sync_device, tensor_peak, timed
from .models import BenchContext
from .storage import disk_bytes

__all__ = ["run"]


def _insert_direct(ctx: BenchContext, memory: Any, start: int, stop: int, scale: float) -> float:
    """Write records ``start..stop-1`` (random modulations + embeddings) through the store; seconds taken."""
    from ..memory.store import Record

    rng = np.random.default_rng(ctx.cfg.seed * 1_000_003 + start)
    text_rng = random.Random(f"{ctx.cfg.seed}/{start}")
    shape = (memory.mac.num_tokens, memory.mac.d_mem)
    dim = ctx.embedder.dim
    batch = memory.store.max_batch
    seconds = 0.0
    with tqdm(total=stop - start, desc=f"insert {start}-{stop}", unit="rec", leave=False) as bar:
        for lo in range(start, stop, batch):
            hi = min(lo + batch, stop)
            mods = rng.standard_normal((hi - lo, *shape)).astype(np.float32) * scale
            embs = rng.standard_normal((hi - lo, dim)).astype(np.float32)
            embs /= np.linalg.norm(embs, axis=1, keepdims=True)
            records = []
            now = time.time()
            for j, i in enumerate(range(lo, hi)):
                text = record_text(i, text_rng)
                rid = f"bulk{i}"
                md = {S.K_NAMESPACE: memory.default_namespace, S.K_ID: rid, S.K_PARENT: rid, S.K_CHUNK: 0,
                      S.K_NUM_CHUNKS: 1, S.K_START: 0, S.K_END: len(text), S.K_TIME: now,
                      S.K_SHA: hashlib.sha256(text.encode()).hexdigest(),
                      S.K_MODULATION: modulation_to_b64(mods[j], memory.codec), S.K_FINGERPRINT: memory.fingerprint}
                records.append(Record(S.chroma_id(memory.default_namespace, rid), text, embs[j], md))
            t, _ = timed(lambda r=records: memory.store.write(r, {}))
            seconds += t
            bar.update(hi - lo)
    return seconds


def _ask(ctx: BenchContext, memory: Any, question: str) -> tuple[float, float]:
    """``(recall seconds, end-to-end seconds)`` of one question with exactly ``new_tokens`` generated."""
    lm, n = ctx.lm, ctx.cfg.new_tokens
    t0 = time.perf_counter()
    recall = memory.recall(question, k=ctx.cfg.mac_k)
    sync_device(ctx.device)
    t1 = time.perf_counter()
    input_ids, attention_mask = lm.tokenize([format_question(question)])
    new = lm.generate_ids(input_ids, attention_mask, recall.prefix, max_new_tokens=n, min_new_tokens=n)
    lm.tokenizer.batch_decode(new, skip_special_tokens=True)
    sync_device(ctx.device)
    return t1 - t0, time.perf_counter() - t0


def _full_aggregation(ctx: BenchContext, size: int, scale: float, question: str) -> dict[str, Any]:
    """Seconds and peak memory of aggregating all ``size`` modulations for one question.

    ``peak_bytes``: the aggregation itself (``with_weights=False``, as ``mac_full`` runs it when no
    provenance is asked for); ``peak_bytes_with_weights``: plus the O(N) per-document weights.
    """
    mac = ctx.mac
    generator = torch.Generator().manual_seed(ctx.cfg.seed + size)
    memory = (torch.randn(size, mac.num_tokens, mac.d_mem, generator=generator) * scale).to(ctx.device)
    input_bytes = memory.numel() * memory.element_size()

    def aggregate(with_weights: bool = True) -> Any:
        with torch.no_grad():  # (N, T, d) shared → hierarchical beyond the window
            return mac.aggregate([question], memory, with_weights=with_weights)

    rss = PeakRSS(ctx.device).start()
    seconds, merged = timed(aggregate, ctx.device)
    out: dict[str, Any] = {"seconds": seconds, "input_bytes": input_bytes, **rss.stop()}
    out["weights_sum"] = float(merged.weights.sum())
    del merged
    out["peak_bytes"], out["peak_method"] = tensor_peak(lambda: aggregate(with_weights=False), ctx.device)
    out["peak_bytes_with_weights"], _ = tensor_peak(aggregate, ctx.device)
    return out


def _chroma_query_times(ctx: BenchContext, memory: Any, questions: list[str]) -> dict[str, Any]:
    """Chroma top-k alone, with the namespace filter every MACMemory search carries and without it."""
    vectors = [ctx.embedder.embed_query(q)[None, :] for q in questions]
    collection = memory.store.collection
    where = {S.K_NAMESPACE: memory.default_namespace}
    k = ctx.cfg.mac_k
    filtered = [timed(lambda v=v: collection.query(query_embeddings=v, n_results=k, where=where,
                                                     include=["metadatas", "documents", "distances"]))[0]
                for v in vectors]
    unfiltered = [timed(lambda v=v: collection.query(query_embeddings=v, n_results=k,
                                                       include=["metadatas", "documents", "distances"]))[0]
                  for v in vectors]
    return {"filtered_s": summarize(filtered), "unfiltered_s": summarize(unfiltered)}


def run(ctx: BenchContext, variant: str | None = None) -> dict[str, Any]:
    """Figures per memory size (see module doc), for the sizes of ``scale_sizes``."""
    cfg = ctx.cfg
    sizes = list(cfg.scale_sizes or ())
    probes = cfg.scale_probe_docs
    real = ctx.documents("scale", cfg.scale_real_docs + 2 * probes * len(sizes), cfg.ingest_tokens)
    memory = ctx.memory(ctx.path("scale", "chroma", fresh=True), collection="scale")
    start = time.perf_counter()
    for i in range(0, cfg.scale_real_docs, 16):
        memory.add_texts([d.text for d in real[i : min(i + 16, cfg.scale_real_docs)]])
    real_s = time.perf_counter() - start
    with torch.no_grad():
        scale = mac_std(ctx, [d.text for d in real[: min(8, len(real))]])
    questions = [real[i % cfg.scale_real_docs].question for i in range(cfg.warmup + cfg.scale_queries)]

    out: dict[str, Any] = {
        "real_docs": cfg.scale_real_docs,
        "real_ingest_docs_per_second": cfg.scale_real_docs / real_s,
        "modulation_std": scale,
        "inserted_directly": "random modulations (std of real ones) + random unit embeddings via the store layer",
        "sizes": {},
    }
    count = memory.count()
    unused = iter(real[cfg.scale_real_docs :])
    for size in tqdm(sizes, desc="scale", leave=False):
        target = size - 2 * probes  # two probe batches (timed, then profiled) complete the memory to `size`
        row: dict[str, Any] = {}
        if target > count:
            seconds = _insert_direct(ctx, memory, count, target, scale)
            row["direct_insert"] = {"records": target - count, "seconds": seconds,
                                    "records_per_second": (target - count) / seconds}
        timed_probe = [next(unused).text for _ in range(probes)]
        profiled_probe = [next(unused).text for _ in range(probes)]
        seconds, _ = timed(lambda p=timed_probe: memory.add_texts(p), ctx.device)
        row["probe_ingest"] = {"docs": probes, "seconds": seconds, "docs_per_second": probes / seconds,
                               "profile": python_profile(lambda p=profiled_probe: memory.add_texts(p), 8)}
        count = memory.count()
        row["records"] = count
        for question in questions[: cfg.warmup]:
            _ask(ctx, memory, question)
        timings = [_ask(ctx, memory, q) for q in questions[cfg.warmup :]]
        row["recall_s"] = summarize([t[0] for t in timings])
        row["query_s"] = summarize([t[1] for t in timings])
        row["recall_profile"] = python_profile(lambda: memory.recall(questions[-1], k=cfg.mac_k), 8)
        row["chroma_query"] = _chroma_query_times(ctx, memory, questions[cfg.warmup :])
        row["full_aggregation"] = _full_aggregation(ctx, count, scale, questions[0])
        row["chroma_disk_bytes_per_record"] = disk_bytes(ctx.path("scale", "chroma")) / count
        out["sizes"][str(size)] = row
    return out


def mac_std(ctx: BenchContext, texts: list[str]) -> float:
    """Standard deviation of real modulations (so inserted random ones have the same scale)."""
    return float(ctx.mac.amortize(texts).float().std())
