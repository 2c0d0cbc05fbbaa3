"""Baselines that adapt the LM's *weights* to the stream, for comparison with MAC's memory.

:class:`OnlineFineTuner` is the paper's "Uniform" online fine-tuning baseline: a copy of the base LM is
trained on the stream's documents with the plain language-modelling loss (every token weighted the
same), document batch after document batch in stream order, and then answers questions closed-book.
The frozen LM that MAC and the other methods use is never touched: the copy owns its own weights and
optimizer state.

Example:
    >>> tuner = OnlineFineTuner(lm, lr=1e-4)                              # doctest: +SKIP
    >>> tuner.ingest(["Velmora Quistan was born in Belby."])              # doctest: +SKIP
    >>> tuner.lm.answer(["Where was Velmora Quistan born?"])              # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..frozen_lm import FrozenLM

logger = logging.getLogger(__name__)

__all__ = ["OnlineFineTuner", "max_positions"]


def max_positions(lm: FrozenLM) -> int | None:
    """The LM's context length from its config (``n_positions`` / ``max_position_embeddings``), if known."""
    config = lm.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    value = getattr(text, "n_positions", None) or getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


class OnlineFineTuner:
    """Online fine-tuning ("Uniform") of a private copy of a frozen LM on a document stream.

    Args:
        lm: the frozen base LM; it is deep-copied, never modified.
        lr: AdamW learning rate.
        steps_per_doc: optimizer steps on each batch of documents (each document is seen this many times).
        batch_size: documents per optimizer step.
        weight_decay: AdamW weight decay.
        max_length: document tokens per example (default: the LM's context length, capped at 1024).
        grad_clip: gradient-norm clipping (None = off).
    """

    def __init__(
        self,
        lm: FrozenLM,
        *,
        lr: float = 1e-4,
        steps_per_doc: int = 1,
        batch_size: int = 4,
        weight_decay: float = 0.0,
        max_length: int | None = None,
        grad_clip: float | None = 1.0,
    ) -> None:
        if not lr > 0:
            raise ConfigError(f"OnlineFineTuner.lr={lr!r} is invalid: must be > 0.")
        for name, value in (("steps_per_doc", steps_per_doc), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"OnlineFineTuner.{name}={value!r} is invalid: must be a positive integer.")
        self.steps_per_doc = steps_per_doc
        self.batch_size = batch_size
        self.grad_clip = grad_clip
        self.max_length = max_length or min(max_positions(lm) or 1024, 1024)
        # A deep copy: the frozen LM (shared with MAC and every other method) keeps its weights, and
        # the copy's parameters are the only ones the optimizer ever sees.
        model = copy.deepcopy(lm.model)
        self.lm = FrozenLM(model, lm.tokenizer, f"{lm.name_or_path} (online fine-tuned copy)")
        model.requires_grad_(True)  # FrozenLM froze the copy; this baseline is exactly about training it
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.documents_seen = 0
        self.steps = 0

    @property
    def model(self) -> torch.nn.Module:
        """The fine-tuned copy."""
        return self.lm.model

    def ingest(self, documents: Sequence[str]) -> float:
        """Train on ``documents`` (in order, ``batch_size`` at a time); returns the mean loss."""
        documents = list(documents)
        losses: list[float] = []
        for start in range(0, len(documents), self.batch_size):
            batch = documents[start : start + self.batch_size]
            input_ids, attention_mask = self.lm.tokenize(batch, max_length=self.max_length, add_eos=True)
            labels = input_ids.masked_fill(attention_mask == 0, -100)  # loss on every real token (Uniform)
            self.model.train()
            try:
                for _ in range(self.steps_per_doc):
                    # FrozenLM.forward gives left-padded rows the right position ids.
                    loss = self.lm.forward(input_ids, attention_mask, labels=labels).loss
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.grad_clip:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                    self.optimizer.step()
                    self.steps += 1
                    losses.append(float(loss.detach()))
            finally:
                self.model.eval()
            self.documents_seen += len(batch)
        return sum(losses) / max(len(losses), 1)
