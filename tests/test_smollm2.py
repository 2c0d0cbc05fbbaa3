"""The engine on real weights: SmolLM2-135M-Instruct (30 layers, GQA 9/3 heads), loaded once from the bundled GGUF.

The tiny in-process models exercise every code path; these tests check that nothing changes on a real
pretrained LM of the size users run: a document's own key/values used as a prefix act like the document
written into the prompt, generation reads the prefix, batching with left padding changes no answer, and a
MAC checkpoint made on it round-trips and refuses another LM.

Tolerances: logits under a prefix vs the document in the prompt differ only by float32 summation order
(different matrix shapes): |Δ| ≤ 2e-3 on logits of magnitude ~20. Greedy tokens can only differ where the
two candidates' logits are that close; the batching test checks exactly that instead of bit equality.
"""

from __future__ import annotations

import json

import pytest
import torch

from mac_memory.errors import BaseModelMismatchError

pytest.importorskip("gguf", reason="the 'lm' extra (gguf, accelerate, peft) is not installed")

DOC = ("Nikola Tesla was born on 10 July 1856 in Smiljan, a village in the Austrian Empire. "
       "He emigrated to the United States in 1884.")
QUESTION = "Question: In which village was Tesla born?\nAnswer:"
LOGIT_ATOL = 2e-3


@pytest.fixture(scope="module")
def smol():
    from mac_memory.base_lms import resolve_base_lm
    from mac_memory.errors import MissingDependencyError
    from mac_memory.frozen_lm import FrozenLM

    try:
        resolve_base_lm("smollm2-135m-instruct")
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    return FrozenLM.from_pretrained("smollm2-135m-instruct", device="cpu")


def _ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_it_is_the_real_smollm2(smol):
    layout = smol.layout
    assert (layout.num_layers, layout.num_kv_heads, layout.head_dim) == (30, 3, 64)
    assert smol.config.num_attention_heads == 9  # grouped-query attention: 9 query heads share 3 key/value heads
    assert 130e6 < sum(p.numel() for p in smol.model.parameters()) < 140e6
    assert not any(p.requires_grad for p in smol.model.parameters())
    source = smol.weights_source()
    assert source["format"] == "gguf" and source["gguf_file"].endswith("Q4_1.gguf")


def test_document_keys_values_as_prefix_give_the_logits_of_the_document_in_the_prompt(smol):
    doc, prompt = _ids(smol, DOC), _ids(smol, "\n" + QUESTION)
    prefix = smol.read(torch.tensor([doc]), torch.ones(1, len(doc), dtype=torch.long))
    ids = torch.tensor([prompt])
    with torch.no_grad():
        under_prefix = smol.forward(ids, torch.ones_like(ids), prefix=prefix).logits[0]
        in_prompt = smol.model(input_ids=torch.tensor([doc + prompt])).logits[0, -len(prompt):]
    torch.testing.assert_close(under_prefix, in_prompt, atol=LOGIT_ATOL, rtol=0)


def test_generation_reads_the_prefix(smol):
    doc = _ids(smol, DOC)
    prefix = smol.read(torch.tensor([doc]), torch.ones(1, len(doc), dtype=torch.long))
    with_doc = smol.generate(["\n" + QUESTION], prefix=prefix, max_new_tokens=8)[0]
    without = smol.generate([QUESTION], max_new_tokens=8)[0]
    assert "Smiljan" in with_doc
    assert "Smiljan" not in without  # the fact came from the prefix, not from what the LM already knew


def test_batched_left_padded_generation_equals_one_by_one(smol):
    prompts = ["Question: What is the capital of France?\nAnswer:",
               "The three primary colours are",
               "Question: Who wrote the play Romeo and Juliet, the tragedy of two young lovers?\nAnswer:"]
    new_tokens = 8
    ids, mask = smol.tokenize(prompts)
    assert not bool(mask.all()), "the prompts must differ in length, so rows are left-padded"
    batched = smol.generate_ids(ids, mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens).tolist()
    for row, prompt in enumerate(prompts):
        one_ids, one_mask = smol.tokenize([prompt])
        out = smol.model.generate(input_ids=one_ids, attention_mask=one_mask, max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False, output_scores=True,
                                  return_dict_in_generate=True, pad_token_id=smol.tokenizer.pad_token_id)
        alone = out.sequences[0, one_ids.shape[1]:].tolist()
        diverged = next((i for i, (a, b) in enumerate(zip(batched[row], alone, strict=True)) if a != b), None)
        if diverged is None:
            continue
        # Only a near tie may flip under another batch shape's float rounding.
        top2 = out.scores[diverged][0].float().topk(2).values
        assert float(top2[0] - top2[1]) < LOGIT_ATOL, (
            f"row {row} diverges at token {diverged}: {batched[row]} vs {alone} (margin {float(top2[0] - top2[1])})")


def test_mac_checkpoint_on_smollm2_round_trips_and_refuses_another_lm(smol, tmp_path):
    from mac_memory.config import AmortizerConfig, BaseLMConfig, MACConfig
    from mac_memory.frozen_lm import FrozenLM
    from mac_memory.model import MACModel

    config = MACConfig(base_lm=BaseLMConfig("smollm2-135m-instruct"),
                       amortizer=AmortizerConfig(kind="kv_anchored", num_tokens=4, d_mem=32))
    torch.manual_seed(0)
    mac = MACModel(config, smol).eval()
    mac.save_pretrained(tmp_path / "ckpt")  # failed on any LM with a tensor over 2**24 elements
    reloaded = MACModel.from_pretrained(tmp_path / "ckpt", lm=smol).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.amortize([DOC]), mac.amortize([DOC]), atol=0, rtol=0)

    # The same weights read from other files are the same LM...
    manifest = json.loads((tmp_path / "ckpt" / "mac_manifest.json").read_text())
    FrozenLM(smol.model, smol.tokenizer, "exported copy").check_identity(manifest["base_lm"])
    # ...but other weights are refused, even when one tensor differs a little.
    _, weight = max(smol.model.named_parameters())  # the last by name: always in the weight signature
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(0.05)
        with pytest.raises(BaseModelMismatchError, match="different weights"):
            MACModel.from_pretrained(tmp_path / "ckpt", lm=smol)
    finally:
        with torch.no_grad():
            weight.copy_(original)
    MACModel.from_pretrained(tmp_path / "ckpt", lm=smol)  # restored: accepted again
