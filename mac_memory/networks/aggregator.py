"""The aggregation network: merge the memory tokens of many documents into ``T`` tokens for one question.

The question's ``T`` tokens (from a question encoder of the amortizer's kind) are refined by a stack of
pre-norm cross-attention blocks over *all* memory tokens of the question's candidate documents (a
variable number per question, padded and masked). A final read-out attention takes its values straight
from the stored memory tokens, so the merged modulation lives in the same space as the stored ones
(a memory of one document can pass through unchanged), plus a refinement from the question stream
that starts at zero. The read-out's attention, summed over each document's tokens, is that document's
share of the answer (provenance).

A *retrieval prior* can join the read-out: when the candidates come from an embedding search, each
candidate's read-out logits get ``prior`` (its similarity to the question over a calibrated temperature,
see :meth:`~mac_memory.model.MACModel.retrieval_prior`), so the retriever's ranking and the network's own
question-document match are combined rather than the network having to redo the retriever's work.

Memories larger than ``window`` documents are merged hierarchically (:meth:`AggregationNetwork.aggregate`):
windows of documents become new memory entries, window after window, until one remains, so peak memory
is bounded by the window rather than by the number of candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import AggregatorConfig
from .blocks import CrossAttentionBlock


@dataclass
class Aggregated:
    """Result of aggregation for a batch of questions.

    Attributes:
        tokens: ``(B, T, d_mem)`` merged memory tokens.
        weights: ``(B, N)`` each candidate document's share of the read-out attention (rows sum to 1
            over real candidates; padding candidates get 0); None when aggregation was asked to skip
            them (``with_weights=False``).
    """

    tokens: torch.Tensor
    weights: torch.Tensor | None


class AggregationNetwork(nn.Module):
    """Question tokens ``(B, T, d)`` + memory ``(B, N, T_m, d)`` with mask ``(B, N)`` → :class:`Aggregated`."""

    def __init__(self, config: AggregatorConfig, d_mem: int) -> None:
        super().__init__()
        self.window = config.window
        self.num_heads = config.num_heads
        self.readout = config.readout
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(d_mem, config.num_heads, config.mlp_ratio, config.dropout)
            for _ in range(config.num_layers)
        )
        self.readout_norm_q = nn.LayerNorm(d_mem)
        self.readout_norm_k = nn.LayerNorm(d_mem)
        self.readout_q = nn.Linear(d_mem, d_mem)
        self.readout_k = nn.Linear(d_mem, d_mem)
        self.refine = nn.Sequential(nn.LayerNorm(d_mem), nn.Linear(d_mem, d_mem))
        nn.init.zeros_(self.refine[1].weight)  # start as a pure mix of stored tokens
        nn.init.zeros_(self.refine[1].bias)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor, doc_mask: torch.Tensor | None = None,
                prior: torch.Tensor | None = None) -> Aggregated:
        """Aggregate one window: all ``N`` candidates at once (use :meth:`aggregate` for any ``N``).

        ``prior`` ``(B, N)``: log-prior added to every read-out logit of each candidate (None = none).
        """
        B, N, Tm, d = memory.shape
        if doc_mask is None:
            doc_mask = torch.ones(B, N, dtype=torch.bool, device=memory.device)
        doc_mask = doc_mask.bool()
        if not bool(doc_mask.any(dim=1).all()):
            raise ValueError("Every question needs at least one candidate document to aggregate.")
        flat = memory.reshape(B, N * Tm, d)  # (B, N*T_m, d)
        token_mask = doc_mask.repeat_interleave(Tm, dim=1)  # (B, N*T_m)
        x = queries
        for block in self.blocks:
            x = block(x, flat, token_mask)

        # Read-out: multi-head attention whose values are the stored memory tokens themselves.
        h, dh = self.num_heads, d // self.num_heads
        q = self.readout_q(self.readout_norm_q(x)).view(B, -1, h, dh).transpose(1, 2)  # (B, h, T, dh)
        if prior is not None and prior.shape != doc_mask.shape:
            raise ValueError(f"The retrieval prior needs one value per candidate {tuple(doc_mask.shape)}, "
                             f"got {tuple(prior.shape)}.")
        if self.readout == "slot":
            mixed, weights = self._slot_readout(q, memory, doc_mask, prior)
            return Aggregated(mixed + self.refine(x), weights)
        k = self.readout_k(self.readout_norm_k(flat)).view(B, -1, h, dh).transpose(1, 2)  # (B, h, N*T_m, dh)
        v = flat.view(B, -1, h, dh).transpose(1, 2)  # (B, h, N*T_m, dh)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(dh)  # (B, h, T, N*T_m)
        if prior is not None:  # a document's log-prior on each of its tokens: its total share scales alike
            scores = scores + prior.to(scores.dtype).repeat_interleave(Tm, dim=1)[:, None, None, :]
        attn = scores.masked_fill(~token_mask[:, None, None, :], float("-inf")).softmax(dim=-1)
        mixed = (attn @ v).transpose(1, 2).reshape(B, -1, d)  # (B, T, d)
        weights = attn.mean(dim=(1, 2)).view(B, N, Tm).sum(dim=-1)  # (B, N), rows sum to 1
        return Aggregated(mixed + self.refine(x), weights)

    def _slot_readout(self, q: torch.Tensor, memory: torch.Tensor, doc_mask: torch.Tensor,
                      prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Merged token ``t`` = per-head weighted average of token ``t`` over the candidates.

        ``q`` ``(B, h, T, dh)``, ``memory`` ``(B, N, T, d)``, ``doc_mask`` ``(B, N)`` → merged ``(B, T, d)``
        and each candidate's weight ``(B, N)`` (mean over heads and slots; rows sum to 1).
        """
        B, N, T, d = memory.shape
        if q.shape[2] != T:
            raise ValueError(f"The slot read-out needs as many question tokens as memory tokens ({q.shape[2]} vs {T}).")
        h, dh = self.num_heads, d // self.num_heads
        k = self.readout_k(self.readout_norm_k(memory)).view(B, N, T, h, dh)
        v = memory.view(B, N, T, h, dh)
        scores = torch.einsum("bhtc,bnthc->bhtn", q, k) / math.sqrt(dh)  # (B, h, T, N)
        if prior is not None:
            scores = scores + prior.to(scores.dtype)[:, None, None, :]
        attn = scores.masked_fill(~doc_mask[:, None, None, :], float("-inf")).softmax(dim=-1)
        mixed = torch.einsum("bhtn,bnthc->bthc", attn, v).reshape(B, T, d)  # (B, T, d)
        return mixed, attn.mean(dim=(1, 2))  # (B, N)

    def aggregate(self, queries: torch.Tensor, memory: torch.Tensor, doc_mask: torch.Tensor | None = None,
                  window: int | None = None, prior: torch.Tensor | None = None, with_weights: bool = True
                  ) -> Aggregated:
        """Aggregate any number of candidates: one window directly, more hierarchically.

        Consecutive windows of ``window`` entries are merged into one entry each, and those entries again,
        depth first (a stack per level), so that at most ``window`` entries per level are alive at once:
        peak memory grows with the window and the tree's depth, not with ``N``. Weights are propagated
        down the tree: a document's weight is its share within its window times that window's share above.
        A merged entry's prior is the log-sum-exp of its documents' priors (their prior mass together).

        The per-document weights are the one O(N) part (4 bytes per document and question): with
        ``with_weights=False`` they are not kept (``weights`` is None) and peak memory beyond the input
        grows only with the tree's depth (up to a window of pending entries per level), not with ``N``
        (``mac_full``-style aggregation over a whole memory, no provenance).
        """
        window = window or self.window
        B, N = memory.shape[:2]
        if doc_mask is not None:
            doc_mask = doc_mask.bool()
            if not bool(doc_mask.any(dim=1).all()):
                raise ValueError("Every question needs at least one candidate document to aggregate.")
        if N <= window:
            if doc_mask is None:
                doc_mask = torch.ones(B, N, dtype=torch.bool, device=memory.device)
            out = self(queries, memory, doc_mask, prior)
            return out if with_weights else Aggregated(out.tokens, None)

        def mass(p: torch.Tensor | None, valid: torch.Tensor) -> torch.Tensor | None:
            return None if p is None else p.masked_fill(~valid, float("-inf")).logsumexp(dim=1)

        # Each stack entry: (tokens (B, T, d), valid (B,), weights (B, n_span) of the documents it covers,
        # log-prior (B,) or None).
        levels: list[list[tuple]] = [[]]

        def merge(entries: list[tuple]):
            tokens = torch.stack([e[0] for e in entries], dim=1)  # (B, w, T, d)
            valid = torch.stack([e[1] for e in entries], dim=1)  # (B, w)
            p = None if prior is None else torch.stack([e[3] for e in entries], dim=1)  # (B, w)
            out = self._safe_window(queries, tokens, valid, p)
            # Each entry's weights cover only its own contiguous span of documents, so nothing is O(N)
            # per entry: concatenating the spans (scaled by the entry's share) covers the merged span.
            doc_w = None
            if with_weights:
                doc_w = torch.cat([out.weights[:, i, None] * e[2] for i, e in enumerate(entries)], dim=1)
            return out.tokens, valid.any(dim=1), doc_w, mass(p, valid)

        def push(level: int, entry) -> None:
            if level == len(levels):
                levels.append([])
            levels[level].append(entry)
            if len(levels[level]) == window:
                merged = merge(levels[level])
                levels[level] = []
                push(level + 1, merged)

        for start in range(0, N, window):
            stop = min(start + window, N)
            # No mask means every document counts: one window's worth of True, never an O(N) mask.
            valid = (doc_mask[:, start:stop] if doc_mask is not None
                     else torch.ones(B, stop - start, dtype=torch.bool, device=memory.device))
            p = None if prior is None else prior[:, start:stop]
            out = self._safe_window(queries, memory[:, start:stop], valid, p)
            push(1, (out.tokens, valid.any(dim=1), out.weights if with_weights else None, mass(p, valid)))

        # Flush the partial windows left on each level, bottom-up, into a single root entry.
        root = None
        for level in range(1, len(levels)):
            entries = levels[level] + ([root] if root is not None else [])
            if entries:
                root = merge(entries) if len(entries) > 1 else entries[0]
        assert root is not None
        return Aggregated(root[0], root[2])

    def _safe_window(self, queries: torch.Tensor, memory: torch.Tensor, valid: torch.Tensor,
                     prior: torch.Tensor | None = None) -> Aggregated:
        """One window where some rows may have no valid entry: those rows get zero weight everywhere."""
        empty = ~valid.any(dim=1)
        if prior is not None:  # an all-invalid row's -inf masses would make NaNs; its output is discarded
            prior = prior.masked_fill(~valid, 0.0)
        if not bool(empty.any()):
            return self(queries, memory, valid, prior)
        out = self(queries, memory, valid | empty[:, None], prior)
        return Aggregated(out.tokens, out.weights.masked_fill(empty[:, None], 0.0))
