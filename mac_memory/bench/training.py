"""Training: step time and peak memory of one meta-training step, with and without backprop dropout.

A step is exactly what ``mac-memory train`` runs (:class:`~mac_memory.training.meta.MetaStep`, the
paper's ``memory=batch`` objective): ``train_batch`` documents amortized — only a ``1 - dropout`` share
of them with gradients (:func:`~mac_memory.training.meta.amortize_with_dropout`) — aggregated for each of
the batch's questions, answer NLL through the frozen LM, backward, AdamW step. Both settings use the same
batch and seed. With ``train_backbone`` (the default) an amortizer's own encoder is trained too, as the
paper trains its T5 amortizer: that is where dropout saves memory. The networks' weights (and which of
them are frozen) are restored afterwards, so later measurements in the same process see the model
unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .measure import PeakRSS, summarize, tensor_peak, timed
from .models import BenchContext

__all__ = ["run", "variant_name"]


def variant_name(dropout: float) -> str:
    return f"bpd_{dropout:g}"


def run(ctx: BenchContext, variant: str | None) -> dict[str, Any]:
    """Step seconds (median, IQR, raw) and peak memory of meta-training with backprop dropout ``variant``."""
    from ..training.meta import MetaStep

    assert variant is not None and variant.startswith("bpd_")
    dropout = float(variant[len("bpd_"):])
    cfg = ctx.cfg
    mac = ctx.mac
    docs = ctx.documents("train", cfg.train_batch, cfg.training_tokens)
    texts, questions, answers = [d.text for d in docs], [d.question for d in docs], [d.answer for d in docs]
    saved = {k: v.detach().clone() for k, v in mac.state_dict().items()}
    backbone = getattr(mac.amortizer, "backbone", None) if cfg.train_backbone else None
    frozen = [p for p in backbone.parameters() if not p.requires_grad] if backbone is not None else []
    step_module = MetaStep(mac, dropout, "batch", cfg.train_lm_recompute_chunk)

    def step() -> float:
        torch.manual_seed(cfg.seed)  # the same documents get gradients in every repetition
        loss = step_module(texts, questions, answers)
        loss.backward()
        optimizer.step()
        # Gradients are freed between steps, so each step allocates them anew: the CPU tracker and CUDA's
        # peak-minus-start both count them as the step's memory.
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    mac.train()
    optimizer = None
    try:
        for p in frozen:
            p.requires_grad_(True)  # the paper's setting: the amortizer's encoder is trained too
        params = [p for p in mac.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-5)
        rss = PeakRSS(ctx.device).start()
        for _ in range(max(cfg.warmup, 1)):  # the first step also allocates AdamW's state
            step()
        seconds = [timed(step, ctx.device)[0] for _ in range(cfg.train_reps)]
        out: dict[str, Any] = {
            "backprop_dropout": dropout,
            "batch": cfg.train_batch,
            "docs_with_grad": max(1, math.ceil(cfg.train_batch * (1.0 - dropout))),
            "lm_recompute_chunk": cfg.train_lm_recompute_chunk,
            "doc_tokens": summarize([d.tokens for d in docs])["median"],
            "step_s": summarize(seconds),
            "trainable_parameters": int(sum(p.numel() for p in params)),
            "amortizer_backbone_trained": backbone is not None and any(p.requires_grad for p in backbone.parameters()),
            **rss.stop(),
        }
        if cfg.track_tensors:
            out["peak_tensor_bytes"], out["tensor_method"] = tensor_peak(step, ctx.device)
    finally:
        mac.eval()
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        for p in frozen:
            p.requires_grad_(False)
        with torch.no_grad():
            mac.load_state_dict(saved)
    return out
