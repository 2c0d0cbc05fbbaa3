"""Profiles of MAC's two hot paths, recorded before anything is optimized.

For one ``add_texts`` batch (embed + amortize + store) and one question (retrieve + aggregate + generate
``new_tokens``) of each model: torch.profiler's top ops by self time (where the tensor work goes) and
cProfile's top Python functions by own time (where Chroma, tokenization and Python overhead go, which the
op profile cannot see).
"""

from __future__ import annotations

from typing import Any

from ..prompts import format_question
from .measure import profile_top
from .models import BenchContext

__all__ = ["run"]


def run(ctx: BenchContext, variant: str | None = None) -> dict[str, Any]:
    cfg = ctx.cfg
    n = cfg.ingest_docs
    docs = ctx.documents("profile", 3 * n, cfg.ingest_tokens)
    batches = iter([[d.text for d in docs[i * n : (i + 1) * n]] for i in range(3)])
    memory = ctx.memory(ctx.path("profile", "chroma", fresh=True), collection="profile")
    memory.add_texts(next(batches))  # warm: profile the steady state, not first-call costs
    ingest = profile_top(lambda: memory.add_texts(next(batches)), ctx.device, cfg.profile_top)

    length = cfg.doc_tokens[0]
    query_memory = ctx.memory(ctx.path("query", f"mac_{length}"))
    question = ctx.documents("query", cfg.query_docs, length)[0].question
    lm = ctx.lm

    def ask() -> None:
        recall = query_memory.recall(question, k=cfg.mac_k)
        input_ids, attention_mask = lm.tokenize([format_question(question)])
        lm.generate_ids(input_ids, attention_mask, recall.prefix, max_new_tokens=cfg.new_tokens,
                        min_new_tokens=cfg.new_tokens)

    ask()
    return {"ingest": {"docs": n, **ingest}, "query": {"doc_tokens": length, **profile_top(ask, ctx.device,
                                                                                            cfg.profile_top)}}
