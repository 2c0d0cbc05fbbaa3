"""``mac-memory eval``: the online-adaptation protocol of the MAC paper, MAC against its baselines.

A stream of documents the networks never saw is ingested, then the questions about those documents are
asked. Every method answers with the same frozen base LM (``mac.lm``); they differ in how the stream
reaches it:

==============  =====================================================================================
``no_memory``   the question alone (what the LM knew before the stream)
``mac_gold``    MAC with only the gold document's memory tokens (the amortizer's ceiling)
``mac``         the deployed path: embedding top-``k`` candidates from the whole memory, aggregated
``mac_full``    hierarchical aggregation over the whole memory, no retrieval (the paper's setting)
``rag``         the top-``k`` retrieved document texts written into the prompt
``rag_gold``    the gold document written into the prompt (the reader's ceiling)
``online_ft``   a copy of the LM fine-tuned on the stream (the paper's "Uniform" baseline), closed-book
==============  =====================================================================================

Retention (``mac`` and ``online_ft``): F1 on the questions of the first ``retention_first`` documents
after ``retention_first × f`` documents have been ingested, for each factor ``f``: the memory grows
(more candidates to retrieve among) or the fine-tune continues (more chances to forget).

``seconds`` per method is wall time including its adaptation (amortizing the stream for ``mac*``,
embedding it for the retrieval methods, fine-tuning for ``online_ft``); ``adapt_seconds`` is that
adaptation alone.

Example:
    >>> report = evaluate(EvalConfig(data="synthetic:test", checkpoint="runs/mac/final",
    ...                              methods=("no_memory", "mac"), max_questions=200))  # doctest: +SKIP
    >>> report["methods"]["mac"]["f1"]                                                 # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, DataFormatError

if TYPE_CHECKING:  # heavy imports stay inside the functions: `mac-memory --help` must be instant
    import numpy as np
    import torch

    from ..data.stream import QA, Document
    from ..frozen_lm import FrozenLM
    from ..model import MACModel

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "EvalConfig", "evaluate", "load_documents", "retention_plan"]

METHODS: tuple[str, ...] = ("no_memory", "mac_gold", "mac", "mac_full", "rag", "rag_gold", "online_ft")
"""Every method the protocol knows, in report order."""
_MAC_METHODS = frozenset({"mac_gold", "mac", "mac_full"})
_RETRIEVAL_METHODS = frozenset({"mac", "rag"})
_RETENTION_METHODS = ("mac", "online_ft")
FRESH_DOCS = 2000
"""synthetic:fresh without limit_docs: enough for retention's 200 first documents × 10."""
EVAL_STREAM = 0
"""The stream of synthetic:fresh (``iter_documents(seed=world_seed, stream=0)``)."""
_N_SAMPLES = 5  # questions whose per-method answers go into the report, for eyeballing


