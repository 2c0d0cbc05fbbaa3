"""Query: end-to-end latency and peak memory of answering one question, at equal answer length.

Methods, per document length (``doc_tokens``), over the same memory of ``query_docs`` documents:

* ``mac`` — retrieve the top ``mac_k`` records from Chroma (embedding + search + decoding the stored
  modulations), aggregate them into one prefix, generate with only the question in the prompt (what
  :meth:`MACMemory.answer` does);
* ``rag_k{k}`` — retrieve the top ``k`` documents from a plain Chroma store of the same documents and
  write them into the prompt (:func:`~mac_memory.prompts.format_with_documents`);
* ``no_memory`` — the frozen LM on the question alone.

Every method generates exactly ``new_tokens`` tokens (``min_new_tokens``: EOS is suppressed until then),
so the comparison is not skewed by one method stopping early. A variant whose prompt cannot fit the base
LM's context window (RAG with several long documents on GPT-2's 1,024 positions) is reported as skipped
with the reason, never truncated.

:func:`prepare` builds the memories once per model (a task of its own, so that building them does not
count towards any variant's peak memory); every query variant opens them read-only.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..prompts import format_question, format_with_documents
from .measure import PeakRSS, summarize, sync_device, tensor_peak
from .models import BenchContext

__all__ = ["methods", "prepare", "run", "variants"]


def methods(cfg: Any) -> list[str]:
    return ["mac", *(f"rag_k{k}" for k in cfg.rag_ks), "no_memory"]


def variants(cfg: Any) -> list[str]:
    """``"<doc tokens>/<method>"`` for every length and method."""
    return [f"{length}/{method}" for length in cfg.doc_tokens for method in methods(cfg)]


def _rag_store(ctx: BenchContext, length: int) -> Any:
    from ..memory.store import ChromaStore

    return ChromaStore.open(collection="rag", path=ctx.path("query", f"rag_{length}"))


def prepare(ctx: BenchContext, variant: str | None = None) -> dict[str, Any]:
    """Build, for each length, the MAC memory and the RAG store of the query documents."""
    from ..memory.store import Record

    out: dict[str, Any] = {}
    for length in ctx.cfg.doc_tokens:
        docs = ctx.documents("query", ctx.cfg.query_docs, length)
        texts = [d.text for d in docs]
        memory = ctx.memory(ctx.path("query", f"mac_{length}", fresh=True))
        start = time.perf_counter()
        memory.add_texts(texts, ids=[f"doc{i}" for i in range(len(texts))])
        mac_s = time.perf_counter() - start
        shutil.rmtree(ctx.workdir / "query" / f"rag_{length}", ignore_errors=True)
        store = _rag_store(ctx, length)
        start = time.perf_counter()
        embeddings = ctx.embedder.embed_documents(texts)
        store.write([Record(f"doc{i}", t, e, {"kind": "doc", "doc": i})
                     for i, (t, e) in enumerate(zip(texts, embeddings, strict=True))], {})
        rag_s = time.perf_counter() - start
        out[str(length)] = {
            "docs": len(docs),
            "doc_tokens": summarize([d.tokens for d in docs]),
            "mac_records": memory.count(),
            "mac_ingest_s": mac_s,
            "rag_ingest_s": rag_s,
        }
    return out


def _generate(ctx: BenchContext, prompt: str, prefix: Any) -> tuple[int, int]:
    """Generate exactly ``new_tokens`` tokens after ``prompt``; ``(prompt tokens, new tokens)``."""
    lm, n = ctx.lm, ctx.cfg.new_tokens
    input_ids, attention_mask = lm.tokenize([prompt])
    new = lm.generate_ids(input_ids, attention_mask, prefix, max_new_tokens=n, min_new_tokens=n)
    lm.tokenizer.batch_decode(new, skip_special_tokens=True)  # part of answering
    return int(input_ids.shape[1]), int(new.shape[1])


def _asker(ctx: BenchContext, length: int, method: str) -> Callable[[str], dict[str, float]]:
    """``ask(question) -> phase timings`` for ``method`` on the memories of ``length``-token documents."""
    device = ctx.device
    if method == "mac":
        memory = ctx.memory(ctx.path("query", f"mac_{length}"))
        if memory.count() == 0:
            raise RuntimeError(f"The MAC memory of {length}-token documents is empty: run the prepare task first.")

        def ask_mac(question: str) -> dict[str, float]:
            t0 = time.perf_counter()
            hits = memory.retrieve(question, k=ctx.cfg.mac_k, with_modulation=True)
            t1 = time.perf_counter()
            stacked = torch.from_numpy(np.stack([h.modulation for h in hits])).to(device)  # (N, T, d_mem)
            with torch.no_grad():
                prefix, _ = ctx.mac.modulate([question], stacked[None])
            sync_device(device)
            t2 = time.perf_counter()
            prompt_tokens, new = _generate(ctx, format_question(question), prefix)
            sync_device(device)
            t3 = time.perf_counter()
            return {"retrieve_s": t1 - t0, "aggregate_s": t2 - t1, "generate_s": t3 - t2, "total_s": t3 - t0,
                    "prompt_tokens": prompt_tokens, "new_tokens": new, "candidates": len(hits)}

        return ask_mac
    if method.startswith("rag_k"):
        k = int(method[len("rag_k"):])
        store = _rag_store(ctx, length)
        if store.count() == 0:
            raise RuntimeError(f"The RAG store of {length}-token documents is empty: run the prepare task first.")

        def ask_rag(question: str) -> dict[str, float]:
            t0 = time.perf_counter()
            vector = ctx.embedder.embed_query(question)
            rows = store.query(vector, k, {"kind": "doc"}, ["documents", "distances"])
            t1 = time.perf_counter()
            prompt = format_with_documents([row["document"] for _, row in rows], question)
            prompt_tokens, new = _generate(ctx, prompt, None)
            sync_device(device)
            t2 = time.perf_counter()
            return {"retrieve_s": t1 - t0, "generate_s": t2 - t1, "total_s": t2 - t0,
                    "prompt_tokens": prompt_tokens, "new_tokens": new, "candidates": len(rows)}

        return ask_rag
    if method == "no_memory":

        def ask_plain(question: str) -> dict[str, float]:
            t0 = time.perf_counter()
            prompt_tokens, new = _generate(ctx, format_question(question), None)
            sync_device(device)
            t1 = time.perf_counter()
            return {"generate_s": t1 - t0, "total_s": t1 - t0, "prompt_tokens": prompt_tokens, "new_tokens": new}

        return ask_plain
    raise ValueError(f"Unknown query method {method!r}; choose from {methods(ctx.cfg)}.")


def _does_not_fit(ctx: BenchContext, length: int, method: str, docs: list[Any]) -> str | None:
    """Why ``method``'s longest prompt cannot fit the base LM's context window (None when it fits)."""
    from ..evaluation.baselines import max_positions

    limit = max_positions(ctx.lm)
    if limit is None:
        return None
    question = max((ctx.count_tokens(format_question(d.question)) for d in docs), default=0)
    longest = max(d.tokens for d in docs)
    if method.startswith("rag_k"):
        k = int(method[len("rag_k"):])
        needed = k * (longest + 2) + question + ctx.cfg.new_tokens
    elif method == "mac":
        needed = ctx.mac.config.prefix_len + question + ctx.cfg.new_tokens
    else:
        needed = question + ctx.cfg.new_tokens
    if needed > limit:
        return (f"needs up to {needed} positions (prompt + {ctx.cfg.new_tokens} new tokens) but the base LM has "
                f"{limit}: does not fit its context window")
    return None


def run(ctx: BenchContext, variant: str | None) -> dict[str, Any]:
    """Latency (total and per phase), prompt/answer tokens and peak memory of one ``"<length>/<method>"``."""
    assert variant is not None
    length_text, method = variant.split("/", 1)
    length = int(length_text)
    cfg = ctx.cfg
    docs = ctx.documents("query", cfg.query_docs, length)
    reason = _does_not_fit(ctx, length, method, docs)
    if reason is not None:
        return {"skipped": reason}
    ask = _asker(ctx, length, method)
    questions = [docs[i % len(docs)].question for i in range(cfg.warmup + cfg.query_reps)]

    rss = PeakRSS(ctx.device).start()
    for question in questions[: cfg.warmup]:
        ask(question)
    answers = [ask(q) for q in questions[cfg.warmup :]]
    out: dict[str, Any] = {"latency_s": summarize([a["total_s"] for a in answers])}
    out["phases"] = {key: summarize([a[key] for a in answers]) for key in answers[0] if key.endswith("_s")
                     and key != "total_s"}
    out["prompt_tokens"] = summarize([a["prompt_tokens"] for a in answers])
    out["new_tokens"] = sorted({int(a["new_tokens"]) for a in answers})
    if "candidates" in answers[0]:
        out["candidates"] = int(answers[0]["candidates"])
    out.update(rss.stop())
    if cfg.track_tensors:
        out["peak_tensor_bytes"], out["tensor_method"] = tensor_peak(lambda: ask(questions[-1]), ctx.device)
    return out
