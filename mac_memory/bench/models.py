"""The models the benchmark measures, and the context every measurement runs in.

* ``default`` — the embedded default (trained base LM + MAC checkpoint, :mod:`mac_memory.training.default`).
  When it has not been trained on this machine, the ``tiny`` model is measured in its place and the
  report says so (the benchmark never trains anything).
* ``gpt2-small`` — ``AutoConfig.for_model("gpt2")``'s defaults (124M parameters: 12 layers, 768 wide,
  vocabulary 50,257, 1,024 positions), random weights.
* ``llama-1b`` — a ~1B Llama (hidden 2048, 16 layers, 32 query / 8 key-value heads, MLP 5632,
  vocabulary 32,000, 4,096 positions), random weights.
* ``tiny`` — a 2-layer, 64-wide Llama with grouped-query attention, for tests and smoke runs.

The configured models have no trained tokenizer of their own (nothing can be downloaded), so they share
a small byte-level BPE trained in-process (:func:`mac_memory.tiny_models.build_tokenizer`) on text like the
benchmark's; every document length is counted in that tokenizer. Vocabulary-sized layers keep their real
size (the tokenizer uses only the first ids), and random weights take exactly as long as trained ones.
Their MAC networks are sized as the paper sizes them: ``T=12`` memory tokens for GPT-2-small, ``24`` for
the 1B model, 4 aggregation blocks of 8 heads, window 16.

Weights are seeded, so every measuring process builds bit-identical networks (and the stored
modulations' fingerprints match across processes).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import shutil
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig, ModulationConfig
from .config import BenchConfig
from .data import BenchDoc, make_documents, tokenizer_corpus

if TYPE_CHECKING:
    from ..frozen_lm import FrozenLM
    from ..memory import MACMemory
    from ..model import MACModel

logger = logging.getLogger(__name__)

__all__ = ["DESCRIPTIONS", "BenchContext", "HashEmbedder", "default_available", "load_model"]

DESCRIPTIONS = {
    "default": "embedded default (trained Llama-style base LM + MAC checkpoint)",
    "gpt2-small": "GPT-2 small (124M) from AutoConfig.for_model('gpt2'), random weights",
    "llama-1b": "~1B Llama (2048 wide, 16 layers, 32/8 heads, MLP 5632, vocab 32000), random weights",
    "tiny": "tiny Llama (2 layers, 64 wide, GQA 4/2), random weights",
}
BENCH_VOCAB = 1024  # size of the shared BPE tokenizer of the configured models


def default_available() -> tuple[bool, str]:
    """Whether the embedded default can be loaded, and where it is (or why not)."""
    from ..errors import CheckpointError
    from ..training.default import default_paths

    try:
        paths = default_paths(train=False)
    except CheckpointError as exc:
        return False, str(exc)
    return True, str(paths.checkpoint)


def _lm_config(name: str, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.eos_token_id)
    if name == "gpt2-small":
        return AutoConfig.for_model("gpt2", **ids)  # the library defaults are GPT-2 small
    if name == "llama-1b":
        return AutoConfig.for_model("llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                    num_key_value_heads=8, intermediate_size=5632, vocab_size=32000,
                                    max_position_embeddings=4096, tie_word_embeddings=False, **ids)
    if name == "tiny":
        from ..tiny_models import tiny_config

        config = tiny_config("llama", len(tokenizer))
        config.max_position_embeddings = 4096  # RoPE: room for RAG prompts of 5 long documents
        return config
    raise ValueError(f"Unknown configured model {name!r}.")


def _mac_config(name: str, cfg: BenchConfig) -> MACConfig:
    """MAC networks sized for ``name`` (T and d_mem grow with the base LM, as in the paper)."""
    sizes = {  # (T, d_mem, aggregator layers, heads, window, head_hidden)
        "tiny": (4, 32, 2, 4, 4, 32),
        "gpt2-small": (12, 256, 4, 8, 16, 512),
        "llama-1b": (24, 512, 4, 8, 16, 1024),
    }
    T, d, layers, heads, window, hidden = sizes[name]
    backbone = None
    if cfg.amortizer == "encoder":
        from ..memory.embedder import default_model_path

        backbone = default_model_path()  # MiniLM: the embedder's model reads for the amortizer too
    # A frozen MiniLM read as far as the embedder reads (256 tokens) is the embedder's model: MACMemory then
    # embeds and amortizes each chunk with one pass (mac_memory.memory.shared_encoder).
    return MACConfig(
        base_lm=BaseLMConfig(f"bench:{name}", dtype=cfg.dtype),
        amortizer=AmortizerConfig(kind=cfg.amortizer, backbone=backbone, num_tokens=T, d_mem=d, max_length=256,
                                  head_hidden=hidden, freeze_backbone=backbone is not None),
        aggregator=AggregatorConfig(num_layers=layers, num_heads=heads, window=window),
        modulation=ModulationConfig(hidden=hidden),
    )


def load_model(name: str, cfg: BenchConfig, device: str) -> tuple[MACModel, dict[str, Any]]:
    """The MAC model (with its frozen LM) measured as ``name``, and a description of it for the report."""
    from transformers import AutoModelForCausalLM

    from ..frozen_lm import FrozenLM
    from ..model import MACModel
    from ..tiny_models import build_tokenizer

    info: dict[str, Any] = {"name": name, "description": DESCRIPTIONS[name]}
    if name == "default":
        ok, where = default_available()
        if ok:
            from ..training.default import default_paths

            paths = default_paths(train=False)
            lm = FrozenLM.from_pretrained(paths.base_lm, dtype=cfg.dtype, device=device)
            mac = MACModel.from_pretrained(paths.checkpoint, lm=lm)
            info.update(weights="trained", checkpoint=str(paths.checkpoint), base_lm_path=str(paths.base_lm))
            return mac.eval(), _describe(mac, info)
        logger.warning("No embedded default on this machine (%s); measuring the tiny model instead.", where)
        info.update(substituted="tiny", substitution_reason=where)
        name = "tiny"
        info["description"] = DESCRIPTIONS["tiny"] + " (in place of the missing default)"

    if name == "tiny":
        tokenizer = build_tokenizer()
    else:
        tokenizer = build_tokenizer(tokenizer_corpus(cfg.seed), vocab_size=BENCH_VOCAB)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(_lm_config(name, tokenizer))
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]
    lm = FrozenLM(model.to(device=device, dtype=dtype), tokenizer, f"bench:{name} (random weights)")
    torch.manual_seed(cfg.seed + 1)
    mac = MACModel(_mac_config(name, cfg), lm)
    info.update(weights="random (seeded)", tokenizer=f"byte-level BPE, {len(tokenizer)} tokens (in-process)")
    return mac.eval(), _describe(mac, info)


def _describe(mac: MACModel, info: dict[str, Any]) -> dict[str, Any]:
    lm = mac.lm
    layout = lm.layout
    text = lm.config.get_text_config(decoder=True) if hasattr(lm.config, "get_text_config") else lm.config
    info.update(
        model_type=lm.config.model_type,
        base_lm_parameters=int(sum(p.numel() for p in lm.model.parameters())),
        mac_parameters=int(sum(p.numel() for p in mac.parameters())),
        mac_trainable_parameters=int(sum(p.numel() for p in mac.parameters() if p.requires_grad)),
        layout={"num_layers": layout.num_layers, "num_kv_heads": layout.num_kv_heads, "head_dim": layout.head_dim},
        vocab_size=int(getattr(text, "vocab_size", 0)),
        max_positions=_max_positions(lm),
        dtype=str(lm.dtype).replace("torch.", ""),
        device=str(lm.device),
        mac_config=mac.config.to_dict(),
    )
    return info


def _max_positions(lm: FrozenLM) -> int | None:
    from ..evaluation.baselines import max_positions

    return max_positions(lm)


class HashEmbedder:
    """A toy embedder (hashed bag of words, 64-d, unit rows): instant, deterministic, for tests only."""

    name = "bench-hash-64"

    @property
    def dim(self) -> int:
        return 64

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little")
                out[row, h % self.dim] += 1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


class BenchContext:
    """One model under measurement: loaded once per process, plus its documents and work directory.

    Args:
        cfg: the resolved benchmark configuration.
        model: which model (one of :data:`~mac_memory.bench.config.MODELS`).
        workdir: this model's work directory (stores built by one task are read by later ones).
    """

    def __init__(self, cfg: BenchConfig, model: str, workdir: str | Path) -> None:
        self.cfg = cfg
        self.model = model
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._docs: dict[tuple[str, int, int], list[BenchDoc]] = {}
        if cfg.threads:
            torch.set_num_threads(cfg.threads)

    @cached_property
    def device(self) -> str:
        if self.cfg.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.cfg.device

    @cached_property
    def loaded(self) -> tuple[MACModel, dict[str, Any]]:
        out = load_model(self.model, self.cfg, self.device)
        # What is loaded now lives as long as the process: take it out of the collector's sight, so the
        # collection after every task (freeing what a variant built) is quick.
        gc.collect()
        gc.freeze()
        return out

    @property
    def mac(self) -> MACModel:
        return self.loaded[0]

    @property
    def lm(self) -> FrozenLM:
        return self.mac.lm

    @property
    def info(self) -> dict[str, Any]:
        return self.loaded[1]

    @cached_property
    def embedder(self) -> Any:
        if self.cfg.embedder == "hash":
            return HashEmbedder()
        from ..memory.embedder import SentenceTransformerEmbedder

        device = "cuda" if self.device.startswith("cuda") else "cpu"
        return SentenceTransformerEmbedder(device=device, num_threads=self.cfg.threads or None)

    def path(self, *parts: str, fresh: bool = False) -> Path:
        """A directory under this model's work directory (created; emptied first when ``fresh``)."""
        p = self.workdir.joinpath(*parts)
        if fresh:
            shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def count_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer(text, add_special_tokens=False)["input_ids"])

    def documents(self, tag: str, n: int, tokens: int) -> list[BenchDoc]:
        """``n`` documents of about ``tokens`` base-LM tokens; the same ``tag`` always gives the same ones."""
        key = (tag, n, tokens)
        if key not in self._docs:
            self._docs[key] = make_documents(n, tokens, self.count_tokens, seed=self.cfg.seed, tag=tag)
        return self._docs[key]

    def memory(self, path: Path, collection: str = "bench") -> MACMemory:
        """A :class:`MACMemory` on an embedded Chroma at ``path`` with this model and embedder."""
        from ..memory import MACMemory

        return MACMemory(path=path, collection=collection, model=self.mac, embedder=self.embedder,
                         codec=self.cfg.codec, show_progress=False)
