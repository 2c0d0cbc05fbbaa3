"""The MAC networks end to end: shapes for every LM family × amortizer kind, gradients, hierarchical aggregation.

A user would notice failures here as crashes on GQA models, a memory that never learns (no gradient), or
an out-of-memory error / NaN answers when a question has thousands of candidate documents.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import ANSWERS, CAUSAL, DOCS, KINDS, QUESTIONS

from mac_memory.bench.measure import TensorPeak as PeakTensorMemory
from mac_memory.config import AggregatorConfig
from mac_memory.networks.aggregator import AggregationNetwork

D_MEM, T = 32, 4
# Key/value heads the tiny models really have: GQA (llama 4q/2kv) and MQA (qwen2 1kv) are exercised.
EXPECTED_KV_HEADS = {"gpt2": 4, "llama": 2, "qwen2": 1}


def _expected_prefix_shape(config, batch: int, prefix_len: int) -> tuple[int, ...]:
    """``(n_layers, B, n_kv_heads, P, head_dim)`` from the LM's transformers config alone."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (config.num_hidden_layers, batch, kv_heads, prefix_len, head_dim)


# ---------------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("prefix_len", [None, 6], ids=["P=T", "P=6"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", CAUSAL)
def test_shapes_loss_and_generation(make_mac, lms, family, kind, prefix_len):
    """Every family × amortizer kind: memory (N, T, d_mem), prefix in the LM's K/V layout, finite loss, B answers."""
    mac = make_mac(kind, family, prefix_len=prefix_len)
    P = prefix_len or T
    memory = mac.amortize(DOCS)
    assert memory.shape == (len(DOCS), T, D_MEM)
    assert bool(torch.isfinite(memory).all())

    prefix, weights = mac.modulate(QUESTIONS, memory)
    expected = _expected_prefix_shape(lms[family].config, len(QUESTIONS), P)
    assert expected[2] == EXPECTED_KV_HEADS[family]
    assert tuple(prefix.keys.shape) == expected
    assert tuple(prefix.values.shape) == expected
    assert weights.shape == (len(QUESTIONS), len(DOCS))

    loss = mac.loss(QUESTIONS, ANSWERS, memory)
    assert loss.dim() == 0 and math.isfinite(float(loss.detach()))

    answers, gen_weights = mac.generate(QUESTIONS, memory, max_new_tokens=3)
    assert isinstance(answers, list) and len(answers) == len(QUESTIONS)
    assert all(isinstance(a, str) for a in answers)
    torch.testing.assert_close(gen_weights, weights.detach())


def test_per_question_candidates_with_padding(make_mac):
    """Each question may have its own candidate set: (B, N, T, d) memory with a doc mask (padded slots)."""
    mac = make_mac("kv_anchored", "llama")
    memory = mac.amortize(DOCS).detach()
    per_question = torch.stack([memory, memory.flip(0)])  # (2, 3, T, d)
    doc_mask = torch.tensor([[True, True, False], [True, False, False]])
    prefix, weights = mac.modulate(QUESTIONS, per_question, doc_mask)
    assert prefix.keys.shape[1] == 2
    assert torch.equal(weights[~doc_mask], torch.zeros(3))
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    assert bool(torch.isfinite(mac.loss(QUESTIONS, ANSWERS, per_question, doc_mask)))


def test_bfloat16_lm_with_float32_networks(make_mac, frozen_lm):
    """The networks stay float32 while the frozen LM runs in bfloat16: loss, backward and generate work."""
    mac = make_mac("kv_anchored", "llama", lm=frozen_lm("llama", dtype="bfloat16"))
    memory = mac.amortize(DOCS)
    assert memory.dtype == torch.float32
    loss = mac.loss(QUESTIONS, ANSWERS, memory)
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    assert float(mac.amortizer.pool_queries.grad.norm()) > 0
    answers, _ = mac.generate(QUESTIONS, memory.detach(), max_new_tokens=3)
    assert len(answers) == len(QUESTIONS)


# ---------------------------------------------------------------------------------------------- gradients

