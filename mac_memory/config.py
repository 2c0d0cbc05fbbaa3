"""Configuration of a MAC model: dataclasses that validate themselves and round-trip as JSON.

A :class:`MACConfig` holds four parts, one per concept:

* :class:`BaseLMConfig` — which frozen causal LM answers (hub name or local path);
* :class:`AmortizerConfig` — how a document becomes ``num_tokens`` memory tokens of width ``d_mem``;
* :class:`AggregatorConfig` — how a question merges the memory tokens of many documents;
* :class:`ModulationConfig` — how the merged tokens become per-layer prefix keys/values.

Shapes that depend on the base LM (layers, key/value heads, head size) are never stored here: they are
read from the loaded LM wherever they are needed.

Example:
    >>> cfg = MACConfig(base_lm=BaseLMConfig("gpt2"), amortizer=AmortizerConfig(kind="kv_anchored"))
    >>> MACConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import ConfigError
from .version import __version__

logger = logging.getLogger(__name__)

AMORTIZER_KINDS = ("t5", "encoder", "kv_anchored")
MODULATION_KINDS = ("prefix",)
DTYPES = ("float32", "bfloat16", "float16")

T = TypeVar("T", bound="_Section")


def _check(cond: bool, section: str, name: str, value: Any, need: str) -> None:
    if not cond:
        raise ConfigError(f"{section}.{name}={value!r} is invalid: {need}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Section:
    """Shared JSON behaviour: dict round-trip that warns (not fails) on keys from newer versions."""

    _section: ClassVar[str] = ""
    _absent_means: ClassVar[dict[str, Any]] = {}
    """Values of fields that configs written before the field existed were built with (not the default)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        if not isinstance(data, dict):
            raise ConfigError(f"{cls._section} must be a JSON object, got {type(data).__name__}.")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(
                f"Ignoring unknown {cls._section} keys {unknown} (written by a newer mac-memory?).",
                UserWarning,
                stacklevel=3,
            )
        return cls(**{**cls._absent_means, **{k: v for k, v in data.items() if k in known}})


@dataclass
class BaseLMConfig(_Section):
    """The frozen causal LM that answers questions."""

    _section: ClassVar[str] = "base_lm"

    name_or_path: str
    """Hub name (e.g. ``gpt2``, ``Qwen/Qwen2.5-0.5B``), local directory, ``.gguf`` file, peft adapter
    directory, or bundled short name (``smollm2-135m-instruct``, ``smollm2-135m-instruct-qa``) of the base LM."""
    gguf_file: str | None = None
    """A GGUF file inside ``name_or_path`` (a directory or hub repository) to load the weights from."""
    dtype: str = "float32"
    """Weights dtype: float32, bfloat16 or float16."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load; None = the default branch."""

    def __post_init__(self) -> None:
        s = self._section
        _check(isinstance(self.name_or_path, str) and bool(self.name_or_path.strip()), s,
               "name_or_path", self.name_or_path, "give a hub name or a local directory")
        _check(self.dtype in DTYPES, s, "dtype", self.dtype, f"choose one of {DTYPES}")


@dataclass
class AmortizerConfig(_Section):
    """Document → ``num_tokens`` memory tokens of width ``d_mem`` (one forward pass)."""

    _section: ClassVar[str] = "amortizer"

    kind: str = "kv_anchored"
    """``t5`` (encoder-decoder, the paper's), ``encoder`` (BERT-like + learned-query decoder) or
    ``kv_anchored`` (the frozen base LM reads the document; learned pooling compresses its key/values)."""
    backbone: str | None = None
    """Hub name or local path of the T5/BERT backbone; unused (None) for ``kv_anchored``."""
    num_tokens: int = 8
    """T: memory tokens per document (the paper uses 12 for DistilGPT2, 24 for larger LMs)."""
    d_mem: int = 256
    """Width of a memory token; below the base LM's hidden size keeps stored modulations small."""
    max_length: int = 256
    """Document tokens read per chunk; longer documents are chunked by the memory component."""
    decoder_layers: int = 2
    """``encoder`` kind: cross-attention blocks of the learned-query decoder."""
    decoder_heads: int = 4
    """``encoder`` kind: attention heads of the learned-query decoder."""
    head_hidden: int = 512
    """Hidden width of the per-token output MLPs."""
    freeze_backbone: bool = False
    """Keep the T5/BERT backbone's weights fixed (train only queries and heads)."""

    def __post_init__(self) -> None:
        s = self._section
        _check(self.kind in AMORTIZER_KINDS, s, "kind", self.kind, f"choose one of {AMORTIZER_KINDS}")
        if self.kind == "kv_anchored":
            _check(self.backbone is None, s, "backbone", self.backbone,
                   "the kv_anchored amortizer reads documents with the base LM; leave backbone unset")
        else:
            _check(isinstance(self.backbone, str) and bool(self.backbone), s, "backbone", self.backbone,
                   f"the {self.kind!r} amortizer needs a backbone hub name or local path")
        for name in ("num_tokens", "d_mem", "max_length", "decoder_layers", "decoder_heads", "head_hidden"):
            value = getattr(self, name)
            _check(_is_int(value) and value > 0, s, name, value,
                   "must be a positive integer")
        _check(self.d_mem % self.decoder_heads == 0, s, "d_mem", self.d_mem,
               f"must be divisible by decoder_heads={self.decoder_heads}")