@dataclass
class EvalConfig:
    """Options of ``mac-memory eval``."""

    data: str = "synthetic:test"
    """Document stream: a JSONL(.gz) file, or synthetic:<split> (the synthetic world of world_seed/world_entities),
    or synthetic:fresh (limit_docs, default 2,000, new people written with that world's cities and companies,
    from a stream no training command reads: a held-out stream of any length)."""
    checkpoint: str | None = None
    """MAC checkpoint directory; unset = the project's default checkpoint (or none, with base_lm)."""
    base_lm: str | None = None
    """Without a checkpoint: the base LM (any name ``FrozenLM.from_pretrained`` takes, e.g.
    ``smollm2-135m-instruct-qa``) that the methods needing no MAC networks run on: no_memory, rag,
    rag_gold, online_ft."""
    methods: tuple[str, ...] | None = METHODS
    """Methods to run: no_memory mac_gold mac mac_full rag rag_gold online_ft (None = all)."""
    k: int = 4
    """Candidates retrieved per question (mac, rag)."""
    limit_docs: int | None = None
    """Stream length: use the first N documents (default: all)."""
    max_questions: int | None = None
    """Questions per evaluation (a fixed random sample, in stream order); default: all."""
    max_new_tokens: int = 16
    """Answer tokens generated per question."""
    batch_size: int = 16
    """Questions per generation batch (and documents per amortization batch)."""
    full_batch_size: int = 4
    """Questions per batch for mac_full, where each question aggregates the whole memory."""
    window: int | None = None
    """Aggregation window override for hierarchical aggregation (default: the checkpoint's)."""
    retention: bool = True
    """Measure retention for mac and online_ft."""
    retention_first: int = 200
    """Retention: the questions of this many first documents are re-asked as the stream grows."""
    retention_factors: tuple[int, ...] | None = (1, 2, 5, 10)
    """Retention: measure after retention_first × f documents for each f (1 = the initial score; None = these)."""
    ft_lr: float = 1e-4
    """online_ft: AdamW learning rate (suits the project's small base LMs; ~1e-5 for GPT-2-XL scale)."""
    ft_steps_per_doc: int = 1
    """online_ft: optimizer steps on each batch of documents."""
    ft_batch_size: int = 4
    """online_ft: documents per optimizer step, in stream order."""
    world_seed: int = 0
    """synthetic:<split> data: seed of the synthetic world (as in training)."""
    world_entities: int = 4000
    """synthetic:<split> data: entities in the synthetic world (as in training)."""
    codec: str | None = None
    """Read every document's memory tokens back through the storage codec MACMemory keeps them in
    (``float16``, its default; ``int8``; ``float32``) before answering, as a deployed memory would; None =
    the amortizer's float32 output as is (uncompressed)."""
    out: str | None = "runs/eval/report.json"
    """Report path (JSON); report.md and report.png are written next to it. None = write nothing."""
    device: str | None = None
    """Device to load the checkpoint on (default: cuda when available, else cpu)."""
    seed: int = 0
    """Random seed (question sample, online fine-tuning)."""
    threads: int = 0
    """torch CPU threads (0 = torch's default)."""
    mixed_precision: str = "auto"
    """Autocast for every method's passes: 'auto' (bf16 on a GPU, and on a CPU where it measures faster),
    'no', 'bf16' or 'fp16'."""

    def __post_init__(self) -> None:
        if self.methods is None:
            self.methods = METHODS
        if self.retention_factors is None:
            self.retention_factors = (1, 2, 5, 10)
        for name in ("methods", "retention_factors"):
            if isinstance(getattr(self, name), (list, str)):
                value = getattr(self, name)
                setattr(self, name, (value,) if isinstance(value, str) else tuple(value))
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"EvalConfig.methods={self.methods!r} is invalid: choose from {METHODS}.")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"EvalConfig.methods={self.methods!r} lists a method twice.")
        for name in (
            "k",
            "max_new_tokens",
            "batch_size",
            "full_batch_size",
            "retention_first",
            "ft_steps_per_doc",
            "ft_batch_size",
            "world_entities",
        ):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("limit_docs", "max_questions"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.window is not None:
            _check_int("window", self.window, minimum=2)
        _check_int("threads", self.threads, minimum=0)
        _check_int("world_seed", self.world_seed, minimum=0)
        if not self.retention_factors or any(
            isinstance(f, bool) or not isinstance(f, int) or f < 1 for f in self.retention_factors
        ):
            raise ConfigError(
                f"EvalConfig.retention_factors={self.retention_factors!r} is invalid: "
                "give one or more positive integers."
            )
        if self.codec is not None:
            from ..memory.codec import CODECS

            if self.codec not in CODECS:
                raise ConfigError(f"EvalConfig.codec={self.codec!r} is invalid: choose from {sorted(CODECS)} "
                                  "(or leave it unset for uncompressed memory tokens).")
        if not (isinstance(self.ft_lr, (int, float)) and self.ft_lr > 0):
            raise ConfigError(f"EvalConfig.ft_lr={self.ft_lr!r} is invalid: must be > 0.")
        from ..precision import check_mode

        check_mode(self.mixed_precision, "EvalConfig.mixed_precision")
        if self.base_lm is not None:
            if self.checkpoint is not None:
                raise ConfigError("EvalConfig: give checkpoint or base_lm, not both (a checkpoint names its base LM).")
            needs_mac = sorted(_MAC_METHODS & set(self.methods))
            if needs_mac:
                raise ConfigError(f"EvalConfig.methods {needs_mac} need MAC networks: give a checkpoint, or run "
                                  f"only {[m for m in METHODS if m not in _MAC_METHODS]} with base_lm.")
        if not isinstance(self.data, str) or not self.data.strip():
            raise ConfigError(
                f"EvalConfig.data={self.data!r} is invalid: give a JSONL path or synthetic:<split>."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"EvalConfig.{name}={value!r} is invalid: must be an integer >= {minimum}.")


# --------------------------------------------------------------------------------------------- inputs


def load_documents(config: EvalConfig) -> list[Document]:
    """The stream named by ``config.data`` (a JSONL file or ``synthetic:<split>``), cut to ``limit_docs``."""
    from ..data import WorldConfig, generate_world, iter_documents, load_stream

    if config.data.startswith("synthetic:"):
        split = config.data.split(":", 1)[1] or "test"
        if split == "fresh":  # base-LM and MAC training read other seeds' streams, never the world's own
            return list(iter_documents(seed=config.world_seed, n=config.limit_docs or FRESH_DOCS,
                                       stream=EVAL_STREAM))
        if split not in ("train", "val", "test"):
            raise ConfigError(
                f"EvalConfig.data={config.data!r}: the synthetic split must be train, val, test or fresh."
            )
        docs = generate_world(WorldConfig(seed=config.world_seed, n_entities=config.world_entities))[split]
        return docs[: config.limit_docs] if config.limit_docs else docs
    return load_stream(config.data, limit=config.limit_docs)


def load_mac(config: EvalConfig) -> MACModel:
    """The checkpoint of ``config.checkpoint``, or the project's default checkpoint when it is unset."""
    from ..model import MACModel
    from ..training.default import default_checkpoint

    return MACModel.from_pretrained(config.checkpoint or default_checkpoint(), device=config.device).eval()


def retention_plan(n_docs: int, first: int, factors: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """``(first, document counts)`` at which retention is measured, scaled down to fit ``n_docs``.

    With the paper's 200 first documents and factors up to 10 a stream needs 2,000 documents; a shorter
    stream keeps every factor by shrinking ``first`` to ``n_docs // max(factors)``, and if even one
    document is too many, keeps only the factors that fit.
    """
    factors = sorted(set(factors))
    top = factors[-1]
    if first * top <= n_docs:
        return first, tuple(first * f for f in factors)
    scaled = n_docs // top
    if scaled >= 1:
        logger.warning(
            "Retention: the stream has %d documents, fewer than retention_first × %d = %d; "
            "measuring on the first %d documents instead of %d.",
            n_docs,
            top,
            first * top,
            scaled,
            first,
        )
        return scaled, tuple(scaled * f for f in factors)
    kept = tuple(f for f in factors if f <= n_docs)
    logger.warning(
        "Retention: the stream has only %d documents; measuring on the first document at %s "
        "documents (factors %s dropped).",
        n_docs,
        list(kept),
        [f for f in factors if f > n_docs],
    )
    return 1, kept


def _sample(items: list[_Item], cap: int | None, seed: int) -> list[_Item]:
    """At most ``cap`` items, a seeded random sample kept in stream order (the whole stream is covered)."""
    if cap is None or len(items) <= cap:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), cap))
    return [items[i] for i in keep]


