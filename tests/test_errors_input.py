"""Bad inputs get errors a user can act on: the right type, and a message that says which item is wrong.

Without these a user sees an empty document silently stored as noise, a tokenizer stack trace for a
``None`` in a list of 10 000 documents, or NaNs from a question with no candidate documents.
"""

from __future__ import annotations

import pytest
import torch
from helpers import ANSWERS, DOCS, KINDS, QUESTIONS

from mac_memory.errors import EmptyInputError, MACError
from mac_memory.prefix import PrefixKV


@pytest.fixture(scope="module")
def macs(make_mac):
    """One small model per amortizer kind (on tiny gpt2), shared by the tests of this module."""
    return {kind: make_mac(kind, "gpt2") for kind in KINDS}


@pytest.fixture(scope="module")
def memory(macs):
    with torch.no_grad():
        return {kind: mac.amortize(DOCS) for kind, mac in macs.items()}


# (documents, error type, words the message must contain)
BAD_DOCUMENTS = [
    pytest.param([""], EmptyInputError, ["document 0", "empty"], id="empty"),
    pytest.param(["fine", " \n\t "], EmptyInputError, ["document 1", "whitespace"], id="whitespace-second"),
    pytest.param([], EmptyInputError, ["empty list", "document"], id="no-documents"),
    pytest.param("one document as a bare str", TypeError, ["single str", "list"], id="bare-str"),
    pytest.param(["fine", None], TypeError, ["document 1", "NoneType"], id="none-second"),
    pytest.param(["fine", "fine", b"bytes"], TypeError, ["document 2", "bytes"], id="bytes-third"),
    pytest.param(["fine", 42], TypeError, ["document 1", "int"], id="int-second"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("documents", "error", "words"), BAD_DOCUMENTS)
def test_bad_documents_are_refused_naming_the_position(macs, kind, documents, error, words):
    """``amortize`` refuses empty/whitespace/non-str documents before any work, naming the document's index."""
    with pytest.raises(error) as info:
        macs[kind].amortize(documents)
    for word in words:
        assert word in str(info.value), str(info.value)


BAD_QUESTIONS = [
    pytest.param(["   "], EmptyInputError, ["question 0"], id="whitespace"),
    pytest.param(["Where is Paris?", ""], EmptyInputError, ["question 1"], id="empty-second"),
    pytest.param(["Where is Paris?", 7], TypeError, ["question 1", "int"], id="int-second"),
    pytest.param("Where is Paris?", TypeError, ["single str"], id="bare-str"),
]


@pytest.mark.parametrize("step", ["aggregate", "modulate", "generate", "loss"])
@pytest.mark.parametrize(("questions", "error", "words"), BAD_QUESTIONS)
def test_bad_questions_are_refused_naming_the_position(macs, memory, step, questions, error, words):
    """Every entry point that takes questions refuses bad ones with the question's index in the message."""
    mac, mem = macs["kv_anchored"], memory["kv_anchored"]
    call = {
        "aggregate": lambda: mac.aggregate(questions, mem),
        "modulate": lambda: mac.modulate(questions, mem),
        "generate": lambda: mac.generate(questions, mem, max_new_tokens=2),
        "loss": lambda: mac.loss(questions, ["x"] * len(questions), mem),
    }[step]
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("texts", "error", "words"),
    [
        pytest.param([""], EmptyInputError, ["text 0"], id="empty"),
        pytest.param(["ok", "\n"], EmptyInputError, ["text 1"], id="newline-only"),
        pytest.param(["ok", None], TypeError, ["text 1", "NoneType"], id="none"),
    ],
)
def test_frozen_lm_refuses_bad_texts(lms, texts, error, words):
    """The frozen LM's own entry points (read, generate) refuse empty and non-str texts too."""
    lm = lms["llama"]
    for call in (lambda: lm.tokenize(texts), lambda: lm.generate(texts, max_new_tokens=1)):
        with pytest.raises(error) as info:
            call()
        for word in words:
            assert word in str(info.value)


def test_empty_input_errors_are_value_errors(macs):
    """``except ValueError`` in user code keeps catching the library's specific errors."""
    with pytest.raises(ValueError):
        macs["t5"].amortize(["   "])
    assert issubclass(EmptyInputError, MACError)


def test_question_and_answer_counts_must_match(macs, memory):
    with pytest.raises(ValueError, match="2 questions but 1 answers"):
        macs["kv_anchored"].loss(QUESTIONS, ANSWERS[:1], memory["kv_anchored"])


@pytest.mark.parametrize(
    "shape",
    [(4, 32), (3, 3, 4, 32), (1, 2, 3, 4, 32)],
    ids=["2d", "batch-3-for-2-questions", "5d"],
)
def test_memory_of_the_wrong_shape_is_refused(macs, shape):
    """Memory must be (N, T, d) shared by all questions or (B, N, T, d) per question; the error shows both."""
    with pytest.raises(ValueError) as info:
        macs["kv_anchored"].modulate(QUESTIONS, torch.zeros(shape))
    assert "(N, T, d_mem)" in str(info.value) and str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize(
    "window", [None, 2], ids=["one-window", "hierarchical"]
)
def test_question_without_any_candidate_is_refused(macs, memory, window):
    """A question whose candidates are all padding cannot be answered from memory: ValueError, not NaN."""
    mac, mem = macs["kv_anchored"], memory["kv_anchored"]
    doc_mask = torch.tensor([[True, False, True], [False, False, False]])
    with pytest.raises(ValueError, match="at least one candidate"):
        mac.modulate(QUESTIONS, mem, doc_mask, window=window)


def test_t5_kind_with_an_encoder_only_backbone_is_refused(make_mac, tiny_paths):
    """Choosing ``kind='t5'`` with a BERT backbone fails at construction with a message naming the backbone."""
    with pytest.raises(ValueError, match="encoder-decoder"):
        make_mac("t5", "gpt2", backbone=str(tiny_paths["bert"]))


@pytest.mark.parametrize(
    ("build", "words"),
    [
        pytest.param(
            lambda: PrefixKV(torch.zeros(2, 1, 4, 3, 16), torch.zeros(2, 1, 4, 3, 8)),
            ["keys/values"],
            id="keys-values-differ",
        ),
        pytest.param(
            lambda: PrefixKV(torch.zeros(2, 4, 3, 16), torch.zeros(2, 4, 3, 16)), ["n_layers, B"], id="4d"
        ),
        pytest.param(
            lambda: PrefixKV(torch.zeros(2, 1, 4, 3, 16), torch.zeros(2, 1, 4, 3, 16), torch.ones(1, 4)),
            ["mask", "(1, 3)"],
            id="mask-length",
        ),
        pytest.param(
            lambda: PrefixKV(torch.zeros(2, 2, 4, 3, 16), torch.zeros(2, 2, 4, 3, 16)).expand(3),
            ["batch 2 to 3"],
            id="expand-batch-2",
        ),
    ],
)
def test_malformed_prefix_is_refused(build, words):
    """Hand-built prefixes of the wrong layout fail where they are made, not deep inside attention."""
    with pytest.raises(ValueError) as info:
        build()
    for word in words:
        assert word in str(info.value)
