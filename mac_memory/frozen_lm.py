"""The frozen base LM: any HuggingFace causal LM, loaded once, never updated.

:class:`FrozenLM` runs the three things MAC needs from it, each with an optional per-example prefix:

* :meth:`FrozenLM.read` — the LM's own key/values for a text (what the KV-anchored amortizer compresses);
* :meth:`FrozenLM.forward` — a training forward with labels (gradients reach the prefix, never the LM);
* :meth:`FrozenLM.generate` — batched, left-padded greedy or beam-search generation.

Shapes come from the LM's config (layers, key/value heads under grouped-query attention, head size),
checked against a one-token dry run, never hard-coded. No transformers internals are patched.

Example:
    >>> lm = FrozenLM.from_pretrained("gpt2")                      # doctest: +SKIP
    >>> ctx = lm.read(*lm.tokenize(["Paris is in France."]))      # doctest: +SKIP
    >>> lm.generate(["Question: Where is Paris?\\nAnswer:"], prefix=ctx)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .base_lms import converted_gguf, file_sha256, plain_model, resolve_base_lm
from .errors import BaseModelLoadError, BaseModelMismatchError, MissingDependencyError, check_texts
from .prefix import PrefixKV, prefixed_mask, prefixed_positions
from .prompts import clean_answer, format_qa, format_question

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Config keys that say how a model was loaded or saved, not what it is.
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash",
                         "use_cache", "_attn_implementation_autoset", "output_attentions",
                         "output_hidden_states", "return_dict"}


@dataclass(frozen=True)
class KVLayout:
    """Key/value geometry of a decoder: what a prefix must provide for every layer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int

    @property
    def kv_dim(self) -> int:
        """Width of one layer's keys (or values) for one position: ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Loading weights" progress bar: loading a frozen LM takes a second, a bar on every load is noise."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _cache_of(output: Any) -> Any:
    """The key/value cache of a model output (``cache`` since transformers 5.x, ``past_key_values`` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def kv_layout_from_config(config: Any) -> KVLayout:
    """Layers, key/value heads (GQA/MQA aware) and head size from a transformers config."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or text.n_layer
    heads = getattr(text, "num_attention_heads", None) or text.n_head
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    hidden = getattr(text, "hidden_size", None) or text.n_embd
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    return KVLayout(int(layers), int(kv_heads), int(head_dim))


class FrozenLM:
    """A causal LM with frozen weights that reads, scores and generates under per-example prefixes."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 name_or_path: str | None = None) -> None:
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            # Causal LMs often ship without a pad token; padded positions are masked out anyway.
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.name_or_path = name_or_path or getattr(model.config, "_name_or_path", "") or "<in-memory>"
        self.source: Any = None  # the files it was loaded from (a BaseLMSource), when from_pretrained loaded it
        self._weights_source: dict[str, Any] | None = None
        self._provenance: dict[str, Any] = {}  # what from_pretrained already measured (a GGUF file's sha256)
        self.layout = self._checked_layout()
        # Reading a document wants its key/values only: skip the vocabulary projection of its tokens
        # where the model allows it (a third of GPT-2-small's compute on a 150-token document).
        self._skips_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._read_kwargs = {"logits_to_keep": 1} if self._skips_logits else {}
        # transformers 5.x renamed the key/value cache argument `past_key_values` to `cache` (the old name
        # is deprecated, to be removed from forward in 5.40); use whichever this version's model takes.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype: str = "float32", device: str | None = None,
                        revision: str | None = None, gguf_file: str | None = None,
                        adapter: str | Path | None = None, **model_kwargs: Any) -> FrozenLM:
        """Load a causal LM and its tokenizer, merge an adapter if one is given, then freeze it.

        ``name_or_path`` is a hub name, a local directory, a ``.gguf`` file (or a directory with
        ``gguf_file=``), a peft adapter directory, or a bundled short name such as
        ``"smollm2-135m-instruct"`` (see :mod:`mac_memory.base_lms`). ``adapter`` merges a peft adapter
        (e.g. LoRA) into the weights before they are frozen.
        """
        source = resolve_base_lm(name_or_path, gguf_file=gguf_file, adapter=adapter)
        path, loading, provenance = source.path, {"revision": revision}, {}
        if source.gguf_file is not None:
            if source.gguf_path.is_file():  # a local file: load its cached, converted copy
                sha = file_sha256(source.gguf_path)
                path, provenance = str(converted_gguf(source.gguf_path, sha)), {"gguf_sha256": sha}
            else:  # a file in a hub repository
                loading["gguf_file"] = source.gguf_file
        try:
            with _quiet_loading():
                tokenizer = AutoTokenizer.from_pretrained(path, **loading)
                model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[dtype], **loading, **model_kwargs)
        except (ValueError, KeyError) as exc:  # transformers' word for "this architecture/file is not mine"
            raise BaseModelLoadError(
                f"transformers cannot load {name_or_path!r} as a causal LM ({exc}). Check the name or path; a "
                "GGUF file must hold an architecture transformers can dequantize (llama, qwen2, mistral, "
                "gpt2, ...); upgrading transformers may add support.") from exc
        if "gguf_file" in loading:
            model = plain_model(model)
        if source.adapter is not None:
            model = _merged(model, source.adapter)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        lm = cls(model.to(device), tokenizer, str(name_or_path))
        lm.source = source
        lm._provenance = provenance
        return lm

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def config(self) -> Any:
        return self.model.config

    def _checked_layout(self) -> KVLayout:
        layout = kv_layout_from_config(self.model.config)
        with torch.no_grad():
            one = torch.ones(1, 1, dtype=torch.long, device=self.device)
            out = self.model(input_ids=one * 0, attention_mask=one, use_cache=True)
        layers = _cache_of(out).layers
        shapes = {(layer.keys.shape[1], layer.keys.shape[3]) for layer in layers}
        if len(layers) != layout.num_layers or shapes != {(layout.num_kv_heads, layout.head_dim)}:
            raise BaseModelMismatchError(
                f"{self.name_or_path}: its cache has {len(layers)} layers with (kv_heads, head_dim) {shapes}, "
                f"but its config says {layout}. Models with heterogeneous layers are not supported."
            )
        return layout

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        """What a checkpoint records about the LM it was trained for: name, config and a weight signature."""
        config = {k: v for k, v in self.model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        config_json = json.dumps(config, sort_keys=True, default=str)
        return {
            "name_or_path": self.name_or_path,
            "model_type": self.model.config.model_type,
            "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
            "config": json.loads(config_json),
            "weights_signature": weight_signature(self.model),
            "weights_source": self.weights_source(),
        }

    def weights_source(self) -> dict[str, Any]:
        """Which files the weights came from, beyond what the weight signature samples: the format (a
        dequantized GGUF is not the full-precision model of the same name) and any merged adapter."""
        if self._weights_source is None:
            source = self.source
            found: dict[str, Any] = {"format": "transformers", "adapter_sha256": None}
            if source is not None and source.gguf_file is not None:
                local = source.gguf_path.is_file()  # a file in a hub repository sits in transformers' cache
                sha = self._provenance.get("gguf_sha256") or (file_sha256(source.gguf_path) if local else None)
                found.update(format="gguf", gguf_file=source.gguf_file, gguf_sha256=sha)
            if source is not None and source.adapter is not None:
                found["adapter_sha256"] = file_sha256(Path(source.adapter) / "adapter_model.safetensors")
            self._weights_source = found
        return self._weights_source

    def check_identity(self, recorded: dict[str, Any], what: str = "This checkpoint") -> None:
        """Raise :class:`BaseModelMismatchError` unless ``recorded`` describes this very LM."""
        mine = self.identity()
        if recorded.get("config_sha256") != mine["config_sha256"]:
            theirs = recorded.get("config", {})
            diff = sorted(k for k in set(theirs) | set(mine["config"]) if theirs.get(k) != mine["config"].get(k))
            shown = ", ".join(f"{k}: {theirs.get(k)!r} vs {mine['config'].get(k)!r}" for k in diff[:5])
            raise BaseModelMismatchError(
                f"{what} was made for base LM {recorded.get('name_or_path')!r}, but the loaded base LM "
                f"{self.name_or_path!r} has a different config ({shown}). Load the base LM it was trained "
                "for, or train/reindex for this one."
            )
        theirs_sig, mine_sig = recorded.get("weights_signature", {}), mine["weights_signature"]
        if isinstance(theirs_sig, dict) and theirs_sig.get("sha256_bf16") == mine_sig["sha256_bf16"]:
            return  # the very same weights, whatever files they were read from
        # Different bytes. Where they came from says why, and rules out a near match that the tolerant
        # comparison below (meant for float16 loads of the same weights) could accept: a merged LoRA
        # adapter or a 4-bit quantization moves weights by little, but answers change.
        theirs_src = recorded.get("weights_source") or {"format": "transformers", "adapter_sha256": None}
        mine_src = mine["weights_source"]
        if theirs_src.get("adapter_sha256") != mine_src["adapter_sha256"]:
            theirs_has, mine_has = bool(theirs_src.get("adapter_sha256")), bool(mine_src["adapter_sha256"])
            have = "a different adapter" if theirs_has and mine_has else "an adapter" if mine_has else "no adapter"
            raise BaseModelMismatchError(
                f"{what} was made for base LM {recorded.get('name_or_path')!r} with "
                f"{'an adapter' if theirs_has else 'no adapter'} merged in; {self.name_or_path!r} has {have} "
                "merged in. Load the base LM (and adapter) it was trained for.")
        if theirs_src.get("format") != mine_src["format"] or theirs_src.get("gguf_sha256") != mine_src.get("gguf_sha256"):
            raise BaseModelMismatchError(
                f"{what} was made for base LM {recorded.get('name_or_path')!r} loaded from "
                f"{_describe_source(theirs_src)}, but {self.name_or_path!r} was loaded from "
                f"{_describe_source(mine_src)}, with other weights (quantized and full-precision weights "
                "answer differently). Load the base LM it was trained for.")
        if not signatures_match(theirs_sig, mine_sig):
            raise BaseModelMismatchError(
                f"{what} was made for base LM {recorded.get('name_or_path')!r}; {self.name_or_path!r} has "
                "the same architecture but different weights. Load the base LM it was trained for."
            )

    # ------------------------------------------------------------------ tokenization
    def tokenize(self, texts: Sequence[str], max_length: int | None = None,
                 add_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(input_ids, attention_mask)``; empty texts are refused."""
        texts = check_texts(texts, "text")
        if add_eos:
            texts = [t + self.tokenizer.eos_token for t in texts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=max_length is not None,
                             max_length=max_length, add_special_tokens=True)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def qa_batch(self, questions: Sequence[str], answers: Sequence[str],
                 max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask, labels)`` for ``Question: q\\nAnswer: a<eos>``; loss on the answer only."""
        if len(questions) != len(answers):
            raise ValueError(f"{len(questions)} questions but {len(answers)} answers.")
        prompts = [format_question(q) for q in questions]
        full = [format_qa(q, a) for q, a in zip(questions, answers)]
        input_ids, attention_mask = self.tokenize(full, max_length=max_length, add_eos=True)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        prompt_lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=True)["input_ids"]]
        pads = (attention_mask == 0).sum(dim=1).tolist()
        for row, (n_prompt, start) in enumerate(zip(prompt_lengths, pads)):
            # Left padding: the prompt occupies the first n_prompt real tokens of the row.
            labels[row, start : start + n_prompt] = -100
        return input_ids, attention_mask, labels

    # ------------------------------------------------------------------ reading, scoring, generating
    @torch.no_grad()
    def read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PrefixKV:
        """The LM's own key/values for a (left-padded) batch of texts, as a prefix with padding masked."""
        positions = prefixed_positions(attention_mask, input_ids.shape[1])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                         use_cache=True, **self._read_kwargs)
        layers = _cache_of(out).layers
        keys = torch.stack([layer.keys for layer in layers])  # (n_layers, B, n_kv_heads, L, head_dim)
        values = torch.stack([layer.values for layer in layers])
        return PrefixKV(keys, values, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prefix: PrefixKV | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """One forward pass under ``prefix`` (per-example, or batch-1 broadcast). Returns the HF output."""
        if prefix is None:
            positions = prefixed_positions(attention_mask, input_ids.shape[1])
            return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                              labels=labels, use_cache=False, **kwargs)
        prefix = prefix.expand(input_ids.shape[0])
        full_mask = prefixed_mask(prefix, attention_mask)
        return self.model(
            input_ids=input_ids,
            attention_mask=full_mask,
            position_ids=prefixed_positions(full_mask, input_ids.shape[1]),
            labels=labels,
            use_cache=False,
            **{self._cache_arg: prefix.to_cache(self.model.config, self.dtype, self.device)},
            **kwargs,
        )

    def answer_loss(self, questions: Sequence[str], answers: Sequence[str], prefix: PrefixKV | None = None,
                    *, recompute_chunk: int = 0) -> torch.Tensor:
        """Mean answer-token NLL of ``answers`` given ``questions`` under ``prefix`` (MAC's training loss).

        ``recompute_chunk`` trades compute for memory when training: with N > 0 the LM runs N questions at
        a time under activation checkpointing, so instead of keeping every layer's activations for the
        whole batch until backward, backward recomputes them one chunk at a time (peak about N / B of
        them, for one more forward of the frozen LM). The value and the prefix's gradients are the same.
        """
        input_ids, attention_mask, labels = self.qa_batch(questions, answers)
        count = int((labels[:, 1:] != -100).sum())
        if count == 0:
            raise ValueError("answer_loss: no answer tokens to score (every answer was cut off).")
        if recompute_chunk < 0:
            raise ValueError(f"answer_loss: recompute_chunk must be >= 0, got {recompute_chunk}.")
        batch = input_ids.shape[0]
        if prefix is not None:
            prefix = prefix.expand(batch)
        tracked = prefix is not None and torch.is_grad_enabled() and (
            prefix.keys.requires_grad or prefix.values.requires_grad)
        if not tracked or not recompute_chunk or recompute_chunk >= batch:
            return self._answer_nll(input_ids, attention_mask, labels, prefix) / count
        total = input_ids.new_zeros((), dtype=torch.float32)
        for start in range(0, batch, recompute_chunk):
            rows = slice(start, start + recompute_chunk)
            mask = None if prefix.mask is None else prefix.mask[rows]
            total = total + torch.utils.checkpoint.checkpoint(
                self._answer_nll_of, input_ids[rows], attention_mask[rows], labels[rows],
                prefix.keys[:, rows], prefix.values[:, rows], mask, use_reentrant=False)
        return total / count

    def _answer_nll_of(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                       keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # Checkpointed functions take tensors: the prefix is rebuilt (and its cache made afresh) on recompute.
        return self._answer_nll(input_ids, attention_mask, labels, PrefixKV(keys, values, mask))

    def _answer_nll(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                    prefix: PrefixKV | None) -> torch.Tensor:
        """Summed NLL (float32) of the labelled tokens."""
        labelled = (labels != -100).any(dim=0).nonzero()
        if labelled.numel() == 0:
            return input_ids.new_zeros((), dtype=torch.float32)
        # Left padding puts every answer at the end of its row, so only the last ``span`` positions predict
        # answer tokens: project those onto the vocabulary and skip the rest (on a 32k-50k vocabulary the
        # question's logits were most of a training step's activation memory). A model that cannot skip
        # logits computes them all and the same positions are kept.
        span = input_ids.shape[1] - int(labelled[0])
        keep = {"logits_to_keep": span + 1} if self._skips_logits else {}
        logits = self.forward(input_ids, attention_mask, prefix=prefix, **keep).logits[:, -(span + 1):]
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, -span:].reshape(-1),
            ignore_index=-100, reduction="sum")

    @torch.no_grad()
    def generate_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     prefix: PrefixKV | None = None, *, max_new_tokens: int = 32, num_beams: int = 1,
                     num_return_sequences: int = 1, **gen_kwargs: Any) -> torch.Tensor:
        """New token ids ``(B * num_return_sequences, <= max_new_tokens)`` (the prompt is cut off)."""
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_beams=num_beams,
                                      num_return_sequences=num_return_sequences,
                                      pad_token_id=self.tokenizer.pad_token_id, **gen_kwargs)
        kwargs.setdefault("do_sample", False)
        if prefix is not None:
            prefix = prefix.expand(input_ids.shape[0])
            cache = prefix.to_cache(self.model.config, self.dtype, self.device)
            n = max(num_beams, num_return_sequences)
            if n > 1:
                cache.batch_repeat_interleave(n)  # generate() expands its inputs but not a user cache
            kwargs.update({self._cache_arg: cache, "attention_mask": prefixed_mask(prefix, attention_mask)})
        else:
            kwargs.update(attention_mask=attention_mask)
        out = self.model.generate(input_ids=input_ids, **kwargs)
        return out[:, input_ids.shape[1]:]

    def generate(self, prompts: Sequence[str], prefix: PrefixKV | None = None, *, max_new_tokens: int = 32,
                 num_beams: int = 1, **gen_kwargs: Any) -> list[str]:
        """Decoded continuations of ``prompts`` (raw text, special tokens removed)."""
        input_ids, attention_mask = self.tokenize(prompts)
        new = self.generate_ids(input_ids, attention_mask, prefix, max_new_tokens=max_new_tokens,
                                num_beams=num_beams, **gen_kwargs)
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def answer(self, questions: Sequence[str], prefix: PrefixKV | None = None, *, max_new_tokens: int = 32,
               num_beams: int = 1) -> list[str]:
        """Answers to ``questions`` in the QA format, each cut at its first line break."""
        prompts = [format_question(q) for q in questions]
        texts = self.generate(prompts, prefix, max_new_tokens=max_new_tokens, num_beams=num_beams)
        return [clean_answer(t) for t in texts]