# Parameters that legitimately get no gradient at initialisation:
# * aggregator.refine.0: the read-out refinement's LayerNorm, behind a zero-initialised Linear (by design);
# * *.backbone.pooler: BERT's pooler, which the encoder amortizer never uses.
NO_GRAD_BY_DESIGN = re.compile(r"^(refine\.0\.|backbone\.pooler\.)")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gradients_reach_every_network_but_never_the_lm(make_mac, lms, family, kind):
    """One training step updates the amortizer, question encoder, aggregator and projector, never the base LM."""
    mac = make_mac(kind, family, prefix_len=6)  # P != T: the projector's token mixing takes part too
    mac.loss(QUESTIONS, ANSWERS, mac.amortize(DOCS)).backward()

    for module_name in ("amortizer", "question_encoder", "aggregator", "projector"):
        params = [(n, p) for n, p in getattr(mac, module_name).named_parameters() if p.requires_grad]
        assert params, f"{module_name} has no trainable parameters"
        norm = math.sqrt(sum(float(p.grad.norm()) ** 2 for _, p in params if p.grad is not None))
        assert norm > 0, f"{module_name}: no gradient at all"
        dead = [
            n
            for n, p in params
            if (p.grad is None or not bool(p.grad.any())) and not NO_GRAD_BY_DESIGN.match(n)
        ]
        assert not dead, f"{module_name}: parameters without gradient: {dead}"

    lm_params = list(lms[family].model.parameters())
    assert lm_params and all(not p.requires_grad and p.grad is None for p in lm_params)
    assert not any(n.startswith(("lm.", "_lm")) for n, _ in mac.named_parameters()), (
        "the LM must not be a submodule"
    )


def test_frozen_backbone_gets_no_gradient(make_mac):
    """``freeze_backbone=True`` trains only the amortizer's queries and heads, not the T5 weights."""
    mac = make_mac("t5", "gpt2", freeze_backbone=True)
    mac.loss(QUESTIONS, ANSWERS, mac.amortize(DOCS)).backward()
    backbone = list(mac.amortizer.backbone.parameters())
    assert all(not p.requires_grad and p.grad is None for p in backbone)
    assert float(mac.amortizer.queries.grad.norm()) > 0


# ---------------------------------------------------------------------------------------------- aggregation


@pytest.fixture(scope="module", params=["token", "slot"])
def aggregator(request) -> AggregationNetwork:
    torch.manual_seed(0)
    config = AggregatorConfig(num_layers=2, num_heads=4, window=4, readout=request.param)
    return AggregationNetwork(config, D_MEM).eval()


