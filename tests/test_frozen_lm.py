"""Prefix injection into the frozen LM: a prefix of the LM's own key/values *is* that context in the prompt.

If these fail, a user sees answers that ignore (or garble) the stored memory: positions shifted by the
padding, prompt tokens silently dropped by ``generate``, beams mixing rows, or a cache reused between
calls.
"""

from __future__ import annotations

import pytest
import torch
from helpers import CAUSAL

from mac_memory.frozen_lm import FrozenLM, kv_layout_from_config
from mac_memory.prefix import PrefixKV

# Different lengths on purpose: left padding inside the prefix *and* inside the prompts.
CONTEXTS = [
    "Paris is the capital of France.",
    "Kado Fen works for Brindlecorp as an engineer since 1987. The quick brown fox.",
    "Memory of amortized contexts.",
]
PROMPTS = [
    "Question: Where is Paris?\nAnswer:",
    "Question: Who?\nAnswer:",
    "Question: What does memory of amortized contexts compress?\nAnswer:",
]
NEW_TOKENS = 5


def _ids(lm: FrozenLM, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=True)["input_ids"]


def _concat_row(lm: FrozenLM, context: str, prompt: str) -> tuple[torch.Tensor, int]:
    """One unpadded sequence ``context + prompt`` (token ids concatenated) and the prompt's length."""
    prompt_ids = _ids(lm, prompt)
    return torch.tensor([_ids(lm, context) + prompt_ids]), len(prompt_ids)


def _read(lm: FrozenLM, texts: list[str]) -> PrefixKV:
    return lm.read(*lm.tokenize(texts))


@pytest.mark.parametrize("family", CAUSAL)
def test_layout_comes_from_the_config_including_gqa(lms, family):
    """The prefix geometry the LM expects (layers, K/V heads, head size) is read from its config."""
    lm = lms[family]
    cfg = lm.config
    heads = cfg.num_attention_heads
    expected_kv = getattr(cfg, "num_key_value_heads", None) or heads
    assert lm.layout == kv_layout_from_config(cfg)
    assert (lm.layout.num_layers, lm.layout.num_kv_heads, lm.layout.head_dim) == (
        cfg.num_hidden_layers,
        expected_kv,
        cfg.hidden_size // heads,
    )
    assert lm.layout.num_kv_heads == {"gpt2": 4, "llama": 2, "qwen2": 1}[family]  # GQA is really exercised


