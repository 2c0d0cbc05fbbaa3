"""MACModel: the trainable networks of MAC around one frozen base LM.

Data flow (shapes for a batch of ``B`` questions, each with ``N`` candidate documents)::

    documents ──amortize──▶ memory tokens (N_docs, T, d_mem)            one pass per document, stored
    questions ──question encoder──▶ (B, T, d_mem)
    (B, T, d_mem) + memory (B, N, T, d_mem) ──aggregate──▶ (B, T, d_mem) + weights (B, N)
    (B, T, d_mem) ──projector──▶ prefix K/V (n_layers, B, n_kv_heads, P, head_dim)
    prefix + "Question: ...\\nAnswer:" ──frozen LM──▶ answer

The frozen LM is referenced, never a submodule: it is not trained, not saved, and its parameters never
receive gradients.

Example:
    >>> lm = FrozenLM.from_pretrained("gpt2")                                     # doctest: +SKIP
    >>> mac = MACModel(MACConfig(base_lm=BaseLMConfig("gpt2")), lm)              # doctest: +SKIP
    >>> memory = mac.amortize(["Velmora Quistan was born in Ostravel."])        # doctest: +SKIP
    >>> mac.generate(["Where was Velmora Quistan born?"], memory[None])         # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import BaseLMConfig, MACConfig
from .errors import check_texts
from .frozen_lm import FrozenLM
from .networks.aggregator import Aggregated, AggregationNetwork
from .networks.amortizer import Amortizer, KVAnchoredAmortizer, build_amortizer
from .networks.modulation import PrefixProjector
from .prefix import PrefixKV

logger = logging.getLogger(__name__)


class MACModel(nn.Module):
    """Amortization network, question encoder, aggregation network and prefix projector for one LM."""

    def __init__(self, config: MACConfig, lm: FrozenLM, *, backbone: Any = None, tokenizer: Any = None) -> None:
        super().__init__()
        self.config = config
        self._lm = [lm]  # kept out of the module tree: frozen, never saved with the networks
        a = config.amortizer
        if a.kind != "kv_anchored" and backbone is None:
            from transformers import AutoModel, AutoTokenizer

            backbone = AutoModel.from_pretrained(a.backbone)
            tokenizer = AutoTokenizer.from_pretrained(a.backbone)
        question_backbone = copy.deepcopy(backbone) if backbone is not None else None
        self.amortizer: Amortizer = build_amortizer(a, lm=lm, max_length=a.max_length, backbone=backbone,
                                                    tokenizer=tokenizer)
        self.question_encoder: Amortizer = build_amortizer(a, lm=lm, max_length=config.question_max_length,
                                                           backbone=question_backbone, tokenizer=tokenizer)
        self.aggregator = AggregationNetwork(config.aggregator, a.d_mem)
        anchored = isinstance(self.amortizer, KVAnchoredAmortizer)
        self.projector = PrefixProjector(lm.layout, a.d_mem, a.num_tokens, config.prefix_len,
                                         config.modulation.hidden, anchored=anchored)
        if anchored:
            with torch.no_grad():  # start as the exact transpose of the down-projection
                self.projector.expand.weight.copy_(self.amortizer.down.weight.T)
        self.to(lm.device)

    # ------------------------------------------------------------------ properties
    @property
    def lm(self) -> FrozenLM:
        return self._lm[0]

    @property
    def device(self) -> torch.device:
        return self.lm.device

    @property
    def num_tokens(self) -> int:
        return self.config.amortizer.num_tokens

    @property
    def d_mem(self) -> int:
        return self.config.amortizer.d_mem

    # ------------------------------------------------------------------ the four steps
    def amortize(self, documents: Sequence[str], batch_size: int | None = None) -> torch.Tensor:
        """Memory tokens ``(N, T, d_mem)`` for ``documents`` (one forward pass each, in batches)."""
        documents = check_texts(documents, "document")
        if batch_size is None or len(documents) <= batch_size:
            return self.amortizer(documents)
        return torch.cat([self.amortizer(documents[i : i + batch_size])
                          for i in range(0, len(documents), batch_size)])

    def encode_questions(self, questions: Sequence[str]) -> torch.Tensor:
        """Question tokens ``(B, T, d_mem)`` that drive the aggregation."""
        return self.question_encoder(check_texts(questions, "question"))

    def retrieval_prior(self, similarity: torch.Tensor | None, doc_mask: torch.Tensor | None = None
                        ) -> torch.Tensor | None:
        """Read-out log-prior ``(B, N)`` from the candidates' retrieval similarity ``(B, N)``.

        ``similarity / retrieval_temperature`` (the checkpoint's calibrated temperature, see
        :class:`~mac_memory.config.AggregatorConfig`); None when there is no similarity or no temperature.
        Padding candidates (``doc_mask`` False) and non-finite similarities contribute nothing.
        """
        temperature = self.config.aggregator.retrieval_temperature
        if similarity is None or temperature is None:
            return None
        prior = similarity.to(self.device, torch.float32) / float(temperature)
        keep = torch.isfinite(prior) if doc_mask is None else torch.isfinite(prior) & doc_mask.bool()
        return prior.masked_fill(~keep, 0.0)

    def aggregate(self, questions: Sequence[str], memory: torch.Tensor, doc_mask: torch.Tensor | None = None,
                  window: int | None = None, similarity: torch.Tensor | None = None, *, with_weights: bool = True
                  ) -> Aggregated:
        """Merge ``memory`` ``(B, N, T, d_mem)`` (or ``(N, T, d_mem)``, shared by all questions) per question.

        ``similarity`` ``(B, N)``: each candidate's retrieval similarity to its question (cosine), turned
        into a read-out prior by :meth:`retrieval_prior`; leave it None when there was no search.
        ``with_weights=False`` skips the per-document weights (the only part that grows with ``N``).
        """
        queries = self.encode_questions(questions)
        memory = _per_question(memory, queries.shape[0])
        if similarity is not None and similarity.shape != memory.shape[:2]:
            raise ValueError(f"similarity must be (B, N) = {tuple(memory.shape[:2])}; got {tuple(similarity.shape)}.")
        prior = self.retrieval_prior(similarity, doc_mask)
        return self.aggregator.aggregate(queries, memory, doc_mask, window=window, prior=prior,
                                         with_weights=with_weights)

    def modulate(self, questions: Sequence[str], memory: torch.Tensor, doc_mask: torch.Tensor | None = None,
                 window: int | None = None, similarity: torch.Tensor | None = None) -> tuple[PrefixKV, torch.Tensor]:
        """The prefix for each question and each candidate's aggregation weight ``(B, N)``."""
        merged = self.aggregate(questions, memory, doc_mask, window, similarity)
        return self.projector(merged.tokens), merged.weights

    def loss(self, questions: Sequence[str], answers: Sequence[str], memory: torch.Tensor,
             doc_mask: torch.Tensor | None = None, *, recompute_chunk: int = 0) -> torch.Tensor:
        """MAC's objective: the frozen LM's answer NLL under the aggregated prefix.

        ``recompute_chunk`` > 0 recomputes the frozen LM's activations in backward, that many questions at
        a time, instead of keeping them (:meth:`FrozenLM.answer_loss`): less memory, same loss.
        """
        prefix, _ = self.modulate(questions, memory, doc_mask)
        return self.lm.answer_loss(questions, answers, prefix, recompute_chunk=recompute_chunk)

    @torch.no_grad()
    def generate(self, questions: Sequence[str], memory: torch.Tensor, doc_mask: torch.Tensor | None = None,
                 *, max_new_tokens: int = 32, num_beams: int = 1, window: int | None = None,
                 similarity: torch.Tensor | None = None) -> tuple[list[str], torch.Tensor]:
        """Answers to ``questions`` from ``memory`` alone (no document text in the prompt) + weights."""
        prefix, weights = self.modulate(questions, memory, doc_mask, window, similarity)
        return self.lm.answer(questions, prefix, max_new_tokens=max_new_tokens, num_beams=num_beams), weights

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """Write config, networks (safetensors) and the base LM's identity to ``path``; returns ``path``."""
        return save_checkpoint(self, Path(path))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, lm: FrozenLM | str | None = None,
                        device: str | None = None) -> MACModel:
        """Load a checkpoint written by :meth:`save_pretrained`.

        ``lm`` is the base LM to serve (a :class:`FrozenLM`, or a hub name / local path to load); by
        default the one recorded in the checkpoint is loaded. Either way it must be the LM the
        checkpoint was trained for, or :class:`~mac_memory.errors.BaseModelMismatchError` is raised.
        """
        return load_checkpoint(cls, Path(path), lm=lm, device=device)

    @classmethod
    def from_base_lm(cls, config: MACConfig, lm: FrozenLM | None = None, **kwargs: Any) -> MACModel:
        """A fresh (untrained) model; loads ``config.base_lm`` when ``lm`` is not given."""
        if lm is None:
            b: BaseLMConfig = config.base_lm
            lm = FrozenLM.from_pretrained(b.name_or_path, dtype=b.dtype, revision=b.revision, gguf_file=b.gguf_file)
        return cls(config, lm, **kwargs)

    def fingerprint(self) -> str:
        """Content hash of the networks' weights: what stored modulations record to detect a swap."""
        from .checkpoint import state_fingerprint

        return state_fingerprint(self)


def _per_question(memory: torch.Tensor, batch: int) -> torch.Tensor:
    """``(N, T, d)`` shared by every question → ``(B, N, T, d)``; ``(B, N, T, d)`` is checked and kept."""
    if memory.dim() == 3:
        return memory.unsqueeze(0).expand(batch, -1, -1, -1)
    if memory.dim() != 4 or memory.shape[0] != batch:
        raise ValueError(f"memory must be (N, T, d_mem) or (B={batch}, N, T, d_mem); got {tuple(memory.shape)}.")
    return memory