@dataclass(frozen=True)
class _Item:
    """One question of the stream and the index of its (gold) document."""

    doc: int
    qa: QA


# --------------------------------------------------------------------------------------------- prompts


def fit_rag_prompts(
    lm: FrozenLM, documents: Sequence[Sequence[str]], questions: Sequence[str], max_new_tokens: int
) -> list[str]:
    """``format_with_documents`` prompts that fit the LM's context with the answer tokens.

    Over-long prompts lose tokens from the *left* of the documents; the question is always kept whole.
    Callers put the most relevant document last, so it is the one that survives.
    """
    from ..prompts import format_question, format_with_documents
    from .baselines import max_positions

    prompts = [format_with_documents(docs, q) for docs, q in zip(documents, questions, strict=True)]
    limit = max_positions(lm)
    if limit is None:
        return prompts
    tok = lm.tokenizer
    budget = limit - max_new_tokens
    lengths = [len(ids) for ids in tok(prompts, add_special_tokens=True)["input_ids"]]
    for i, n in enumerate(lengths):
        if n <= budget:
            continue
        context = "\n\n".join(d.strip() for d in documents[i])
        tail = len(tok("\n\n" + format_question(questions[i]), add_special_tokens=True)["input_ids"])
        ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
        keep = budget - tail
        while keep > 0:
            # Re-tokenising a cut text can merge differently at the cut; shrink until it really fits.
            cut = tok.decode(ctx_ids[-keep:], skip_special_tokens=True)
            prompt = format_with_documents([cut], questions[i])
            if len(tok(prompt, add_special_tokens=True)["input_ids"]) <= budget:
                break
            keep -= 4
        if keep <= 0:
            logger.warning(
                "Question %r alone fills the LM's context; asking it without documents.", questions[i][:60]
            )
            prompt = format_question(questions[i])
        prompts[i] = prompt
    return prompts