@dataclass
class AggregatorConfig(_Section):
    """Question-conditioned cross-attention over the memory tokens of all candidate documents."""

    _section: ClassVar[str] = "aggregator"

    num_layers: int = 4
    """Pre-norm cross-attention blocks (the paper uses 4)."""
    num_heads: int = 8
    """Attention heads per block (the paper uses 8); must divide d_mem."""
    mlp_ratio: float = 2.0
    """Feed-forward width of each block as a multiple of d_mem."""
    window: int = 16
    """Documents aggregated at once; larger candidate sets are aggregated hierarchically."""
    dropout: float = 0.0
    """Dropout inside the blocks during training."""
    readout: str = "slot"
    """How the merged tokens are read out of the stored ones. ``slot``: merged token ``t`` attends to token
    ``t`` of each candidate only (a weighted average over documents, slot by slot), so a memory of one
    document passes through exactly — slot ``t`` is made by the same pooling query in every document. On
    the embedded default's gold rung it reached 25.0 F1 in 600 steps where ``token`` reached 8.6
    (docs/results.md). ``token`` (the paper's): each merged token attends to every stored token of every
    candidate. Checkpoints written before this option read as ``token``."""
    retrieval_temperature: float | None = None
    """Retrieval prior: when the candidates come from an embedding search, each one's read-out logits get
    ``similarity / retrieval_temperature`` (cosine similarity to the question), so a clearly better match
    dominates the merge and close calls stay mixed. None = no prior (the network alone weighs the
    candidates). Set by ``mac-memory calibrate`` on validation questions, for the embedder it searched
    with (the default MiniLM)."""
    _absent_means: ClassVar[dict[str, Any]] = {"readout": "token"}

    def __post_init__(self) -> None:
        s = self._section
        _check(self.readout in ("token", "slot"), s, "readout", self.readout, "must be 'token' or 'slot'")
        t = self.retrieval_temperature
        _check(t is None or (_is_number(t) and 0 < t < float("inf")), s, "retrieval_temperature", t,
               "must be None or a positive number")
        for name in ("num_layers", "num_heads"):
            value = getattr(self, name)
            _check(_is_int(value) and value > 0, s, name, value, "must be a positive integer")
        _check(_is_int(self.window) and self.window >= 2, s, "window", self.window,
               "must be an integer >= 2 (a window of 1 never merges anything)")
        _check(_is_number(self.mlp_ratio) and self.mlp_ratio > 0, s, "mlp_ratio", self.mlp_ratio, "must be > 0")
        _check(_is_number(self.dropout) and 0.0 <= self.dropout < 1.0, s, "dropout", self.dropout,
               "must be a number in [0, 1)")


@dataclass
class ModulationConfig(_Section):
    """How aggregated memory tokens modulate the frozen LM (P-tuning v2 prefixes)."""

    _section: ClassVar[str] = "modulation"

    kind: str = "prefix"
    """``prefix``: per-layer key/value prefix (P-tuning v2), the paper's best."""
    prefix_len: int | None = None
    """Prefix positions per layer; None = one per memory token (``num_tokens``)."""
    hidden: int = 512
    """Hidden width of the token → prefix feed-forward (T5/encoder amortizers)."""

    def __post_init__(self) -> None:
        s = self._section
        _check(self.kind in MODULATION_KINDS, s, "kind", self.kind, f"choose one of {MODULATION_KINDS}")
        _check(self.prefix_len is None or (isinstance(self.prefix_len, int) and self.prefix_len > 0), s,
               "prefix_len", self.prefix_len, "must be a positive integer or None")
        _check(isinstance(self.hidden, int) and self.hidden > 0, s, "hidden", self.hidden,
               "must be a positive integer")


@dataclass
class MACConfig:
    """Everything needed to rebuild a MAC model (its trainable networks plus which base LM it serves)."""

    base_lm: BaseLMConfig
    amortizer: AmortizerConfig = field(default_factory=AmortizerConfig)
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    modulation: ModulationConfig = field(default_factory=ModulationConfig)
    question_max_length: int = 64
    """Question tokens read by the aggregator's question encoder."""
    mac_version: str = __version__
    """mac-memory version that wrote this config (informational)."""

    def __post_init__(self) -> None:
        for name, cls in (("base_lm", BaseLMConfig), ("amortizer", AmortizerConfig),
                          ("aggregator", AggregatorConfig), ("modulation", ModulationConfig)):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls.from_dict(value))
            elif not isinstance(value, cls):
                raise ConfigError(f"MACConfig.{name} must be a {cls.__name__} or dict, got {type(value).__name__}.")
        _check(isinstance(self.question_max_length, int) and self.question_max_length > 0, "MACConfig",
               "question_max_length", self.question_max_length, "must be a positive integer")
        _check(self.amortizer.d_mem % self.aggregator.num_heads == 0, "aggregator", "num_heads",
               self.aggregator.num_heads, f"must divide amortizer.d_mem={self.amortizer.d_mem}")

    @property
    def prefix_len(self) -> int:
        """Prefix positions per layer (derived; never stored back into the config)."""
        return self.modulation.prefix_len or self.amortizer.num_tokens

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_lm": self.base_lm.to_dict(),
            "amortizer": self.amortizer.to_dict(),
            "aggregator": self.aggregator.to_dict(),
            "modulation": self.modulation.to_dict(),
            "question_max_length": self.question_max_length,
            "mac_version": __version__,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MACConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"A MAC config must be a JSON object, got {type(data).__name__}.")
        if "base_lm" not in data:
            raise ConfigError("A MAC config needs a 'base_lm' section (the frozen LM it was trained for).")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"Ignoring unknown MACConfig keys {unknown} (written by a newer mac-memory?).",
                          UserWarning, stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> MACConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}).") from exc
        return cls.from_dict(data)
