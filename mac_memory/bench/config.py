"""Options of ``mac-memory bench``: one dataclass whose field docstrings are the CLI help.

Fields left at ``None`` take their value from the mode (``--quick`` or the full run); :meth:`BenchConfig.resolve`
returns a copy with every such field filled in, so the configuration a report records is complete and the
caller's object is never mutated.

Example:
    >>> cfg = BenchConfig(quick=True).resolve()
    >>> cfg.models, cfg.isolation
    (('default', 'gpt2-small'), 'model')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["AMORTIZERS", "ISOLATIONS", "MEASUREMENTS", "MODELS", "BenchConfig"]

MODELS = ("default", "gpt2-small", "llama-1b", "tiny")
MEASUREMENTS = ("storage", "ingestion", "query", "scale", "training", "profile")
ISOLATIONS = ("variant", "model", "none")
AMORTIZERS = ("kv_anchored", "encoder")
EMBEDDERS = ("minilm", "hash")

# Mode-dependent defaults: (quick, full).
_BY_MODE: dict[str, tuple[Any, Any]] = {
    "models": (("default", "gpt2-small"), ("default", "gpt2-small", "llama-1b")),
    "isolation": ("model", "variant"),
    "reps": (3, 5),
    "query_reps": (3, 10),
    "train_reps": (2, 3),
    "ingest_docs": (4, 8),
    "query_docs": (8, 32),
    "scale_sizes": ((1000, 10000), (1000, 10000, 100000)),
    "scale_real_docs": (16, 64),
    "scale_queries": (5, 20),
    "scale_probe_docs": (4, 16),
    "train_batch": (8, 16),
}


@dataclass
class BenchConfig:
    """Options of ``mac-memory bench``."""

    quick: bool = False
    """Quick run (about 3 minutes on 2 CPU cores for the default + GPT-2-small): fewer models, reps and docs."""
    out: str = "docs/benchmarks/bench.json"
    """JSON report path; a Markdown table (.md) and PNG plots (<stem>-*.png) are written next to it."""
    models: tuple[str, ...] | None = None
    """Models to measure: default, gpt2-small, llama-1b, tiny (None: default gpt2-small [llama-1b when full])."""
    measurements: tuple[str, ...] = MEASUREMENTS
    """Measurements to run: storage, ingestion, query, scale, training, profile."""
    amortizer: str = "kv_anchored"
    """Amortizer of the configured models (gpt2-small, llama-1b, tiny): kv_anchored, or encoder (frozen MiniLM
    backbone, the same model as the embedder: one pass embeds and amortizes each chunk). The default
    checkpoint keeps its own."""
    device: str = "auto"
    """torch device: auto (cuda when available), cpu, cuda, cuda:1, ..."""
    dtype: str = "float32"
    """Base-LM weights dtype: float32, bfloat16 or float16 (MAC networks stay float32)."""
    threads: int = 0
    """torch CPU threads in every measuring process (0 = torch's default)."""
    isolation: str | None = None
    """Where variants run: variant (a fresh subprocess each: clean peak RSS), model (one subprocess per model),
    none (this process). None: model when quick, variant when full."""
    reps: int | None = None
    """Timed repetitions of an ingestion batch (after the warm-up)."""
    query_reps: int | None = None
    """Timed questions per query variant (after the warm-up)."""
    train_reps: int | None = None
    """Timed meta-training steps per backprop-dropout setting (after the warm-up)."""
    warmup: int = 1
    """Untimed warm-up repetitions before every timed series."""
    ingest_docs: int | None = None
    """Documents per timed ingestion repetition (seconds per document = repetition time / this)."""
    query_docs: int | None = None
    """Documents in each query-benchmark memory (per document length)."""
    doc_tokens: tuple[int, ...] = (150, 600)
    """Document lengths (base-LM tokens) for the query and storage benchmarks; the first is also used for
    ingestion and scale, the longest for training (unless ``train_doc_tokens``)."""
    new_tokens: int = 16
    """Answer length: every method generates exactly this many tokens (EOS suppressed until then)."""
    mac_k: int = 5
    """Candidates MAC retrieves and aggregates per question."""
    rag_ks: tuple[int, ...] = (1, 3, 5)
    """Documents RAG writes into the prompt."""
    codec: str = "float16"
    """Storage codec of modulations: float16, int8 or float32."""
    scale_sizes: tuple[int, ...] | None = None
    """Memory sizes (documents) of the scale benchmark, increasing."""
    scale_real_docs: int | None = None
    """Documents of the scale memory ingested through add_texts; the rest are random modulations + embeddings
    written straight through the store layer."""
    scale_queries: int | None = None
    """Timed questions per scale size (p50/p95)."""
    scale_probe_docs: int | None = None
    """Documents added through add_texts at each scale size to time (and, once more, profile) ingestion into
    a large memory."""
    train_batch: int | None = None
    """Documents (= questions) per meta-training step."""
    train_dropouts: tuple[float, ...] = (0.75, 0.0)
    """Backprop-dropout settings compared by the training benchmark."""
    train_doc_tokens: int | None = None
    """Document length (base-LM tokens) of the training benchmark; default: the longest of ``doc_tokens``,
    as the paper meta-trains on long news articles (the amortizer reads up to its own max_length)."""
    train_backbone: bool = True
    """Training benchmark: train the amortizer's own encoder, as the paper trains its T5 amortizer (the
    setting backprop dropout is for). With the encoder frozen only the small heads after it keep
    activations, and dropout has next to nothing to save. No effect on the KV-anchored amortizer, whose
    reader is the frozen base LM itself."""
    train_lm_recompute_chunk: int = 0
    """Training benchmark: recompute the frozen LM's answer-loss activations in backward this many
    questions at a time (``mac-memory train --lm-recompute-chunk``); 0 keeps them, as plain training does."""
    ft_batch_size: int = 4
    """Online fine-tuning baseline: documents per optimizer step."""
    ft_steps_per_doc: int = 1
    """Online fine-tuning baseline: optimizer steps per document batch."""
    ft_lr: float = 1e-4
    """Online fine-tuning baseline: AdamW learning rate."""
    embedder: str = "minilm"
    """Retrieval embedder: minilm (the library default) or hash (a toy, for tests)."""
    track_tensors: bool = True
    """Also measure each variant's peak tensor memory op by op (one extra, untimed run)."""
    profile_top: int = 15
    """Rows kept from each profiler table."""
    plots: bool = True
    """Write PNG plots next to the JSON report (needs matplotlib)."""
    workdir: str | None = None
    """Directory for the stores built while measuring (default: a temporary directory, removed afterwards)."""
    keep_workdir: bool = False
    """Keep the work directory (stores, per-task results) after the run."""
    fail_fast: bool = False
    """Stop at the first failing measurement instead of recording the error and going on."""
    seed: int = 0
    """Seed of random weights, documents and inserted modulations."""

    def __post_init__(self) -> None:
        for name in ("models", "measurements", "doc_tokens", "rag_ks", "scale_sizes", "train_dropouts"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))  # JSON gives lists; keep the dataclass hashable-ish
        if self.models is not None:
            _check(bool(self.models) and all(m in MODELS for m in self.models), "models", self.models,
                   f"choose from {MODELS}")
        _check(bool(self.measurements) and all(m in MEASUREMENTS for m in self.measurements), "measurements",
               self.measurements, f"choose from {MEASUREMENTS}")
        _check(self.amortizer in AMORTIZERS, "amortizer", self.amortizer, f"choose one of {AMORTIZERS}")
        _check(self.dtype in ("float32", "bfloat16", "float16"), "dtype", self.dtype,
               "choose float32, bfloat16 or float16")
        _check(self.isolation is None or self.isolation in ISOLATIONS, "isolation", self.isolation,
               f"choose one of {ISOLATIONS}")
        _check(self.embedder in EMBEDDERS, "embedder", self.embedder, f"choose one of {EMBEDDERS}")
        _check(self.codec in ("float16", "int8", "float32"), "codec", self.codec, "choose float16, int8 or float32")
        _check(isinstance(self.device, str) and bool(self.device), "device", self.device, "give auto, cpu or cuda")
        for name in ("reps", "query_reps", "train_reps", "ingest_docs", "query_docs", "scale_real_docs",
                     "scale_queries", "scale_probe_docs", "train_batch", "train_doc_tokens"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value > 0), name, value, "must be a positive integer")
        for name in ("new_tokens", "mac_k", "ft_batch_size", "ft_steps_per_doc", "profile_top"):
            value = getattr(self, name)
            _check(_is_int(value) and value > 0, name, value, "must be a positive integer")
        for name in ("warmup", "threads", "train_lm_recompute_chunk"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 0, name, value, "must be an integer >= 0")
        _check(bool(self.doc_tokens) and all(_is_int(t) and t >= 8 for t in self.doc_tokens), "doc_tokens",
               self.doc_tokens, "give document lengths of at least 8 tokens")
        _check(bool(self.rag_ks) and all(_is_int(k) and k > 0 for k in self.rag_ks), "rag_ks", self.rag_ks,
               "give positive integers")
        if self.scale_sizes is not None:
            sizes = self.scale_sizes
            _check(bool(sizes) and all(_is_int(s) and s > 0 for s in sizes)
                   and list(sizes) == sorted(set(sizes)), "scale_sizes", sizes,
                   "give increasing positive integers")
        _check(bool(self.train_dropouts) and all(0.0 <= d < 1.0 for d in self.train_dropouts), "train_dropouts",
               self.train_dropouts, "give numbers in [0, 1)")
        _check(self.ft_lr > 0, "ft_lr", self.ft_lr, "must be > 0")

    # ------------------------------------------------------------------ derived
    def resolve(self) -> BenchConfig:
        """A copy with every mode-dependent field (``None``) filled in for ``quick`` or the full run."""
        mode = 0 if self.quick else 1
        filled = {name: values[mode] for name, values in _BY_MODE.items() if getattr(self, name) is None}
        out = dataclasses.replace(self, **filled)
        if out.scale_real_docs is not None and out.scale_sizes and out.scale_probe_docs is not None:
            # The smallest memory holds the real documents plus two batches of probe documents.
            room = max(1, out.scale_sizes[0] - 2 * out.scale_probe_docs)
            out = dataclasses.replace(out, scale_real_docs=min(out.scale_real_docs, room))
        return out

    @property
    def ingest_tokens(self) -> int:
        """Document length used by ingestion and scale: the first of ``doc_tokens``."""
        return self.doc_tokens[0]

    @property
    def training_tokens(self) -> int:
        """Document length of the training benchmark: ``train_doc_tokens`` or the longest of ``doc_tokens``."""
        return self.train_doc_tokens or max(self.doc_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(cond: bool, name: str, value: Any, need: str) -> None:
    if not cond:
        raise ConfigError(f"BenchConfig.{name}={value!r} is invalid: {need}.")
