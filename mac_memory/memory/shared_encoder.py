"""One encoder pass for a chunk's embedding and its modulation, when the two models are one.

Writing a chunk embeds it (for Chroma's similarity search) and amortizes it (for its modulation). With
the ``encoder`` amortizer on all-MiniLM-L6-v2 and the default embedder, both read the chunk with the
*same* frozen BERT: the amortizer's backbone already computes every hidden state the embedder would, and
the embedding is their mean over real tokens, L2-normalised. Reading the chunk twice then doubles the
cost of ingestion for nothing; :class:`SharedEncoderPass` reads it once and returns both.

The pass is shared only when its embeddings are the embedder's, since stored embeddings are compared
with query embeddings that the embedder alone makes. :func:`sharing_refusal` states the rule:

* the amortizer is an :class:`~mac_memory.networks.amortizer.EncoderAmortizer` whose backbone is frozen
  (``AmortizerConfig.freeze_backbone``): the weights compared below stay those weights;
* the embedder is a :class:`~.embedder.SentenceTransformerEmbedder` whose model is exactly
  ``Transformer → Pooling(mean) [→ Normalize]``, with no prompt and no truncated dimension;
* it reads as far as the amortizer (``max_seq_length == amortizer.max_length``), with the same tokenizer
  (its serialised pipeline: normalizer, pre-tokenizer, vocabulary, special tokens) cut on the same side;
* its transformer and the backbone are the same class with equal weights (BERT's pooler aside: it is not
  on the path to the hidden states).

A model can pass every check and still differ in a way none of them names (an attention implementation,
a processor option of a newer sentence-transformers), so :meth:`SharedEncoderPass.build` finally embeds a
few probe texts both ways (one past the length limit, to compare truncation) and shares only if they
agree to ``1e-5``.

Example:
    >>> shared, reason = SharedEncoderPass.build(mac.amortizer, SentenceTransformerEmbedder())  # doctest: +SKIP
    >>> memory_tokens, embeddings = shared(["Paris is in France."])                               # doctest: +SKIP
    >>> memory_tokens.shape, embeddings.shape                                                      # doctest: +SKIP
    (torch.Size([1, 8, 256]), (1, 384))
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..networks.amortizer import EncoderAmortizer
from .embedder import SentenceTransformerEmbedder

logger = logging.getLogger(__name__)

__all__ = ["SharedEncoderPass", "mean_pool", "sharing_refusal"]

PROBE_ATOL = 1e-5
"""Largest difference allowed between the probe's shared-pass and embedder embeddings (unit vectors)."""


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Unit-norm mean of ``hidden`` ``(B, n, h)`` over the real tokens of ``attention_mask`` ``(B, n)`` → ``(B, h)``.

    What sentence-transformers' mean ``Pooling`` then normalisation compute, accumulated in float32.
    """
    mask = attention_mask.unsqueeze(-1).to(torch.float32)  # (B, n, 1)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)  # (B, h)
    mean = summed / mask.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=-1)  # (B, h)


def sharing_refusal(amortizer: Any, embedder: Any) -> str | None:
    """Why one backbone pass cannot give ``embedder``'s embeddings, or None when the rule holds.

    Checks the models' structure only (see the module docstring); :meth:`SharedEncoderPass.build` adds
    the probe. Loads the embedder's model when the amortizer could share at all.
    """
    if not isinstance(amortizer, EncoderAmortizer):
        return f"the amortizer is a {type(amortizer).__name__}, not an encoder amortizer"
    if not isinstance(embedder, SentenceTransformerEmbedder):
        return f"the embedder is a {type(embedder).__name__}, not a SentenceTransformerEmbedder"
    if any(p.requires_grad for p in amortizer.backbone.parameters()):
        return "the amortizer's backbone is trainable (AmortizerConfig.freeze_backbone=False)"
    model = embedder.model
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"the embedder's modules are {names}, not Transformer → Pooling [→ Normalize]"
    if not _is_mean_pooling(modules[1]):
        return "the embedder does not mean-pool its token states"
    prompt_name = getattr(model, "default_prompt_name", None)
    if prompt_name is not None and (getattr(model, "prompts", None) or {}).get(prompt_name):
        return f"the embedder prepends its default prompt {prompt_name!r}"
    if getattr(model, "truncate_dim", None) is not None:
        return f"the embedder truncates its embeddings to {model.truncate_dim} dimensions"
    if model.max_seq_length != amortizer.max_length:
        return (
            f"the embedder reads {model.max_seq_length} tokens, the amortizer {amortizer.max_length} "
            "(a chunk longer than the shorter limit would be embedded from other tokens)"
        )
    reason = _tokenizer_difference(modules[0].tokenizer, amortizer.tokenizer)
    if reason:
        return reason
    return _weights_difference(modules[0].auto_model, amortizer.backbone)


def _is_mean_pooling(pooling: Any) -> bool:
    mode = getattr(pooling, "pooling_mode", None)  # sentence-transformers >= 6: "mean" or a tuple of modes
    if mode is None and hasattr(pooling, "get_pooling_mode_str"):  # 5.x: one flag per mode
        mode = pooling.get_pooling_mode_str()
    if isinstance(mode, (list, tuple)) and len(mode) == 1:
        mode = mode[0]
    return mode == "mean"


def _tokenizer_difference(theirs: Any, ours: Any) -> str | None:
    """Why the two tokenizers may cut a text into different ids, or None when they cannot."""
    if theirs is ours:
        return None
    if not (hasattr(theirs, "backend_tokenizer") and hasattr(ours, "backend_tokenizer")):
        return "a tokenizer is not a fast tokenizer, so the two cannot be compared"

    def pipeline(tokenizer: Any) -> dict[str, Any]:
        # Truncation and padding are per-call state of the backend, set before each encode: not identity.
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        return {k: v for k, v in spec.items() if k not in ("truncation", "padding")}

    if type(theirs) is not type(ours) or pipeline(theirs) != pipeline(ours):
        return "the embedder's tokenizer is not the amortizer's"
    if theirs.truncation_side != ours.truncation_side:
        return "the embedder and the amortizer truncate texts on different sides"
    return None


def _weights_difference(theirs: torch.nn.Module, ours: torch.nn.Module) -> str | None:
    """Why ``theirs`` (the embedder's transformer) may compute other hidden states than ``ours``."""
    if theirs is ours:
        return None
    if type(theirs) is not type(ours):
        return (
            f"the embedder's transformer is a {type(theirs).__name__}, the backbone a {type(ours).__name__}"
        )

    def states(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in module.state_dict().items() if not k.startswith("pooler.")}

    a, b = states(theirs), states(ours)
    if a.keys() != b.keys():
        return "the embedder's transformer and the backbone have different weights"
    for name, tensor in a.items():
        other = b[name]
        if (
            tensor.shape != other.shape
            or tensor.dtype != other.dtype
            or not torch.equal(tensor.to(other.device), other)
        ):
            return f"the embedder's transformer and the backbone have different weights ({name})"
    return None


class SharedEncoderPass:
    """Memory tokens and sentence embeddings of a batch of chunks from one backbone pass.

    Build it with :meth:`build`, which applies the rule; calling it does not lock anything (the caller
    holds the model lock, as for any amortizer call).

    Args:
        amortizer: the encoder amortizer whose backbone is the embedder's model.
        embedder: the embedder whose embeddings the pass reproduces.
    """

    def __init__(self, amortizer: EncoderAmortizer, embedder: SentenceTransformerEmbedder) -> None:
        self.amortizer = amortizer
        self.embedder = embedder

    def __repr__(self) -> str:
        return f"SharedEncoderPass(backbone={type(self.amortizer.backbone).__name__}, embedder={self.embedder.name!r})"

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, np.ndarray]:
        """``(B, T, d_mem)`` memory tokens and ``(B, dim)`` float32 unit-norm embeddings of ``texts``."""
        hidden, attention_mask = self.amortizer.encode(texts)  # (B, n, hidden), (B, n)
        memory = self.amortizer.memory_tokens(hidden, attention_mask)  # (B, T, d_mem)
        embeddings = mean_pool(hidden, attention_mask).cpu().numpy()  # (B, hidden)
        return memory, np.ascontiguousarray(embeddings, dtype=np.float32)

    @classmethod
    def build(
        cls, amortizer: Any, embedder: Any, lock: contextlib.AbstractContextManager[Any] | None = None
    ) -> tuple[SharedEncoderPass | None, str]:
        """The shared pass when the rule holds and the probe agrees, else None; and the reason either way.

        ``lock`` is held while the probe runs the amortizer (the memory's model lock).
        """
        reason = sharing_refusal(amortizer, embedder)
        if reason is not None:
            return None, reason
        shared = cls(amortizer, embedder)
        texts = _probe_texts(amortizer.max_length)
        expected = embedder.embed_documents(texts)  # (P, dim)
        with lock if lock is not None else contextlib.nullcontext():
            _, got = shared(texts)
        gap = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        if not gap <= PROBE_ATOL:
            return None, f"the probe's embeddings differ from the embedder's by {gap:.2g} (> {PROBE_ATOL:g})"
        return shared, f"the backbone is the embedder's model (probe difference {gap:.2g})"


def _probe_texts(max_length: int) -> list[str]:
    """Texts of different lengths (padding), cases and punctuation, one longer than ``max_length`` tokens."""
    return [
        "Paris is the capital of France.",
        "Kado Fen WORKS for Brindlecorp; since 1987, as an engineer!",
        " ".join(["Memory of amortized contexts."] * (max_length // 2 + 1)),
    ]