def _inputs(batch: int, n_docs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    queries = torch.randn(batch, T, D_MEM, generator=generator)
    memory = torch.randn(batch, n_docs, T, D_MEM, generator=generator)
    return queries, memory


@pytest.mark.parametrize("n_docs", [1, 3, 4])
def test_within_one_window_hierarchical_equals_plain(aggregator, n_docs):
    """N ≤ window: ``aggregate`` is exactly the one-shot forward (no approximation for small candidate sets)."""
    queries, memory = _inputs(2, n_docs)
    doc_mask = torch.ones(2, n_docs, dtype=torch.bool)
    doc_mask[1, 0] = n_docs == 1  # row 1 has a padded candidate whenever it can
    with torch.no_grad():
        plain = aggregator(queries, memory, doc_mask)
        windowed = aggregator.aggregate(queries, memory, doc_mask, window=4)
    assert torch.equal(windowed.tokens, plain.tokens)
    assert torch.equal(windowed.weights, plain.weights)


def test_mac_aggregate_within_window_equals_plain_forward(make_mac):
    """Through MACModel too: a window at least N leaves the aggregation unchanged."""
    mac = make_mac("kv_anchored", "qwen2", window=4)
    with torch.no_grad():
        memory = mac.amortize(DOCS)
        queries = mac.encode_questions(QUESTIONS)
        plain = mac.aggregator(queries, memory.expand(len(QUESTIONS), -1, -1, -1))
        windowed = mac.aggregate(QUESTIONS, memory, window=8)
    assert torch.equal(windowed.tokens, plain.tokens)
    assert torch.equal(windowed.weights, plain.weights)


def test_slot_readout_passes_one_document_through_and_mixes_slot_by_slot():
    """readout='slot': one candidate comes out exactly as stored; with several, merged token t is a convex
    mix of the candidates' tokens t only (so it stays in the span of those tokens)."""
    torch.manual_seed(0)
    net = AggregationNetwork(AggregatorConfig(num_layers=2, num_heads=4, window=4, readout="slot"), D_MEM).eval()
    queries, memory = _inputs(2, 1, seed=11)
    with torch.no_grad():
        out = net(queries, memory)
    assert torch.equal(out.tokens, memory[:, 0]) and torch.equal(out.weights, torch.ones(2, 1))
    queries, memory = _inputs(1, 3, seed=12)
    memory[0, :, 1] = memory[0, 0, 1]  # slot 1 identical in every candidate: it must come out unchanged
    with torch.no_grad():
        out = net(queries, memory)
    torch.testing.assert_close(out.tokens[0, 1], memory[0, 0, 1])
    assert not torch.allclose(out.tokens[0, 0], memory[0, 0, 1], atol=1e-3)


def test_readout_is_checked_and_old_configs_read_as_token():
    with pytest.raises(Exception, match="readout"):
        AggregatorConfig(readout="mean")
    assert AggregatorConfig.from_dict({"num_layers": 2}).readout == "token"


def _padded_mask(batch: int, n_docs: int, seed: int) -> torch.Tensor:
    """Random padding, every row keeping at least one real candidate."""
    mask = torch.rand(batch, n_docs, generator=torch.Generator().manual_seed(seed)) > 0.3
    mask[:, 0] = True
    return mask


@pytest.mark.parametrize("n_docs", [5, 9, 17, 70])
def test_beyond_window_weights_form_a_distribution(aggregator, n_docs):
    """N > window: finite tokens; weights ≥ 0, summing to 1 per question; padded candidates get exactly 0."""
    queries, memory = _inputs(3, n_docs, seed=n_docs)
    doc_mask = _padded_mask(3, n_docs, seed=n_docs)
    doc_mask[2] = True  # one row without padding
    with torch.no_grad():
        out = aggregator.aggregate(queries, memory, doc_mask, window=4)
    assert out.tokens.shape == (3, T, D_MEM) and bool(torch.isfinite(out.tokens).all())
    assert out.weights.shape == (3, n_docs) and bool(torch.isfinite(out.weights).all())
    assert bool((out.weights >= 0).all())
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert torch.equal(out.weights[~doc_mask], torch.zeros(int((~doc_mask).sum())))
    assert bool((out.weights[doc_mask] > 0).all())  # softmax shares: every real candidate counts a little


def test_padded_memory_content_does_not_leak(aggregator):
    """What sits in padded candidate slots (garbage, huge values) changes nothing for the real candidates."""
    queries, memory = _inputs(2, 11, seed=3)
    doc_mask = _padded_mask(2, 11, seed=3)
    noisy = memory.clone()
    noisy[~doc_mask] = 1e4 * torch.randn(int((~doc_mask).sum()), T, D_MEM)
    with torch.no_grad():
        a = aggregator.aggregate(queries, memory, doc_mask, window=4)
        b = aggregator.aggregate(queries, noisy, doc_mask, window=4)
    torch.testing.assert_close(a.tokens, b.tokens)
    torch.testing.assert_close(a.weights, b.weights)


@pytest.mark.parametrize(
    "masked",
    [slice(4, 8), slice(0, 4), slice(8, 12), slice(0, 11)],
    ids=["middle-window", "first-window", "last-window", "all-but-last-doc"],
)
def test_window_with_no_real_candidate_gives_no_nan(aggregator, masked):
    """A question whose candidates in one whole window are all padding still gets finite tokens and weights."""
    queries, memory = _inputs(2, 12, seed=5)
    doc_mask = torch.ones(2, 12, dtype=torch.bool)
    doc_mask[0, masked] = False
    with torch.no_grad():
        out = aggregator.aggregate(queries, memory, doc_mask, window=4)
    assert bool(torch.isfinite(out.tokens).all()) and bool(torch.isfinite(out.weights).all())
    assert torch.equal(out.weights[0, masked], torch.zeros(len(range(12)[masked])))
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(2), atol=1e-5, rtol=0)


def test_hierarchical_aggregation_is_differentiable(aggregator):
    """Gradients flow through the window tree to every real candidate's memory."""
    queries, memory = _inputs(2, 10, seed=7)
    memory.requires_grad_(True)
    out = aggregator.aggregate(queries, memory, window=4)
    (out.tokens.square().sum() + out.weights[:, :3].sum()).backward()
    assert memory.grad is not None and bool(torch.isfinite(memory.grad).all())
    assert bool((memory.grad.flatten(2).norm(dim=2) > 0).all())


# ---------------------------------------------------------------------------------------------- peak memory


def test_memory_tracker_counts_allocations_not_views():
    """Sanity check of the measuring tool itself: new storages count until freed, views and in-place ops do not."""
    base = torch.zeros(1000)  # allocated outside: never counted
    with torch.no_grad(), PeakTensorMemory() as mem:
        view = base.view(10, 100)
        base.add_(1)
        tmp = base + 1  # 4000 B
        keep = torch.ones(500)  # 2000 B -> 6000 B live
        del tmp  # back to 2000 B
        more = keep * 2  # 4000 B live
    assert (mem.peak, mem.live) == (6000, 4000)
    del view, keep, more
    assert mem.live == 0


def _peak_bytes(agg: AggregationNetwork, queries, memory, doc_mask, window: int | None) -> int:
    with torch.no_grad(), PeakTensorMemory() as mem:
        if window is None:
            agg(queries, memory, doc_mask)
        else:
            agg.aggregate(queries, memory, doc_mask, window=window)
    return mem.peak


