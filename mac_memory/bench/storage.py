"""Storage: bytes a memory keeps per document, next to the document's text and its key/value cache.

Read from the query benchmark's memories (built by :func:`~mac_memory.bench.query.prepare`), per document
length:

* ``modulation_bytes_per_doc`` — the codec bytes of the document's modulations (one per chunk; base64
  in the record adds a third: ``modulation_b64_bytes_per_doc``);
* ``record_bytes_per_doc`` — the record as stored: text + embedding (float32) + metadata as JSON
  (modulation included);
* ``text_bytes_per_doc`` — the document's UTF-8 text;
* ``kv_cache_bytes_per_doc`` — the base LM's key/value cache of the document (what prompt caching or a
  KV-compression memory would keep), computed from the layout and checked on one real forward;
* ``chroma_disk_bytes`` — the Chroma directory on disk (dominated by fixed overhead at a few dozen
  records; the scale benchmark reports disk per record at 1k-100k records).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..memory import store as S
from ..memory.codec import encoded_size
from .measure import summarize
from .models import BenchContext

__all__ = ["disk_bytes", "run"]


def disk_bytes(path: str | Path) -> int:
    """Total size of the files under ``path``."""
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def run(ctx: BenchContext, variant: str | None = None) -> dict[str, Any]:
    """Per document length: bytes per document of each representation, and their ratios."""
    mac = ctx.mac
    layout = ctx.lm.layout
    element = torch.empty((), dtype=ctx.lm.dtype).element_size()
    out: dict[str, Any] = {
        "codec": ctx.cfg.codec,
        "modulation_shape": [mac.num_tokens, mac.d_mem],
        "modulation_bytes_per_record": encoded_size((mac.num_tokens, mac.d_mem), ctx.cfg.codec),
        "kv_cache_bytes_per_token": layout.num_layers * 2 * layout.kv_dim * element,
    }
    for length in ctx.cfg.doc_tokens:
        docs = ctx.documents("query", ctx.cfg.query_docs, length)
        memory = ctx.memory(ctx.path("query", f"mac_{length}"))
        per_doc: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for page in memory.store.iter_get(include=["metadatas", "documents", "embeddings"]):
            for md, text, emb in zip(page["metadatas"], page["documents"], page["embeddings"], strict=True):
                blob = md.get(S.K_MODULATION) or ""
                doc = per_doc[str(md.get(S.K_PARENT))]
                doc["records"] += 1
                doc["modulation"] += len(blob) * 3 // 4 - blob[-2:].count("=")
                doc["modulation_b64"] += len(blob)
                doc["record"] += len((text or "").encode()) + len(emb) * 4 + len(json.dumps(md).encode())
        if not per_doc:
            raise RuntimeError(f"The MAC memory of {length}-token documents is empty: run the prepare task first.")
        tokens = summarize([d.tokens for d in docs])["median"]
        input_ids, attention_mask = ctx.lm.tokenize([docs[0].text])
        read = ctx.lm.read(input_ids, attention_mask)
        measured_kv = (read.keys.numel() + read.values.numel()) * read.keys.element_size()
        row = {
            "docs": len(per_doc),
            "doc_tokens": tokens,
            "records_per_doc": summarize([d["records"] for d in per_doc.values()])["mean"],
            "modulation_bytes_per_doc": summarize([d["modulation"] for d in per_doc.values()])["mean"],
            "modulation_b64_bytes_per_doc": summarize([d["modulation_b64"] for d in per_doc.values()])["mean"],
            "record_bytes_per_doc": summarize([d["record"] for d in per_doc.values()])["mean"],
            "text_bytes_per_doc": summarize([len(d.text.encode()) for d in docs])["mean"],
            "kv_cache_bytes_per_doc": tokens * out["kv_cache_bytes_per_token"],
            "kv_cache_bytes_first_doc_measured": int(measured_kv),
            "kv_cache_tokens_first_doc": int(input_ids.shape[1]),
            "chroma_disk_bytes": disk_bytes(ctx.path("query", f"mac_{length}")),
        }
        row["kv_cache_over_modulation"] = row["kv_cache_bytes_per_doc"] / row["modulation_bytes_per_doc"]
        row["text_over_modulation"] = row["text_bytes_per_doc"] / row["modulation_bytes_per_doc"]
        out[str(length)] = row
    return out