# --------------------------------------------------------------------------------------------- protocol


class _Protocol:
    """One evaluation run: the stream, the shared memory/index built on first use, one method at a time."""

    def __init__(self, config: EvalConfig, mac: MACModel | None, documents: list[Document], embedder: Any,
                 lm: FrozenLM | None = None) -> None:
        self.config = config
        self.mac = mac  # None when only the methods without MAC networks run
        self.lm: FrozenLM = mac.lm if mac is not None else lm
        self.docs = documents
        self.embedder = embedder
        items = [_Item(i, qa) for i, doc in enumerate(documents) for qa in doc.qas]
        if not items:
            raise DataFormatError(
                f"The stream {config.data!r} ({len(documents)} documents) has no questions to evaluate on."
            )
        self.items = _sample(items, config.max_questions, config.seed)
        self.retention_first, self.retention_points = 0, ()
        self.retention_items: list[_Item] = []
        if config.retention and any(m in config.methods for m in _RETENTION_METHODS):
            self.retention_first, self.retention_points = retention_plan(
                len(documents), config.retention_first, config.retention_factors
            )
            first = [it for it in items if it.doc < self.retention_first]
            self.retention_items = _sample(first, config.max_questions, config.seed + 1)
            if not self.retention_items:
                logger.warning(
                    "Retention: the first %d documents have no questions; skipped.", self.retention_first
                )
                self.retention_points = ()
        self._memory: torch.Tensor | None = None
        self.amortize_seconds = 0.0
        self._index: Any = None
        self._query_vectors: dict[str, np.ndarray] = {}
        self.embed_seconds = 0.0
        self.retrieval: dict[str, Any] = {}
        self.excluded_seconds = 0.0  # retention re-asks inside the current method: not its cost
        self.ft_seconds = 0.0  # online_ft's fine-tuning time in the current run

    # ------------------------------------------------------------------ shared adaptation (built once)
    @property
    def memory(self) -> torch.Tensor:
        """``(N, T, d_mem)`` memory tokens of the whole stream, amortized once in batches."""
        if self._memory is None:
            import torch
            from tqdm.auto import tqdm

            bs = self.config.batch_size
            start = time.perf_counter()
            parts = []
            with torch.no_grad():
                for i in tqdm(range(0, len(self.docs), bs), desc="amortize", unit="batch", leave=False):
                    parts.append(self.mac.amortize([d.context for d in self.docs[i : i + bs]]))
            self._memory = torch.cat(parts)
            if self.config.codec is not None:
                self._memory = stored_and_read_back(self._memory, self.config.codec)
            self.amortize_seconds = time.perf_counter() - start
            logger.info(
                "Amortized %d documents into %s in %.1f s",
                len(self.docs),
                tuple(self._memory.shape),
                self.amortize_seconds,
            )
        return self._memory

    @property
    def index(self) -> Any:
        """The embedding index of the whole stream, with every evaluated question embedded too."""
        if self._index is None:
            from .retrieval import EmbeddingIndex

            self._index = EmbeddingIndex(self.embedder)
            self._index.embed(["warm-up"])  # load the embedding model outside the clock
            start = time.perf_counter()
            self._index.add([d.context for d in self.docs])
            questions = sorted({it.qa.question for it in self.items + self.retention_items})
            self._query_vectors = dict(zip(questions, self._index.embed(questions), strict=True))
            self.embed_seconds = time.perf_counter() - start
            logger.info(
                "Embedded %d documents and %d questions in %.1f s",
                len(self.docs),
                len(questions),
                self.embed_seconds,
            )
        return self._index

    def retrieve(self, items: list[_Item], n_docs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(Q, k)`` top-k document ids per question among the first ``n_docs`` documents (-1 = none), and
        their cosine similarities (``-inf`` for none)."""
        import numpy as np

        index = self.index
        queries = np.stack([self._query_vectors[it.qa.question] for it in items])
        allowed = None if n_docs is None else np.arange(n_docs)
        return index.top_k(queries, self.config.k, allowed_ids=allowed)

    @staticmethod
    def recall(items: list[_Item], ids: np.ndarray) -> float:
        """Percent of questions whose gold document is among their candidates (the ceiling retrieval sets)."""
        hits = sum(int(it.doc in row) for it, row in zip(items, ids.tolist(), strict=True))
        return 100.0 * hits / len(items)

    def record_recall(self, ids: np.ndarray) -> None:
        """Retrieval recall@k on the evaluated questions over the whole stream (recorded once)."""
        if "recall" in self.retrieval:
            return
        self.retrieval.update(
            k=self.config.k,
            recall=self.recall(self.items, ids),
            n=len(self.items),
            seconds=self.embed_seconds,
        )
        logger.info(
            "Retrieval recall@%d of the gold document: %.1f%%", self.config.k, self.retrieval["recall"]
        )

    # ------------------------------------------------------------------ answering helpers
    def _batched(
        self, items: list[_Item], size: int, answer: Callable[[list[_Item], int], list[str]], desc: str
    ) -> list[str]:
        """``answer(batch, offset)`` over ``items`` in batches of ``size`` (``offset``: the batch's first row)."""
        from tqdm.auto import tqdm

        out: list[str] = []
        for i in tqdm(range(0, len(items), size), desc=desc, unit="batch", leave=False):
            out += answer(items[i : i + size], i)
        return out

    def _mac_candidates(self, items: list[_Item], n_docs: int | None = None, desc: str = "mac") -> list[str]:
        """MAC over each question's retrieved candidates (padded to k, masked)."""
        import torch

        memory = self.memory
        found, similarity = self.retrieve(items, n_docs)
        if n_docs is None:
            self.record_recall(found)
        else:  # how retrieval alone holds up as the memory grows (retention's first suspect)
            self.retrieval.setdefault("retention_recall", {})[str(n_docs)] = self.recall(items, found)
        ids = torch.as_tensor(found, device=memory.device)  # (Q, k)
        similarity = torch.as_tensor(similarity)  # (Q, k): the retrieval prior's input

        def answer(batch: list[_Item], offset: int) -> list[str]:
            cand = ids[offset : offset + len(batch)]  # (B, k)
            mask = cand >= 0
            mem = memory[cand.clamp_min(0)]  # (B, k, T, d_mem)
            return self._mac_generate(batch, mem, mask, similarity[offset : offset + len(batch)])

        return self._batched(items, self.config.batch_size, answer, desc)

    def _mac_generate(self, batch: list[_Item], memory: torch.Tensor, mask: torch.Tensor | None,
                      similarity: torch.Tensor | None = None) -> list[str]:
        answers, _ = self.mac.generate(
            [it.qa.question for it in batch],
            memory,
            mask,
            max_new_tokens=self.config.max_new_tokens,
            window=self.config.window,
            similarity=similarity,
        )
        return answers

    def _rag(
        self, items: list[_Item], doc_ids: Callable[[list[_Item], int], list[list[int]]], desc: str
    ) -> list[str]:
        texts = [[self.docs[j].context for j in ids] for ids in doc_ids(items, 0)]
        prompts = fit_rag_prompts(self.lm, texts, [it.qa.question for it in items], self.config.max_new_tokens)
        return self._generate_by_length(self.lm, prompts, desc)

    def _generate_by_length(self, lm: FrozenLM, prompts: list[str], desc: str) -> list[str]:
        """Cleaned answers to ``prompts``, generated in batches of similar length (documents in the prompt
        vary several-fold in length; padding every batch to its longest would waste most of the compute)."""
        from tqdm.auto import tqdm

        from ..prompts import clean_answer

        lengths = [len(ids) for ids in lm.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        out = [""] * len(prompts)
        size = self.config.batch_size
        for start in tqdm(range(0, len(order), size), desc=desc, unit="batch", leave=False):
            rows = order[start : start + size]
            texts = lm.generate([prompts[i] for i in rows], max_new_tokens=self.config.max_new_tokens)
            for i, text in zip(rows, texts, strict=True):
                out[i] = clean_answer(text)
        return out

    def _closed_book(self, lm: FrozenLM, items: list[_Item], desc: str) -> list[str]:
        from ..prompts import format_question

        return self._generate_by_length(lm, [format_question(it.qa.question) for it in items], desc)

    # ------------------------------------------------------------------ the methods
    def run_method(self, method: str) -> tuple[list[str], dict[str, float]]:
        """``(predictions on the evaluated questions, retention curve)`` of one method.

        Shared adaptation (the amortized memory, the embedding index) must already be built; time
        spent on retention re-asks is added to ``self.excluded_seconds`` (it is not the method's cost).
        """
        import torch

        items, retention = self.items, {}
        if method == "no_memory":
            return self._closed_book(self.lm, items, method), retention
        if method == "mac_gold":
            memory = self.memory

            def gold(batch: list[_Item], _: int) -> list[str]:
                idx = torch.tensor([it.doc for it in batch], device=memory.device)
                return self._mac_generate(batch, memory[idx].unsqueeze(1), None)  # (B, 1, T, d_mem)

            return self._batched(items, self.config.batch_size, gold, method), retention
        if method == "mac":
            preds = self._mac_candidates(items)
            start = time.perf_counter()
            for n in self.retention_points:
                # The memory as it stood after n documents: retrieval only among those.
                curve = self._mac_candidates(self.retention_items, n, f"mac@{n}")
                retention[str(n)] = self._score(curve, self.retention_items).f1
            self.excluded_seconds += time.perf_counter() - start
            return preds, retention
        if method == "mac_full":
            memory = self.memory  # (N, T, d_mem): expanded per batch by MACModel, never copied
            preds = self._batched(
                items, self.config.full_batch_size, lambda b, _: self._mac_generate(b, memory, None), method
            )
            return preds, retention
        if method == "rag":
            ids, _ = self.retrieve(items)
            self.record_recall(ids)

            def pick(batch: list[_Item], offset: int) -> list[list[int]]:
                # Most relevant document last: nearest the question, and the last one truncation cuts.
                return [[int(j) for j in row[::-1] if j >= 0] for row in ids[offset : offset + len(batch)]]

            return self._rag(items, pick, method), retention
        if method == "rag_gold":
            return self._rag(items, lambda b, _: [[it.doc] for it in b], method), retention
        if method == "online_ft":
            return self._online_ft()
        raise ConfigError(f"Unknown method {method!r}; choose from {METHODS}.")

    def _online_ft(self) -> tuple[list[str], dict[str, float]]:
        """Fine-tune a copy of the LM along the stream, re-asking the first questions at each retention point."""
        import torch
        from tqdm.auto import tqdm

        from .baselines import OnlineFineTuner

        cfg = self.config
        torch.manual_seed(cfg.seed)
        start = time.perf_counter()
        tuner = OnlineFineTuner(
            self.lm, lr=cfg.ft_lr, steps_per_doc=cfg.ft_steps_per_doc, batch_size=cfg.ft_batch_size
        )
        self.ft_seconds = time.perf_counter() - start
        retention: dict[str, float] = {}
        # Stop at every retention point (no batch straddles one) to re-ask the first questions there.
        stops = sorted(set(self.retention_points) | {len(self.docs)})
        done = 0
        with tqdm(total=len(self.docs), desc="online_ft", unit="doc", leave=False) as bar:
            for stop in stops:
                start = time.perf_counter()
                for i in range(done, stop, cfg.ft_batch_size):
                    batch = self.docs[i : min(i + cfg.ft_batch_size, stop)]
                    tuner.ingest([d.context for d in batch])
                    bar.update(len(batch))
                self.ft_seconds += time.perf_counter() - start
                done = stop
                if stop in self.retention_points:
                    start = time.perf_counter()
                    preds = self._closed_book(tuner.lm, self.retention_items, f"online_ft@{stop}")
                    retention[str(stop)] = self._score(preds, self.retention_items).f1
                    self.excluded_seconds += time.perf_counter() - start
        logger.info(
            "online_ft: %d optimizer steps over %d documents in %.1f s",
            tuner.steps,
            tuner.documents_seen,
            self.ft_seconds,
        )
        preds = self._closed_book(tuner.lm, self.items, "online_ft")
        del tuner  # the copy and its optimizer state take about three times the LM's memory
        return preds, retention

    @staticmethod
    def _score(predictions: list[str], items: list[_Item]) -> Any:
        from .metrics import score_predictions

        return score_predictions(predictions, [it.qa.answers for it in items])

    def run(self) -> dict[str, Any]:
        """Every configured method in turn; the report dict without its ``config`` section."""
        methods: dict[str, dict[str, Any]] = {}
        retention: dict[str, dict[str, float]] = {}
        samples = [
            {
                "question": it.qa.question,
                "answers": list(it.qa.answers),
                "doc_id": self.docs[it.doc].doc_id,
                "predictions": {},
            }
            for it in self.items[:_N_SAMPLES]
        ]
        for method in self.config.methods:
            logger.info("Running %s on %d questions", method, len(self.items))
            # Shared adaptation is built once, outside the clock; every method that uses it is charged
            # its full cost below, as if it had run alone.
            if method in _MAC_METHODS:
                _ = self.memory
            if method in _RETRIEVAL_METHODS:
                _ = self.index
            self.excluded_seconds = self.ft_seconds = 0.0
            start = time.perf_counter()
            preds, curve = self.run_method(method)
            answering = time.perf_counter() - start - self.excluded_seconds
            if method == "online_ft":
                adapt, seconds = self.ft_seconds, answering  # fine-tuning ran inside the clock
            else:
                adapt = (self.amortize_seconds if method in _MAC_METHODS else 0.0) + (
                    self.embed_seconds if method in _RETRIEVAL_METHODS else 0.0
                )
                seconds = answering + adapt
            if curve:
                retention[method] = curve
            scores = self._score(preds, self.items)
            methods[method] = {**scores.to_dict(), "seconds": seconds, "adapt_seconds": adapt}
            for sample, pred in zip(samples, preds, strict=False):
                sample["predictions"][method] = pred
            logger.info("%s: %s, %.1f s (adaptation %.1f s)", method, scores, seconds, adapt)
        report: dict[str, Any] = {"methods": methods, "retention": retention}
        if self.retrieval:
            report["retrieval"] = self.retrieval
        report["samples"] = samples
        return report


# --------------------------------------------------------------------------------------------- API + CLI


def evaluate(
    config: EvalConfig,
    mac: MACModel | None = None,
    documents: list[Document] | None = None,
    embedder: Any = None,
    lm: FrozenLM | None = None,
) -> dict[str, Any]:
    """Run the protocol and return the report dict (written to ``config.out`` when it is set).

    Args:
        config: what to run.
        mac: the MAC model (its ``lm`` is the frozen base LM every method uses); default: loaded from
            ``config.checkpoint``.
        documents: the stream; default: loaded from ``config.data`` (``limit_docs`` applies either way).
        embedder: retrieval embedder, any object with ``embed(list[str]) -> np.ndarray``; default MiniLM.
        lm: without MAC methods, the base LM to run on instead of ``config.base_lm`` (and of a MAC model).
    """
    import torch

    from .. import precision

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if documents is None:
        documents, data = load_documents(config), config.data
    else:
        documents, data = list(documents)[: config.limit_docs], "<documents passed to evaluate()>"
    if not documents:
        raise DataFormatError(f"The stream {data!r} has no documents.")
    needs_mac = bool(_MAC_METHODS & set(config.methods))
    if lm is not None and needs_mac and mac is None:
        raise ConfigError(f"evaluate(lm=...) runs no MAC method; {sorted(_MAC_METHODS & set(config.methods))} "
                          "need a MAC model (mac=...).")
    if mac is None and lm is None:
        if config.base_lm is not None:
            from ..frozen_lm import FrozenLM

            lm = FrozenLM.from_pretrained(config.base_lm, device=config.device)
        else:
            mac = load_mac(config)
    base = mac.lm if mac is not None else lm
    amp = precision.resolve(config.mixed_precision, base.device)
    if embedder is None and _RETRIEVAL_METHODS & set(config.methods):
        from .retrieval import default_embedder

        embedder = default_embedder(config.threads or None)
    module = mac if mac is not None else base.model
    was_training = module.training
    module.eval()
    try:
        protocol = _Protocol(config, mac, documents, embedder, lm=base)
        with precision.autocast(amp, base.device):
            report = protocol.run()
    finally:
        module.train(was_training)
    report["config"] = {
        **config.to_dict(),
        "data": data,
        "checkpoint_fingerprint": None if mac is None else mac.fingerprint(),
        "base_lm": base.name_or_path,
        "mixed_precision_used": amp,
        "n_documents": len(documents),
        "n_questions": len(protocol.items),
        "retention_first_used": protocol.retention_first,
        "retention_questions": len(protocol.retention_items),
        "embedder": None if embedder is None else type(getattr(embedder, "inner", embedder)).__name__,
        "device_used": str(base.device),
    }
    if config.out:
        from .report import write_report

        write_report(report, config.out)
    return report


def stored_and_read_back(memory: Any, codec: str) -> Any:
    """``(N, T, d)`` memory tokens after the storage round trip MACMemory gives each document's modulation
    (:func:`~mac_memory.memory.codec.encode_modulation`, then decode): what a deployed memory answers from."""
    import numpy as np
    import torch

    from ..memory.codec import decode_modulation, encode_modulation

    rows = [decode_modulation(encode_modulation(row, codec)) for row in memory.detach().cpu()]
    return torch.from_numpy(np.stack(rows)).to(memory.device, memory.dtype)