@pytest.fixture(scope="module")
def peak_setup():
    """Aggregator (window 16) and the measured peak for 16 candidates; inputs are built before measuring."""
    torch.manual_seed(0)
    agg = AggregationNetwork(AggregatorConfig(num_layers=2, num_heads=4, window=16), D_MEM).eval()
    queries, memory = _inputs(2, 16, seed=11)
    peak16 = _peak_bytes(agg, queries, memory, torch.ones(2, 16, dtype=torch.bool), window=16)
    queries, memory = _inputs(2, 4096, seed=12)
    return agg, queries, memory, torch.ones(2, 4096, dtype=torch.bool), peak16


def test_plain_forward_on_many_candidates_would_need_much_more_memory(peak_setup):
    """The control: attending over 4096 candidates at once needs > 10x the memory of one window of 16."""
    agg, queries, memory, doc_mask, peak16 = peak_setup
    assert _peak_bytes(agg, queries, memory, doc_mask, window=None) > 10 * peak16


def test_hierarchical_peak_memory_is_bounded_by_the_window(peak_setup):
    """4096 candidates aggregated 16 at a time need about the memory of one window of 16.

    Allowed on top of 1.5 x peak(16): the (B, N) float32 per-document weights are the *result* and are
    O(N) by definition; while the last merge assembles them, the result and the scaled per-entry pieces
    it is made of are alive together, so 2 x B x N x 4 bytes. Anything that keeps O(N)-sized tensors per
    window, per level or per tree node (or attends over all N at once) exceeds this by an order of magnitude.
    """
    agg, queries, memory, doc_mask, peak16 = peak_setup
    batch, n_docs = doc_mask.shape
    allowance = 2 * batch * n_docs * 4
    peak4096 = _peak_bytes(agg, queries, memory, doc_mask, window=16)
    assert peak4096 <= 1.5 * peak16 + allowance, (
        f"peak(4096)={peak4096} B vs peak(16)={peak16} B (bound {1.5 * peak16 + allowance:.0f} B)"
    )


def test_without_weights_the_peak_grows_only_with_the_trees_depth(peak_setup):
    """with_weights=False: the same merged tokens, no per-document weights, and from 256 to 4096 candidates
    (16x, one more level of the 16-ary tree) the peak grows by at most that level's pending entries
    (up to a window of (B, T, d_mem) float32 entries, plus their stacked copy while they merge) — not by
    anything proportional to N (with weights it grows by 2 x B x N x 4 bytes)."""
    agg, queries, memory, doc_mask, _ = peak_setup
    with torch.no_grad():
        full = agg.aggregate(queries, memory, doc_mask, window=16)
        light = agg.aggregate(queries, memory, doc_mask, window=16, with_weights=False)
    assert light.weights is None and torch.allclose(full.tokens, light.tokens, atol=1e-6)
    small_q, small_m = _inputs(2, 256, seed=13)
    with torch.no_grad(), PeakTensorMemory() as mem256:
        agg.aggregate(small_q, small_m, torch.ones(2, 256, dtype=torch.bool), window=16, with_weights=False)
    with torch.no_grad(), PeakTensorMemory() as mem4096:
        agg.aggregate(queries, memory, doc_mask, window=16, with_weights=False)
    level = 2 * 16 * queries.shape[0] * T * D_MEM * 4
    assert mem4096.peak <= mem256.peak + level, (mem4096.peak, mem256.peak, level)
    with torch.no_grad(), PeakTensorMemory() as weighted:
        agg.aggregate(queries, memory, doc_mask, window=16)
    assert weighted.peak > mem4096.peak + queries.shape[0] * 4096 * 2  # the control: (B, N) float32 weights


def test_without_a_mask_or_weights_no_single_allocation_grows_with_n():
    """``doc_mask=None`` means every document counts: the masks are made a window at a time, so nothing of
    N entries is allocated (a (B, N) bool mask was: 1 byte per document and question, 1 MB per question
    over a million documents)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Largest(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.bytes = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and func not in (torch.ops.aten.slice.Tensor, torch.ops.aten.view.default):
                    self.bytes = max(self.bytes, t.numel() * t.element_size())
            return out

    torch.manual_seed(0)
    agg = AggregationNetwork(AggregatorConfig(num_layers=1, num_heads=2, window=16), D_MEM).eval()
    n_docs = 20_000
    queries, memory = _inputs(1, n_docs, seed=14)
    with torch.no_grad(), Largest() as largest:
        out = agg.aggregate(queries, memory, None, window=16, with_weights=False)
    assert out.tokens.shape == (1, T, D_MEM) and out.weights is None
    assert largest.bytes < n_docs, f"an allocation of {largest.bytes} B for {n_docs} documents"
    with torch.no_grad():  # the same result as with an explicit all-True mask
        masked = agg.aggregate(queries, memory, torch.ones(1, n_docs, dtype=torch.bool), window=16, with_weights=False)
    torch.testing.assert_close(out.tokens, masked.tokens)
