"""Amortization networks: a document (or question) → ``T`` memory tokens of width ``d_mem``, in one pass.

Three kinds, chosen by ``AmortizerConfig.kind``:

* :class:`Seq2SeqAmortizer` (``t5``) — the paper's: a T5 encoder reads the text; the T5 decoder, fed
  ``T`` learned query embeddings instead of tokens, cross-attends to it; per-token MLPs map to ``d_mem``.
* :class:`EncoderAmortizer` (``encoder``) — a BERT-like encoder (e.g. all-MiniLM-L6-v2) reads the text;
  a small learned-query cross-attention decoder on top produces the ``T`` tokens.
* :class:`KVAnchoredAmortizer` (``kv_anchored``) — the frozen base LM reads the text once (no gradient);
  learned, question-independent pooling queries compress each layer's keys/values to ``T`` slots; a linear
  map takes the concatenated slots to ``d_mem``. A prefix made of a text's own key/values is exactly that
  text in the prompt, so this kind starts compression from the right place.

The same classes serve as the aggregator's question encoder (the paper's "encoder of the same shape").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import AmortizerConfig
from ..errors import check_texts
from ..frozen_lm import FrozenLM
from .blocks import CrossAttentionBlock, PerTokenMLP


class Amortizer(nn.Module):
    """Common interface: ``forward(texts) -> (B, num_tokens, d_mem)``."""

    num_tokens: int
    d_mem: int
    max_length: int

    def forward(self, texts: Sequence[str]) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class _BackboneAmortizer(Amortizer):
    """Shared tokenization for amortizers with their own HF backbone and tokenizer."""

    def __init__(self, config: AmortizerConfig, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 max_length: int) -> None:
        super().__init__()
        self.num_tokens, self.d_mem, self.max_length = config.num_tokens, config.d_mem, max_length
        self.backbone = backbone
        self.tokenizer = tokenizer
        if config.freeze_backbone:
            backbone.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        cfg = self.backbone.config
        return int(getattr(cfg, "d_model", None) or cfg.hidden_size)

    def _tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = check_texts(texts, "document")
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        device = self.backbone.device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)


class Seq2SeqAmortizer(_BackboneAmortizer):
    """T5 encoder-decoder; the decoder reads ``T`` learned query embeddings (the paper's best design)."""

    def __init__(self, config: AmortizerConfig, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 max_length: int) -> None:
        super().__init__(config, backbone, tokenizer, max_length)
        if not backbone.config.is_encoder_decoder:
            raise ValueError(f"The 't5' amortizer needs an encoder-decoder backbone; {config.backbone!r} is not one.")
        d = self.hidden_size
        self.queries = nn.Parameter(torch.randn(config.num_tokens, d) * 0.02)  # (T, d_model)
        self.heads = PerTokenMLP(config.num_tokens, d, config.head_hidden, config.d_mem)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        input_ids, attention_mask = self._tokenize(texts)
        queries = self.queries.unsqueeze(0).expand(input_ids.shape[0], -1, -1)  # (B, T, d_model)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, decoder_inputs_embeds=queries)
        return self.heads(out.last_hidden_state)  # (B, T, d_mem)


class EncoderAmortizer(_BackboneAmortizer):
    """Encoder-only backbone (BERT family) + a small learned-query cross-attention decoder."""

    def __init__(self, config: AmortizerConfig, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 max_length: int) -> None:
        super().__init__(config, backbone, tokenizer, max_length)
        d = config.d_mem
        self.input_proj = nn.Linear(self.hidden_size, d)
        self.queries = nn.Parameter(torch.randn(config.num_tokens, d) * 0.02)  # (T, d_mem)
        self.decoder = nn.ModuleList(
            CrossAttentionBlock(d, config.decoder_heads, self_attention=True) for _ in range(config.decoder_layers)
        )
        self.heads = PerTokenMLP(config.num_tokens, d, config.head_hidden, d)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's reading of ``texts``: last hidden states ``(B, n, hidden)`` and attention mask ``(B, n)``.

        Split from :meth:`memory_tokens` so that one backbone pass can serve twice: when the backbone is
        also the memory's sentence embedder, its mean-pooled states are the chunk's embedding
        (:mod:`mac_memory.memory.shared_encoder`), and the document is not read a second time.
        """
        input_ids, attention_mask = self._tokenize(texts)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden, attention_mask  # (B, n, hidden), (B, n)

    def memory_tokens(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, T, d_mem)`` from :meth:`encode`'s hidden states ``(B, n, hidden)`` and mask ``(B, n)``."""
        memory = self.input_proj(hidden)  # (B, n, d_mem)
        x = self.queries.unsqueeze(0).expand(hidden.shape[0], -1, -1)  # (B, T, d_mem)
        for block in self.decoder:
            x = block(x, memory, attention_mask.bool())
        return self.heads(x)  # (B, T, d_mem)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.memory_tokens(*self.encode(texts))  # (B, T, d_mem)


class KVAnchoredAmortizer(Amortizer):
    """The frozen base LM reads the text; learned pooling queries compress each layer's K/V to ``T`` slots.

    Slot ``t`` of layer ``l`` is an attention-weighted average of the text's keys (and, with the same
    weights, values) for each key/value head, with weights from a learned query that never sees the
    question: every document's modulation is computed once and stored. The slots of all layers are
    concatenated (``n_layers * 2 * kv_dim`` numbers per token) and linearly mapped to ``d_mem``; the
    prefix projector maps them back, and starts as the exact transpose of this map.
    """

    def __init__(self, config: AmortizerConfig, lm: FrozenLM, max_length: int) -> None:
        super().__init__()
        self.num_tokens, self.d_mem, self.max_length = config.num_tokens, config.d_mem, max_length
        self._lm = [lm]  # a list keeps the frozen LM out of this module's parameters and state dict
        layout = lm.layout
        L, H, D, T = layout.num_layers, layout.num_kv_heads, layout.head_dim, config.num_tokens
        self.pool_queries = nn.Parameter(torch.randn(L, H, T, D))  # (L, H, T, head_dim), one set per layer
        self.anchor_dim = L * 2 * H * D
        self.down = nn.Linear(self.anchor_dim, config.d_mem, bias=False)
        with torch.no_grad():
            self.down.weight.copy_(anchor_basis(self.anchor_dim, config.d_mem))

    @property
    def lm(self) -> FrozenLM:
        return self._lm[0]

    def pooled_kv(self, texts: Sequence[str]) -> torch.Tensor:
        """``(B, T, n_layers * 2 * kv_dim)``: each slot's pooled keys and values, concatenated over layers."""
        texts = check_texts(texts, "document")
        read = self.lm.read(*self.lm.tokenize(texts, max_length=self.max_length))  # K/V (L, B, H, n, D)
        keys, values = read.keys.float(), read.values.float()
        scale = 1.0 / math.sqrt(keys.shape[-1])
        scores = torch.einsum("lhtd,lbhnd->lbhtn", self.pool_queries, keys) * scale  # (L, B, H, T, n)
        pad = (read.full_mask() == 0)[None, :, None, None, :]  # (1, B, 1, 1, n)
        weights = scores.masked_fill(pad, float("-inf")).softmax(dim=-1)
        pooled_k = torch.einsum("lbhtn,lbhnd->lbhtd", weights, keys)  # (L, B, H, T, D)
        pooled_v = torch.einsum("lbhtn,lbhnd->lbhtd", weights, values)
        kv = torch.stack([pooled_k, pooled_v], dim=1)  # (L, 2, B, H, T, D)
        B = kv.shape[2]
        return kv.permute(2, 4, 0, 1, 3, 5).reshape(B, self.num_tokens, self.anchor_dim)  # (B, T, L*2*H*D)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        return self.down(self.pooled_kv(texts))  # (B, T, d_mem)


def anchor_basis(anchor_dim: int, d_mem: int, seed: int = 0) -> torch.Tensor:
    """``(d_mem, anchor_dim)`` with orthonormal rows (identity when ``d_mem == anchor_dim``).

    Used to start the KV-anchored down-projection and its transpose in the prefix projector, so that
    at initialisation the prefix is the orthogonal projection of the pooled key/values.
    """
    if d_mem >= anchor_dim:
        return torch.eye(d_mem, anchor_dim)
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(anchor_dim, d_mem, generator=generator))  # (anchor_dim, d_mem)
    return q.T.contiguous()


def build_amortizer(config: AmortizerConfig, *, lm: FrozenLM, max_length: int,
                    backbone: PreTrainedModel | None = None,
                    tokenizer: PreTrainedTokenizerBase | None = None) -> Amortizer:
    """The amortizer of ``config.kind``; T5/encoder kinds take an already-loaded backbone and tokenizer."""
    if config.kind == "kv_anchored":
        return KVAnchoredAmortizer(config, lm, max_length)
    if backbone is None or tokenizer is None:
        raise ValueError(f"The {config.kind!r} amortizer needs its backbone model and tokenizer.")
    cls = Seq2SeqAmortizer if config.kind == "t5" else EncoderAmortizer
    return cls(config, backbone, tokenizer, max_length)
