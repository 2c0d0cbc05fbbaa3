"""Per-example prefix keys/values (P-tuning v2) and how they enter a transformers 5 causal LM.

A :class:`PrefixKV` is what a modulation becomes right before generation: for every layer of the base
LM, ``P`` key and value vectors per key/value head. It is injected as a fresh ``DynamicCache`` (the
cache is mutated by every forward and ``generate`` call, so it is never reused), with an attention
mask of length ``P + L`` and positions that start right after the prefix for every row, left padding
included. These are the conventions that make a prefix of the LM's own key/values for a context give
exactly the logits of that context written into the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class PrefixKV:
    """Prefix keys/values for a batch.

    Attributes:
        keys: ``(n_layers, B, n_kv_heads, P, head_dim)``.
        values: same shape as ``keys``.
        mask: ``(B, P)`` with 1 for real prefix slots and 0 for padding slots, or None (all real).
    """

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.keys.dim() != 5 or self.keys.shape != self.values.shape:
            raise ValueError(
                "PrefixKV keys/values must both be (n_layers, B, n_kv_heads, P, head_dim); "
                f"got {tuple(self.keys.shape)} and {tuple(self.values.shape)}."
            )
        if self.mask is not None and tuple(self.mask.shape) != (self.batch_size, self.length):
            raise ValueError(f"PrefixKV mask must be (B, P)={(self.batch_size, self.length)}, "
                             f"got {tuple(self.mask.shape)}.")

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def length(self) -> int:
        return self.keys.shape[3]

    @property
    def num_layers(self) -> int:
        return self.keys.shape[0]

    def full_mask(self) -> torch.Tensor:
        """``(B, P)`` mask with padding slots at 0 (all ones when no mask was given)."""
        if self.mask is not None:
            return self.mask
        return torch.ones(self.batch_size, self.length, dtype=torch.long, device=self.keys.device)

    def expand(self, batch_size: int) -> PrefixKV:
        """Broadcast a batch-1 prefix to ``batch_size`` rows (a batch-1 cache does not broadcast)."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"Cannot expand a prefix of batch {self.batch_size} to {batch_size}.")
        mask = None if self.mask is None else self.mask.expand(batch_size, -1)
        shape = (-1, batch_size, -1, -1, -1)
        return PrefixKV(self.keys.expand(*shape), self.values.expand(*shape), mask)

    def repeat_interleave(self, n: int) -> PrefixKV:
        """Repeat each row ``n`` times (for beams / several return sequences)."""
        if n == 1:
            return self
        mask = None if self.mask is None else self.mask.repeat_interleave(n, dim=0)
        return PrefixKV(self.keys.repeat_interleave(n, dim=1), self.values.repeat_interleave(n, dim=1), mask)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PrefixKV:
        mask = None if self.mask is None else self.mask.to(device)
        return PrefixKV(self.keys.to(device, dtype), self.values.to(device, dtype), mask)

    @staticmethod
    def cat(prefixes: list[PrefixKV]) -> PrefixKV:
        """Concatenate prefixes along the prefix axis (e.g. several documents' key/values)."""
        keys = torch.cat([p.keys for p in prefixes], dim=3)
        values = torch.cat([p.values for p in prefixes], dim=3)
        if all(p.mask is None for p in prefixes):
            return PrefixKV(keys, values)
        return PrefixKV(keys, values, torch.cat([p.full_mask() for p in prefixes], dim=1))

    def to_cache(self, config, dtype: torch.dtype, device: torch.device) -> DynamicCache:
        """A *fresh* cache holding the prefix, in the model's dtype/device (a mismatch breaks SDPA)."""
        layers = [(k.to(device, dtype), v.to(device, dtype)) for k, v in zip(self.keys, self.values)]
        return DynamicCache(ddp_cache_data=layers, config=config)


def prefixed_mask(prefix: PrefixKV, attention_mask: torch.Tensor) -> torch.Tensor:
    """``(B, P + L)`` mask: prefix slots first. ``generate`` silently drops P input tokens without it."""
    return torch.cat([prefix.full_mask().to(attention_mask.device, attention_mask.dtype), attention_mask], dim=1)


def prefixed_positions(full_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Positions of the last ``length`` tokens: real tokens count on from the prefix, pads are ignored.

    The model's default (``arange(L) + P``) is wrong for left-padded rows, so training forwards always
    pass these explicitly; ``generate`` derives the same positions from the mask itself.
    """
    return (full_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
