"""Building blocks shared by the MAC networks: pre-norm cross-attention and per-token output MLPs."""

from __future__ import annotations

import math

import torch
from torch import nn


class CrossAttentionBlock(nn.Module):
    """Pre-norm transformer block: queries attend to a (masked) memory, then a feed-forward.

    ``x`` is ``(B, Tq, d)``; ``memory`` is ``(B, M, d)``; ``memory_mask`` is ``(B, M)`` with True for
    positions that may be attended to.
    """

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: float = 2.0, dropout: float = 0.0,
                 self_attention: bool = False) -> None:
        super().__init__()
        self.self_attention = self_attention
        if self_attention:
            self.norm_self = nn.LayerNorm(d_model)
            self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(d_model)
        hidden = max(1, int(d_model * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, d_model))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        if self.self_attention:
            h = self.norm_self(x)
            x = x + self.self_attn(h, h, h, need_weights=False)[0]
        kv = self.norm_kv(memory)
        x = x + self.cross_attn(self.norm_q(x), kv, kv, key_padding_mask=~memory_mask, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


class PerTokenMLP(nn.Module):
    """T independent small MLPs, one per memory token (LayerNorm, Linear, Tanh, Linear + a projection skip).

    ``(B, T, d_in)`` → ``(B, T, d_out)``: token ``t`` only ever goes through MLP ``t``, as in the paper's
    amortization network.
    """

    def __init__(self, num_tokens: int, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_in)
        self.w1 = nn.Parameter(torch.randn(num_tokens, d_in, hidden) / math.sqrt(d_in))
        self.b1 = nn.Parameter(torch.zeros(num_tokens, hidden))
        self.w2 = nn.Parameter(torch.randn(num_tokens, hidden, d_out) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(num_tokens, d_out))
        self.skip = nn.Parameter(torch.randn(num_tokens, d_in, d_out) / math.sqrt(d_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        hidden = torch.tanh(torch.einsum("btd,tdh->bth", h, self.w1) + self.b1)  # (B, T, hidden)
        return torch.einsum("bth,tho->bto", hidden, self.w2) + self.b2 + torch.einsum("btd,tdo->bto", x, self.skip)
