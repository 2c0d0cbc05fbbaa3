"""Modulation → prefix: merged memory tokens become per-layer prefix keys/values for the frozen LM.

``(B, T, d_mem)`` tokens are mixed along the token axis to ``prefix_len`` positions (when the two
differ), then each position is expanded to ``n_layers × {K, V} × n_kv_heads × head_dim`` numbers and
reshaped to the LM's cache layout. Every size comes from the LM's :class:`~mac_memory.frozen_lm.KVLayout`
(grouped-query attention included), never from constants.

* ``anchored=True`` (KV-anchored amortizer): a linear up-projection, started as the transpose of the
  amortizer's down-projection, so an unaggregated memory token maps back onto the pooled key/values.
* ``anchored=False`` (T5/encoder amortizers): the paper's per-token feed-forward
  (LayerNorm, Linear, Tanh, Linear) with a learned embedding per prefix position.
"""

from __future__ import annotations

import torch
from torch import nn

from ..frozen_lm import KVLayout
from ..prefix import PrefixKV


class PrefixProjector(nn.Module):
    """``(B, T, d_mem)`` → :class:`PrefixKV` with keys/values ``(n_layers, B, n_kv_heads, prefix_len, head_dim)``."""

    def __init__(self, layout: KVLayout, d_mem: int, num_tokens: int, prefix_len: int, hidden: int,
                 anchored: bool) -> None:
        super().__init__()
        self.layout, self.prefix_len, self.anchored = layout, prefix_len, anchored
        out_dim = layout.num_layers * 2 * layout.kv_dim
        # Mixing along the token axis only when the prefix length differs from T.
        self.token_mix = nn.Linear(num_tokens, prefix_len) if prefix_len != num_tokens else None
        if anchored:
            self.expand = nn.Linear(d_mem, out_dim)
            nn.init.zeros_(self.expand.bias)
        else:
            self.position = nn.Parameter(torch.zeros(prefix_len, d_mem))
            self.expand = nn.Sequential(nn.LayerNorm(d_mem), nn.Linear(d_mem, hidden), nn.Tanh(),
                                        nn.Linear(hidden, out_dim))

    def forward(self, tokens: torch.Tensor) -> PrefixKV:
        x = tokens  # (B, T, d_mem)
        if self.token_mix is not None:
            x = self.token_mix(x.transpose(1, 2)).transpose(1, 2)  # (B, P, d_mem)
        if not self.anchored:
            x = x + self.position
        out = self.expand(x)  # (B, P, n_layers * 2 * kv_dim)
        B, P = out.shape[:2]
        L, H, D = self.layout.num_layers, self.layout.num_kv_heads, self.layout.head_dim
        kv = out.view(B, P, L, 2, H, D).permute(2, 3, 0, 4, 1, 5)  # (L, 2, B, H, P, D)
        return PrefixKV(kv[:, 0], kv[:, 1])
