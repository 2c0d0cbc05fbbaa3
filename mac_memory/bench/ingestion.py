"""Ingestion: seconds per document to make a memory of new documents, three ways, on the same documents.

* ``mac`` — :meth:`MACMemory.add_texts`: chunk, embed (MiniLM), amortize (one forward pass), encode and
  upsert the Chroma record with its modulation. With ``--amortizer encoder`` the amortizer's backbone is
  the embedder's MiniLM, so one pass embeds and amortizes each chunk; ``shared_encoder_pass`` in the
  result says whether it did.
* ``online_ft`` — the paper's "Uniform" online fine-tuning baseline
  (:class:`~mac_memory.evaluation.baselines.OnlineFineTuner`): LM-loss gradient steps of a copy of the base
  LM on each batch of documents (AdamW). Copying the LM is setup, reported apart (``setup_s``).
* ``embedding_only`` — what a RAG store pays: embed and upsert the record (same embedder, same metadata
  minus the modulation), no amortization.

Every variant ingests ``warmup`` untimed batches, then ``reps`` timed batches of ``ingest_docs`` fresh
documents of about ``doc_tokens[0]`` tokens.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from .measure import PeakRSS, summarize, tensor_peak, timed
from .models import BenchContext

__all__ = ["VARIANTS", "run"]

VARIANTS = ("mac", "online_ft", "embedding_only")


def _ingestor(ctx: BenchContext, variant: str) -> tuple[Callable[[list[str]], Any], dict[str, Any]]:
    """``(ingest(texts), extra figures)`` for ``variant``; what it builds first is not timed per document."""
    if variant == "mac":
        memory = ctx.memory(ctx.path("ingest", "mac", fresh=True), collection="ingest")
        return memory.add_texts, {"shared_encoder_pass": memory.shares_encoder_pass}
    if variant == "online_ft":
        from ..evaluation.baselines import OnlineFineTuner

        seconds, tuner = timed(lambda: OnlineFineTuner(ctx.lm, lr=ctx.cfg.ft_lr, batch_size=ctx.cfg.ft_batch_size,
                                                       steps_per_doc=ctx.cfg.ft_steps_per_doc), ctx.device)
        return tuner.ingest, {"setup_s": seconds, "ft_batch_size": ctx.cfg.ft_batch_size,
                              "ft_steps_per_doc": ctx.cfg.ft_steps_per_doc}
    if variant == "embedding_only":
        return _embedding_store(ctx), {}
    raise ValueError(f"Unknown ingestion variant {variant!r}; choose from {VARIANTS}.")


def _embedding_store(ctx: BenchContext) -> Callable[[list[str]], Any]:
    """A plain RAG store: embed the texts and upsert records with the same metadata as MACMemory's."""
    from ..memory import store as S
    from ..memory.store import ChromaStore, Record

    store = ChromaStore.open(collection="ingest", path=ctx.path("ingest", "embedding_only", fresh=True))
    embedder = ctx.embedder

    def ingest(texts: list[str]) -> None:
        embeddings = embedder.embed_documents(texts)
        now = time.time()
        records = []
        for text, emb in zip(texts, embeddings, strict=True):
            doc_id = hashlib.sha256(f"default\x00{text}".encode()).hexdigest()[:32]
            metadata = {S.K_NAMESPACE: "default", S.K_ID: doc_id, S.K_PARENT: doc_id, S.K_CHUNK: 0,
                        S.K_NUM_CHUNKS: 1, S.K_START: 0, S.K_END: len(text), S.K_TIME: now,
                        S.K_SHA: hashlib.sha256(text.encode()).hexdigest()}
            records.append(Record(S.chroma_id("default", doc_id), text, emb, metadata))
        store.write(records, {})

    return ingest


def run(ctx: BenchContext, variant: str | None) -> dict[str, Any]:
    """Seconds per document (median, IQR, raw), documents per second and peak memory of ``variant``."""
    assert variant is not None
    cfg = ctx.cfg
    n = cfg.ingest_docs
    batches_needed = cfg.warmup + cfg.reps + (1 if cfg.track_tensors else 0)
    docs = ctx.documents("ingest", batches_needed * n, cfg.ingest_tokens)
    batches = [[d.text for d in docs[i * n : (i + 1) * n]] for i in range(batches_needed)]

    ingest, extra = _ingestor(ctx, variant)
    rss = PeakRSS(ctx.device).start()
    for batch in batches[: cfg.warmup]:
        ingest(batch)
    seconds = [timed(lambda b=batch: ingest(b), ctx.device)[0] for batch in batches[cfg.warmup : cfg.warmup + cfg.reps]]
    out: dict[str, Any] = {
        "seconds_per_doc": summarize([s / n for s in seconds]),
        "docs_per_second": n / summarize(seconds)["median"],
        "docs_per_rep": n,
        "doc_tokens": summarize([d.tokens for d in docs])["median"],
        **extra,
        **rss.stop(),
    }
    if cfg.track_tensors:
        out["peak_tensor_bytes"], out["tensor_method"] = tensor_peak(lambda: ingest(batches[-1]), ctx.device)
    return out