def _describe_source(source: dict[str, Any]) -> str:
    if source.get("format") == "gguf":
        return f"the GGUF file {source.get('gguf_file')} (dequantized)"
    return "full-precision transformers weights"


def _merged(model: PreTrainedModel, adapter: str) -> PreTrainedModel:
    """``model`` with the peft adapter at ``adapter`` merged into its weights (then an ordinary model)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise MissingDependencyError("Merging an adapter needs peft: pip install 'mac-memory[train]' "
                                     "(or pip install peft)") from None
    try:
        with warnings.catch_warnings():  # peft <= 0.21 reads transformers' deprecated alias; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
            return PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise BaseModelLoadError(f"Cannot merge the adapter {adapter} into this base LM ({exc}); it was made "
                                 "for another base LM, or its files are damaged.") from exc


def weight_signature(model: torch.nn.Module, n: int = 16, per_tensor: int = 8) -> dict[str, Any]:
    """A fingerprint of the weights: an exact hash and a few values, cheap even for billion-parameter LMs.

    ``n`` parameter tensors spread over the sorted names are sampled. The hash is over their values
    rounded to bfloat16, so the same weights loaded in float32 or bfloat16 hash alike; the sampled
    values let float16 loads (a different rounding) still be recognised with a tolerance.
    """
    named = sorted(model.named_parameters(), key=lambda kv: kv[0])
    picks = [named[round(i * (len(named) - 1) / max(n - 1, 1))] for i in range(min(n, len(named)))]
    digest = hashlib.sha256()
    values: list[float] = []
    for name, p in picks:
        flat = p.detach().reshape(-1)
        digest.update(f"{name}{tuple(p.shape)}".encode())
        digest.update(flat.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
        # Integer arithmetic: float32 positions (torch.linspace) round past the last index beyond 2**24.
        count = min(per_tensor, flat.numel())
        idx = torch.tensor([i * (flat.numel() - 1) // max(count - 1, 1) for i in range(count)])
        values += [float(v) for v in flat[idx.to(flat.device)].double().cpu()]
    return {"sha256_bf16": digest.hexdigest(), "values": values}


def signatures_match(a: dict[str, Any], b: dict[str, Any], atol: float = 1e-3, rtol: float = 1e-2) -> bool:
    """True when two :func:`weight_signature` results describe the same weights (up to dtype rounding)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return False
    if a.get("sha256_bf16") and a.get("sha256_bf16") == b.get("sha256_bf16"):
        return True
    va, vb = a.get("values", []), b.get("values", [])
    if len(va) != len(vb) or not va:
        return False
    return bool(torch.allclose(torch.tensor(va), torch.tensor(vb), rtol=rtol, atol=atol))