@pytest.mark.parametrize("family", CAUSAL)
def test_prefix_logits_equal_context_written_into_the_prompt(lms, family):
    """Logits of left-padded prompts under a left-padded K/V prefix equal the unpadded concatenation, row by row."""
    lm = lms[family]
    prefix = _read(lm, CONTEXTS)
    assert prefix.mask is not None and not bool(prefix.mask.all()), "contexts must differ in length"
    input_ids, attention_mask = lm.tokenize(PROMPTS)
    assert not bool(attention_mask.all()), "prompts must differ in length"
    with torch.no_grad():
        logits = lm.forward(input_ids, attention_mask, prefix=prefix).logits
    for row, (context, prompt) in enumerate(zip(CONTEXTS, PROMPTS, strict=True)):
        ids, n_prompt = _concat_row(lm, context, prompt)
        with torch.no_grad():
            expected = lm.model(input_ids=ids).logits[0, -n_prompt:]
        torch.testing.assert_close(logits[row, -n_prompt:], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", CAUSAL)
def test_prefix_loss_equals_loss_with_context_in_prompt(lms, family):
    """The training loss under a prefix equals the loss on the same labels with the context written in."""
    lm = lms[family]
    context, prompt = CONTEXTS[1], PROMPTS[0]
    ids = torch.tensor([_ids(lm, prompt)])
    with torch.no_grad():
        loss = lm.forward(ids, torch.ones_like(ids), prefix=_read(lm, [context]), labels=ids).loss
        full = torch.tensor([_ids(lm, context) + ids[0].tolist()])
        labels = full.clone()
        # No loss on the context, nor on the first prompt token (under the prefix it is never predicted).
        labels[:, : full.shape[1] - ids.shape[1] + 1] = -100
        expected = lm.model(input_ids=full, labels=labels).loss
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


def _greedy_reference(lm: FrozenLM, num_beams: int = 1) -> list[list[int]]:
    refs = []
    for context, prompt in zip(CONTEXTS, PROMPTS, strict=True):
        ids, _ = _concat_row(lm, context, prompt)
        new = lm.generate_ids(
            ids,
            torch.ones_like(ids),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            num_beams=num_beams,
        )
        refs.append(new[0].tolist())
    return refs


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
@pytest.mark.parametrize("family", CAUSAL)
def test_generation_under_prefix_equals_generation_on_concatenated_text(lms, family, num_beams):
    """Batched generation under a padded prefix gives, per row, the tokens of the context written into the prompt.

    ``min_new_tokens`` keeps EOS from ending a row early, so all ``NEW_TOKENS`` tokens are compared.
    """
    lm = lms[family]
    input_ids, attention_mask = lm.tokenize(PROMPTS)
    new = lm.generate_ids(
        input_ids,
        attention_mask,
        _read(lm, CONTEXTS),
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        num_beams=num_beams,
    )
    assert new.shape == (len(PROMPTS), NEW_TOKENS)
    assert new.tolist() == _greedy_reference(lm, num_beams)


def test_generate_strings_match_token_generation(lms):
    """``generate`` decodes exactly the tokens ``generate_ids`` produces (the prompt is not echoed)."""
    lm = lms["llama"]
    prefix = _read(lm, CONTEXTS)
    texts = lm.generate(PROMPTS, prefix, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    new = lm.generate_ids(*lm.tokenize(PROMPTS), prefix, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    assert texts == lm.tokenizer.batch_decode(new, skip_special_tokens=True)
    assert len(texts) == len(PROMPTS)


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_same_prefix_twice_gives_same_output(lms, family, num_beams):
    """A PrefixKV can be used for many calls: each builds a fresh cache, so nothing leaks between calls."""
    lm = lms[family]
    prefix = _read(lm, CONTEXTS[:1]).expand(len(PROMPTS))  # all-ones mask: where cache reuse bites hardest
    keys, values = prefix.keys.clone(), prefix.values.clone()
    ids, mask = lm.tokenize(PROMPTS)
    first = lm.generate_ids(
        ids, mask, prefix, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=num_beams
    )
    second = lm.generate_ids(
        ids, mask, prefix, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=num_beams
    )
    assert torch.equal(first, second)
    assert torch.equal(prefix.keys, keys) and torch.equal(prefix.values, values)  # never modified in place
    with torch.no_grad():
        a = lm.forward(ids, mask, prefix=prefix).logits
        b = lm.forward(ids, mask, prefix=prefix).logits
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", CAUSAL)
def test_batch1_prefix_broadcasts_like_a_per_row_prefix(lms, family):
    """One shared prefix for a batch of 3 prompts acts exactly like the same prefix repeated per row."""
    lm = lms[family]
    shared = _read(lm, CONTEXTS[1:2])
    per_row = _read(lm, CONTEXTS[1:2] * len(PROMPTS))
    assert shared.batch_size == 1 and per_row.batch_size == len(PROMPTS)
    assert shared.expand(3).keys.shape == per_row.keys.shape
    ids, mask = lm.tokenize(PROMPTS)
    with torch.no_grad():
        torch.testing.assert_close(
            lm.forward(ids, mask, prefix=shared).logits,
            lm.forward(ids, mask, prefix=per_row).logits,
            atol=1e-5,
            rtol=0,
        )
    kw = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    assert torch.equal(lm.generate_ids(ids, mask, shared, **kw), lm.generate_ids(ids, mask, per_row, **kw))
    assert torch.equal(
        lm.generate_ids(ids, mask, shared, num_beams=3, **kw),
        lm.generate_ids(ids, mask, per_row, num_beams=3, **kw),
    )


def test_prefix_of_batch2_cannot_broadcast_to_batch3(lms):
    """Only a batch-1 prefix broadcasts; a mismatched batch is a clear error, not a silent mix-up."""
    prefix = _read(lms["gpt2"], CONTEXTS[:2])
    with pytest.raises(ValueError, match="batch 2 to 3"):
        prefix.expand(3)


def test_float32_prefix_into_bfloat16_model(frozen_lm):
    """A float32 prefix (what the MAC networks produce) works on a bfloat16 LM and stays close to float32."""
    lm32, lm16 = frozen_lm("llama"), frozen_lm("llama", dtype="bfloat16")
    assert lm16.dtype == torch.bfloat16
    prefix = _read(lm32, CONTEXTS)
    assert prefix.keys.dtype == torch.float32
    ids, mask = lm16.tokenize(PROMPTS)
    with torch.no_grad():
        logits16 = lm16.forward(ids, mask, prefix=prefix).logits
        logits32 = lm32.forward(ids, mask, prefix=prefix).logits
    assert logits16.dtype == torch.bfloat16 and bool(torch.isfinite(logits16).all())
    torch.testing.assert_close(logits16.float(), logits32, atol=0.1, rtol=0.05)
    new = lm16.generate_ids(ids, mask, prefix, max_new_tokens=3, min_new_tokens=3, num_beams=2)
    assert new.shape == (len(PROMPTS), 3)


def test_prefix_gradients_reach_prefix_not_lm(lms):
    """Training signal: the loss under a prefix back-propagates into the prefix tensors and never into the LM."""
    lm = lms["qwen2"]
    read = _read(lm, CONTEXTS[:1])
    keys = read.keys.clone().requires_grad_(True)
    values = read.values.clone().requires_grad_(True)
    ids, mask = lm.tokenize(PROMPTS)
    lm.forward(
        ids, mask, prefix=PrefixKV(keys, values), labels=ids.masked_fill(mask == 0, -100)
    ).loss.backward()
    assert keys.grad is not None and float(keys.grad.norm()) > 0
    assert values.grad is not None and float(values.grad.norm()) > 0
    assert all(p.grad is None and not p.requires_grad for p in lm.model.parameters())


LOSS_QUESTIONS = ["Where is Paris?", "Who?", "What does memory of amortized contexts compress?"]
LOSS_ANSWERS = ["France", "Kado Fen of Brindlecorp, an engineer", "documents"]  # unequal lengths


def _loss_and_prefix_grads(read: PrefixKV, loss_fn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``loss_fn(prefix)`` under a fresh copy of ``read`` that needs gradients: loss and the prefix's grads."""
    keys = read.keys.clone().requires_grad_(True)
    values = read.values.clone().requires_grad_(True)
    loss = loss_fn(PrefixKV(keys, values, read.mask))
    loss.backward()
    return loss.detach(), keys.grad, values.grad


def _assert_same_loss_and_prefix_grads(expected: tuple, got: tuple) -> None:
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(got[2], expected[2], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("family", CAUSAL)
def test_answer_loss_equals_the_models_own_loss_over_all_logits(lms, family):
    """MAC's training loss projects only the answer positions onto the vocabulary; value and prefix
    gradients must equal the model's own loss over every position's logits (answers of unequal length)."""
    lm = lms[family]
    questions, answers = LOSS_QUESTIONS, LOSS_ANSWERS
    read = _read(lm, CONTEXTS)
    ids, mask, labels = lm.qa_batch(questions, answers)
    _assert_same_loss_and_prefix_grads(
        _loss_and_prefix_grads(read, lambda prefix: lm.forward(ids, mask, prefix=prefix, labels=labels).loss),
        _loss_and_prefix_grads(read, lambda prefix: lm.answer_loss(questions, answers, prefix)))
    assert float(lm.answer_loss(questions, answers)) == pytest.approx(
        float(lm.forward(*lm.qa_batch(questions, answers)[:2], labels=lm.qa_batch(questions, answers)[2]).loss),
        abs=1e-5)


def test_answer_loss_of_a_model_that_cannot_skip_logits_is_the_same(lms, monkeypatch):
    """Models whose forward has no ``logits_to_keep`` get the model's own loss over all logits: same value."""
    lm = lms["llama"]
    questions, answers = ["Where is Paris?", "Who?"], ["France", "Kado Fen of Brindlecorp"]
    sliced = lm.answer_loss(questions, answers, _read(lm, CONTEXTS[:2]))
    monkeypatch.setattr(lm, "_skips_logits", False)
    torch.testing.assert_close(lm.answer_loss(questions, answers, _read(lm, CONTEXTS[:2])), sliced,
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", CAUSAL)
@pytest.mark.parametrize("chunk", [1, 2])
def test_recomputed_answer_loss_gives_the_same_loss_and_prefix_gradients(lms, family, chunk):
    """``recompute_chunk`` runs the LM a few questions at a time under activation checkpointing: the loss
    and the prefix's gradients must be the ones of the plain forward (3 questions: chunks of unequal size)."""
    lm = lms[family]
    read = _read(lm, CONTEXTS)
    _assert_same_loss_and_prefix_grads(*(
        _loss_and_prefix_grads(read, lambda prefix, n=n: lm.answer_loss(LOSS_QUESTIONS, LOSS_ANSWERS, prefix,
                                                                        recompute_chunk=n))
        for n in (0, chunk)))


def test_recomputing_the_answer_loss_lowers_its_peak_memory(lms):
    """What a user training on a large LM notices: the forward + backward of the answer loss allocates
    less at its peak when the LM's activations are recomputed a chunk at a time."""
    from mac_memory.bench.measure import tensor_peak

    lm = lms["llama"]
    questions = [f"What is the favourite colour of person number {i} in the city?" for i in range(8)]
    answers = [f"a long answer about colour {i} and more words after it" for i in range(8)]
    read = _read(lm, CONTEXTS[:1]).expand(8)

    def step(chunk: int) -> None:
        keys = read.keys.clone().requires_grad_(True)
        values = read.values.clone().requires_grad_(True)
        lm.answer_loss(questions, answers, PrefixKV(keys, values), recompute_chunk=chunk).backward()

    plain, _ = tensor_peak(lambda: step(0), "cpu")
    chunked, _ = tensor_peak(lambda: step(1), "cpu")
    assert chunked < 0.6 * plain, (chunked, plain)


def test_a_negative_recompute_chunk_is_refused(lms):
    lm = lms["llama"]
    with pytest.raises(ValueError, match="recompute_chunk"):
        lm.answer_loss(["Who?"], ["Kado"], _read(lm, CONTEXTS[:1]), recompute_chunk=-1)


@pytest.mark.parametrize("family", CAUSAL)
def test_our_calls_into_transformers_are_not_deprecated_and_loading_is_quiet(tiny_paths, family, capfd):
    """Loading, reading, a prefixed forward/loss and prefixed generation: no deprecation warning from
    transformers (its renamed arguments disappear in later releases, and MAC's injection path rides on
    them) and no progress bar printed on every load."""
    import logging
    import warnings

    logging.Logger.warning_once.cache_clear()  # transformers logs each deprecation once per process
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    hf_logger = logging.getLogger("transformers")
    hf_logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lm = FrozenLM.from_pretrained(tiny_paths[family], device="cpu")
            prefix = _read(lm, CONTEXTS)
            ids, mask = lm.tokenize(PROMPTS)
            lm.forward(ids, mask, prefix)
            lm.answer_loss(PROMPTS, ["France", "Kado", "contexts"], prefix)
            lm.generate(PROMPTS, prefix, max_new_tokens=2)
            lm.generate(PROMPTS, prefix, max_new_tokens=2, num_beams=2)
    finally:
        hf_logger.removeHandler(handler)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    deprecations += [r.getMessage() for r in records if "deprecat" in r.getMessage().lower()]
    assert deprecations == []
    assert "Loading weights" not in capfd.readouterr().err
