"""Tiny models built in-process from small configs, for tests, demos and smoke runs.

Nothing here is downloaded: a byte-level BPE tokenizer is trained on the spot and the models are
randomly initialised from configs of the real families (GPT-2, Llama with grouped-query attention,
Qwen2, T5, BERT). :func:`save_tiny` writes one to a directory so the real ``from_pretrained`` loading
code is what reads it back.

Example:
    >>> path = save_tiny("llama", "/tmp/tiny-llama")             # doctest: +SKIP
    >>> lm = FrozenLM.from_pretrained(path)                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

CAUSAL_FAMILIES = ("gpt2", "llama", "qwen2")
ENCODER_FAMILIES = ("t5", "bert")

_DEFAULT_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Question: Where was Velmora born?\nAnswer: in Ostravel. "
    "Kado Fen works for Brindlecorp as an engineer since 1987. Paris is the capital of France. "
    "Memory of amortized contexts compresses documents into modulations for a frozen language model. "
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-"
)


@lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int, corpus: tuple[str, ...]) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return tok.to_str()


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (any text encodes; pad=0, eos=1, unk=2) trained on ``corpus``."""
    from tokenizers import Tokenizer

    texts = tuple(corpus) if corpus is not None else (_DEFAULT_CORPUS,)
    tok = Tokenizer.from_str(_trained_tokenizer_json(vocab_size, texts))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", bos_token="</s>")


def tiny_config(family: str, vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int | None = None):
    """A transformers config of ``family`` at toy size (special token ids match :func:`build_tokenizer`)."""
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)
    if family == "gpt2":
        return AutoConfig.for_model("gpt2", vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                                    n_positions=512, **ids)
    if family in ("llama", "qwen2"):
        default_kv = 2 if family == "llama" else 1  # real GQA: fewer key/value heads than query heads
        return AutoConfig.for_model(family, vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                                    num_hidden_layers=layers, num_attention_heads=heads,
                                    num_key_value_heads=kv_heads or default_kv, max_position_embeddings=512,
                                    tie_word_embeddings=True, **ids)
    if family == "t5":
        return AutoConfig.for_model("t5", vocab_size=vocab_size, d_model=hidden, d_kv=hidden // heads,
                                    d_ff=2 * hidden, num_layers=layers, num_decoder_layers=layers, num_heads=heads,
                                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    if family == "bert":
        return AutoConfig.for_model("bert", vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                    num_attention_heads=heads, intermediate_size=2 * hidden,
                                    max_position_embeddings=512, pad_token_id=0)
    raise ValueError(f"Unknown tiny family {family!r}; choose from {CAUSAL_FAMILIES + ENCODER_FAMILIES}.")


def build_tiny(family: str, tokenizer: PreTrainedTokenizerFast | None = None, *, seed: int = 0,
               **config_kwargs) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised tiny model of ``family`` and its tokenizer (deterministic by ``seed``)."""
    tokenizer = tokenizer or build_tokenizer()
    config = tiny_config(family, len(tokenizer), **config_kwargs)
    torch.manual_seed(seed)
    if family in CAUSAL_FAMILIES:
        model = AutoModelForCausalLM.from_config(config)
    else:
        model = AutoModel.from_config(config)
    return model.eval(), tokenizer


def save_tiny(family: str, path: str | Path, *, seed: int = 0, **config_kwargs) -> Path:
    """Build a tiny ``family`` model and save it with its tokenizer, ready for ``from_pretrained(path)``."""
    model, tokenizer = build_tiny(family, seed=seed, **config_kwargs)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
