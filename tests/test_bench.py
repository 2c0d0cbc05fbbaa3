"""``mac-memory bench``: the machinery on a tiny in-process model (keys, positive figures, ratios from raw).

The timings themselves are not asserted (they belong to the real run on a quiet machine); what is
asserted is that every measurement runs, reports what the issue asks for, forces equal answer lengths,
and that every ratio is exactly the quotient of the raw figures it names and is judged correctly.
"""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path
from typing import Any

import pytest
import torch

from mac_memory.bench.config import BenchConfig
from mac_memory.errors import ConfigError

TINY = dict(
    models=("tiny",),
    isolation="none",
    embedder="hash",
    reps=2,
    query_reps=2,
    train_reps=2,
    ingest_docs=2,
    query_docs=4,
    doc_tokens=(24, 48),
    new_tokens=3,
    mac_k=3,
    rag_ks=(1, 3),
    scale_sizes=(10, 30),
    scale_real_docs=4,
    scale_queries=2,
    scale_probe_docs=2,
    train_batch=4,
    train_dropouts=(0.75, 0.0),
    profile_top=5,
    fail_fast=True,
    threads=1,
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    from mac_memory.bench.runner import run_bench

    root = tmp_path_factory.mktemp("bench")
    out = root / "out" / "bench.json"
    report = run_bench(BenchConfig(**TINY, workdir=str(root / "work"), out=str(out)))
    return report, out


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ----------------------------------------------------------------------------- the whole run


def test_report_has_machine_config_and_every_measurement(bench):
    report, _ = bench
    machine = report["machine"]
    for key in ("cpu_model", "logical_cores", "usable_cores", "ram_bytes", "torch", "transformers", "device",
                "load_average"):
        assert key in machine, key
    assert machine["device"] == "cpu" and machine["torch"] == torch.__version__
    assert tuple(report["config"]["models"]) == ("tiny",) and report["config"]["reps"] == TINY["reps"]
    tiny = report["models"]["tiny"]
    assert tiny["errors"] == []
    for key in ("info", "prepare", "storage", "ingestion", "query", "scale", "training", "profile", "ratios"):
        assert key in tiny, key
    info = tiny["info"]
    assert info["weights"].startswith("random") and info["base_lm_parameters"] > 0
    assert info["layout"] == {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16}


def test_ingestion_reports_seconds_per_doc_for_all_three_ways(bench):
    report, _ = bench
    ingestion = report["models"]["tiny"]["ingestion"]
    assert set(ingestion) == {"mac", "online_ft", "embedding_only"}
    for variant, r in ingestion.items():
        s = r["seconds_per_doc"]
        assert len(s["raw"]) == TINY["reps"] and all(_positive(v) for v in s["raw"]), variant
        assert s["q1"] <= s["median"] <= s["q3"] and s["iqr"] == pytest.approx(s["q3"] - s["q1"])
        assert r["docs_per_second"] == pytest.approx(1.0 / s["median"])
        assert _positive(r["peak_rss_bytes"]) and r["peak_tensor_bytes"] >= 0, variant
    # The toy embedder uses numpy only, so only MAC and fine-tuning allocate tensors.
    assert _positive(ingestion["mac"]["peak_tensor_bytes"]) and _positive(ingestion["online_ft"]["peak_tensor_bytes"])
    assert _positive(ingestion["online_ft"]["setup_s"])  # copying the LM is reported apart


def test_query_forces_equal_answer_length_and_rag_prompts_grow_with_k(bench):
    report, _ = bench
    query = report["models"]["tiny"]["query"]
    assert set(query) == {"24", "48"}
    for length, methods in query.items():
        assert set(methods) == {"mac", "rag_k1", "rag_k3", "no_memory"}
        for method, r in methods.items():
            assert r["new_tokens"] == [TINY["new_tokens"]], (length, method)
            assert len(r["latency_s"]["raw"]) == TINY["query_reps"]
            assert all(_positive(v) for v in r["latency_s"]["raw"])
            assert _positive(r["peak_rss_bytes"]) and _positive(r["peak_tensor_bytes"])
        assert set(methods["mac"]["phases"]) == {"retrieve_s", "aggregate_s", "generate_s"}
        assert methods["mac"]["candidates"] == TINY["mac_k"]
        # Only the question is in MAC's prompt; RAG writes k documents before it.
        assert methods["mac"]["prompt_tokens"]["median"] == methods["no_memory"]["prompt_tokens"]["median"]
        assert (methods["no_memory"]["prompt_tokens"]["median"] < methods["rag_k1"]["prompt_tokens"]["median"]
                < methods["rag_k3"]["prompt_tokens"]["median"])


def test_storage_bytes_match_the_codec_and_the_kv_layout(bench):
    from mac_memory.memory.codec import encoded_size

    report, _ = bench
    storage = report["models"]["tiny"]["storage"]
    T, d = storage["modulation_shape"]
    assert storage["modulation_bytes_per_record"] == encoded_size((T, d), "float16")
    for length in ("24", "48"):
        r = storage[length]
        assert r["modulation_bytes_per_doc"] == pytest.approx(r["records_per_doc"] * encoded_size((T, d), "float16"))
        assert r["record_bytes_per_doc"] > r["modulation_b64_bytes_per_doc"] > r["modulation_bytes_per_doc"]
        assert r["kv_cache_bytes_first_doc_measured"] == (r["kv_cache_tokens_first_doc"]
                                                          * storage["kv_cache_bytes_per_token"])
        assert r["kv_cache_over_modulation"] == pytest.approx(r["kv_cache_bytes_per_doc"]
                                                              / r["modulation_bytes_per_doc"])
        assert _positive(r["text_bytes_per_doc"]) and _positive(r["chroma_disk_bytes"])


def test_scale_reaches_each_size_and_aggregates_everything(bench):
    report, _ = bench
    scale = report["models"]["tiny"]["scale"]
    assert scale["real_docs"] == TINY["scale_real_docs"] and "inserted_directly" in scale
    assert list(scale["sizes"]) == ["10", "30"]
    for size, r in scale["sizes"].items():
        assert r["records"] == int(size)
        assert len(r["query_s"]["raw"]) == TINY["scale_queries"] and _positive(r["query_s"]["p95"])
        assert r["recall_s"]["median"] < r["query_s"]["median"]  # recall is part of the answer
        agg = r["full_aggregation"]
        assert agg["weights_sum"] == pytest.approx(1.0, abs=1e-4)  # every document's share, hierarchically
        assert _positive(agg["peak_bytes"]) and _positive(agg["seconds"]) and _positive(agg["input_bytes"])
        assert _positive(r["probe_ingest"]["docs_per_second"]) and _positive(r["chroma_disk_bytes_per_record"])
    assert scale["sizes"]["30"]["direct_insert"]["records"] == 30 - 10 - 2 * TINY["scale_probe_docs"]
    for r in scale["sizes"].values():
        assert _positive(r["chroma_query"]["filtered_s"]["median"]) and r["recall_profile"]["python_functions"]


def test_training_compares_backprop_dropout_on_the_same_batch(bench):
    report, _ = bench
    training = report["models"]["tiny"]["training"]
    assert set(training) == {"bpd_0.75", "bpd_0"}
    assert training["bpd_0.75"]["docs_with_grad"] == 1 and training["bpd_0"]["docs_with_grad"] == 4
    for r in training.values():
        assert r["batch"] == TINY["train_batch"] and len(r["step_s"]["raw"]) == TINY["train_reps"]
        assert _positive(r["peak_tensor_bytes"]) and _positive(r["trainable_parameters"])
        # Long documents (the paper trains on news articles); the KV-anchored reader is the frozen LM.
        assert r["doc_tokens"] >= max(TINY["doc_tokens"]) and r["amortizer_backbone_trained"] is False


def test_training_trains_the_encoder_amortizers_backbone_and_leaves_it_frozen_afterwards(tmp_path):
    """The paper's setting (its T5 amortizer is trained): the frozen MiniLM is trained during the
    measurement, and the model the later measurements see is unchanged — frozen, same weights."""
    from mac_memory.bench import training
    from mac_memory.bench.models import BenchContext

    cfg = BenchConfig(**{**TINY, "amortizer": "encoder", "train_reps": 1, "track_tensors": False}).resolve()
    ctx = BenchContext(cfg, "tiny", tmp_path)
    backbone = ctx.mac.amortizer.backbone
    before = {k: v.clone() for k, v in ctx.mac.state_dict().items()}
    assert not any(p.requires_grad for p in backbone.parameters())
    with_grad = training.run(ctx, "bpd_0")
    assert with_grad["amortizer_backbone_trained"] is True
    assert with_grad["trainable_parameters"] > sum(p.numel() for p in backbone.parameters())
    assert not any(p.requires_grad for p in backbone.parameters())
    after = ctx.mac.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    frozen = training.run(BenchContext(BenchConfig(**{**cfg.to_dict(), "train_backbone": False}), "tiny",
                                       tmp_path / "frozen"), "bpd_0")
    assert frozen["amortizer_backbone_trained"] is False
    assert frozen["trainable_parameters"] < with_grad["trainable_parameters"]


def test_training_with_the_lms_activations_recomputed_allocates_less_at_its_peak(tmp_path):
    """``--train-lm-recompute-chunk``: the same step, the frozen LM's activations recomputed a question at
    a time in backward; the report says so and the step's peak tensor memory is lower."""
    from mac_memory.bench import training
    from mac_memory.bench.models import BenchContext

    cfg = BenchConfig(**{**TINY, "train_reps": 1, "train_batch": 8}).resolve()
    plain = training.run(BenchContext(cfg, "tiny", tmp_path / "plain"), "bpd_0.75")
    chunked = training.run(BenchContext(BenchConfig(**{**cfg.to_dict(), "train_lm_recompute_chunk": 1}), "tiny",
                                        tmp_path / "chunked"), "bpd_0.75")
    assert plain["lm_recompute_chunk"] == 0 and chunked["lm_recompute_chunk"] == 1
    assert 0 < chunked["peak_tensor_bytes"] < plain["peak_tensor_bytes"]


def test_profiles_record_top_entries(bench):
    report, _ = bench
    profile = report["models"]["tiny"]["profile"]
    for path in ("ingest", "query"):
        assert 0 < len(profile[path]["torch_ops"]) <= TINY["profile_top"]
        assert 0 < len(profile[path]["python_functions"]) <= TINY["profile_top"]
        assert all(op["self_cpu_ms"] >= 0 and op["calls"] > 0 for op in profile[path]["torch_ops"])


def test_every_ratio_is_the_quotient_of_its_raw_figures(bench):
    from mac_memory.bench.targets import TARGETS

    report, _ = bench
    tiny = report["models"]["tiny"]
    rows = {r["key"]: r for r in tiny["ratios"]}
    assert [t.key for t in TARGETS] == [r["key"] for r in tiny["ratios"][: len(TARGETS)]]

    ing, q = tiny["ingestion"], tiny["query"]["24"]
    expected = {
        "ingest_speedup_vs_online_ft": ing["online_ft"]["seconds_per_doc"]["median"]
        / ing["mac"]["seconds_per_doc"]["median"],
        "ingest_throughput_vs_embedding": ing["embedding_only"]["seconds_per_doc"]["median"]
        / ing["mac"]["seconds_per_doc"]["median"],
        "query_latency_vs_rag": q["mac"]["latency_s"]["median"] / q["rag_k3"]["latency_s"]["median"],
        "query_latency_vs_no_memory": q["mac"]["latency_s"]["median"] / q["no_memory"]["latency_s"]["median"],
        "query_peak_rss_vs_rag": q["mac"]["peak_rss_bytes"] / q["rag_k3"]["peak_rss_bytes"],
        "query_peak_tensor_vs_rag": q["mac"]["peak_tensor_bytes"] / q["rag_k3"]["peak_tensor_bytes"],
        "modulation_bytes_per_doc": tiny["storage"]["24"]["modulation_bytes_per_doc"],
        "scale_query_p50_growth": tiny["scale"]["sizes"]["30"]["query_s"]["median"]
        / tiny["scale"]["sizes"]["10"]["query_s"]["median"],
        "scale_aggregation_peak_growth": tiny["scale"]["sizes"]["30"]["full_aggregation"]["peak_bytes"]
        / tiny["scale"]["sizes"]["10"]["full_aggregation"]["peak_bytes"],
        "train_peak_rss_reduction": tiny["training"]["bpd_0"]["peak_rss_bytes"]
        / tiny["training"]["bpd_0.75"]["peak_rss_bytes"],
        "train_peak_tensor_reduction": tiny["training"]["bpd_0"]["peak_tensor_bytes"]
        / tiny["training"]["bpd_0.75"]["peak_tensor_bytes"],
    }
    for target in TARGETS:
        row = rows[target.key]
        assert row["value"] == pytest.approx(expected[target.key]), target.key
        assert row["met"] == target.met(row["value"]), target.key
        assert row["applies"] is False  # the tiny model is below GPT-2-small and is not the default
    assert rows["query_latency_vs_rag_k1_48"]["value"] == pytest.approx(
        tiny["query"]["48"]["mac"]["latency_s"]["median"] / tiny["query"]["48"]["rag_k1"]["latency_s"]["median"])


def test_report_files_and_table(bench):
    from mac_memory.bench.report import ratio_table

    report, out = bench
    on_disk = json.loads(out.read_text())
    assert on_disk["models"]["tiny"]["ratios"] == json.loads(json.dumps(report["models"]["tiny"]["ratios"]))
    assert out.with_suffix(".md").read_text().startswith("# mac-memory bench")
    for name in ("ingestion", "query", "storage", "scale", "training"):
        png = out.with_name(f"bench-{name}.png")
        assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", name
    table = ratio_table(report)
    assert table.count("\n| tiny |") == len(report["models"]["tiny"]["ratios"])
    assert "online-FT s/doc ÷ MAC s/doc" in table and ("PASS" in table or "FAIL" in table)


# ----------------------------------------------------------------------------- pieces


def test_summarize_keeps_raw_values_and_spread():
    from mac_memory.bench.measure import summarize

    s = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert s["raw"] == [5.0, 1.0, 4.0, 2.0, 3.0] and s["n"] == 5
    assert (s["median"], s["q1"], s["q3"], s["iqr"]) == (3.0, 2.0, 4.0, 2.0)
    assert s["p95"] == pytest.approx(4.8) and (s["min"], s["max"], s["mean"]) == (1.0, 5.0, 3.0)
    assert summarize([2.0])["iqr"] == 0.0


def test_ratios_judge_targets_and_explain_missing_figures():
    from mac_memory.bench.targets import compute_ratios

    cfg = BenchConfig(**TINY).resolve().to_dict()

    def ingestion(ft: float) -> dict[str, Any]:
        return {"ingestion": {"mac": {"seconds_per_doc": {"median": 0.1}},
                              "online_ft": {"seconds_per_doc": {"median": ft}},
                              "embedding_only": {"seconds_per_doc": {"median": 0.08}}},
                "query": {"24": {"mac": {"latency_s": {"median": 1.0}}, "rag_k3": {"skipped": "too long"}}}}

    fast = {r["key"]: r for r in compute_ratios("gpt2-small", ingestion(ft=4.0), cfg)}
    slow = {r["key"]: r for r in compute_ratios("gpt2-small", ingestion(ft=2.0), cfg)}
    assert fast["ingest_speedup_vs_online_ft"]["value"] == pytest.approx(40.0)
    assert fast["ingest_speedup_vs_online_ft"]["met"] is True and fast["ingest_speedup_vs_online_ft"]["applies"]
    assert slow["ingest_speedup_vs_online_ft"]["met"] is False
    assert fast["ingest_throughput_vs_embedding"]["value"] == pytest.approx(0.8)
    assert fast["ingest_throughput_vs_embedding"]["met"] is True
    skipped = fast["query_latency_vs_rag"]
    assert skipped["value"] is None and skipped["met"] is None and "too long" in skipped["note"]
    assert "not measured" in fast["scale_query_p50_growth"]["note"]
    storage = {r["key"]: r for r in compute_ratios("default", {}, cfg)}["modulation_bytes_per_doc"]
    assert storage["applies"] is True and storage["value"] is None


def test_tensor_peak_counts_only_what_the_block_allocates():
    from mac_memory.bench.measure import PeakRSS, TensorPeak

    before = torch.ones(1024, 1024)  # 4 MiB that exist before the block: not counted
    with torch.no_grad(), TensorPeak() as mem:
        a = before * 2  # +4 MiB
        b = a @ a  # +4 MiB
        del a
        c = b.view(-1)  # a view: no new storage
    assert mem.peak == 2 * 4 * 2**20 and c.numel() == 2**20
    rss = PeakRSS().start()
    # 64 MiB of fresh anonymous pages, touched (a bytearray could reuse memory the allocator still holds
    # from earlier tests, and then the resident size would not grow).
    block = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    result = rss.stop()
    assert result["peak_rss_bytes"] >= result["rss_before_bytes"]
    if result["rss_method"].startswith("VmHWM"):
        assert result["peak_rss_delta_bytes"] >= 48 * 2**20
    block.close()


def test_documents_reach_their_length_deterministically():
    from mac_memory.bench.data import make_documents

    def count(text: str) -> int:
        return len(text.split())

    docs = make_documents(5, 60, count, seed=3, tag="t")
    assert docs == make_documents(5, 60, count, seed=3, tag="t")
    assert len({d.text for d in docs}) == 5
    assert all(60 <= d.tokens < 60 + 20 and d.question.endswith("?") and d.answer for d in docs)
    assert make_documents(5, 60, count, seed=4, tag="t") != docs


def test_prompts_beyond_the_context_window_are_skipped_not_truncated(tmp_path):
    from mac_memory.bench import query
    from mac_memory.bench.models import BenchContext

    cfg = BenchConfig(**{**TINY, "doc_tokens": (40,)}).resolve()
    ctx = BenchContext(cfg, "tiny", tmp_path)
    docs = ctx.documents("query", cfg.query_docs, 40)
    limit = ctx.lm.config.max_position_embeddings
    try:
        ctx.lm.config.max_position_embeddings = 3 * max(d.tokens for d in docs)  # k=3 cannot fit, k=1 can
        assert query._does_not_fit(ctx, 40, "rag_k1", docs) is None
        reason = query._does_not_fit(ctx, 40, "rag_k3", docs)
        assert reason is not None and "context window" in reason
        assert query.run(ctx, "40/rag_k3") == {"skipped": reason}
    finally:
        ctx.lm.config.max_position_embeddings = limit


def test_answers_have_the_forced_length_even_when_the_lm_wants_to_stop(tmp_path):
    from mac_memory.bench import query
    from mac_memory.bench.models import BenchContext

    ctx = BenchContext(BenchConfig(**TINY).resolve(), "tiny", tmp_path)
    model = ctx.lm.model
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[ctx.lm.tokenizer.eos_token_id] = 10.0  # EOS is always the most likely next token
    model.lm_head = head
    ids, mask = ctx.lm.tokenize(["Question: Where?\nAnswer:"])
    assert ctx.lm.generate_ids(ids, mask, max_new_tokens=TINY["new_tokens"]).shape[1] == 1  # stops at once
    assert query._generate(ctx, "Question: Where?\nAnswer:", None) == (ids.shape[1], TINY["new_tokens"])


def test_missing_default_is_replaced_by_the_tiny_model_and_said_so(monkeypatch):
    from mac_memory.bench import models

    monkeypatch.setattr(models, "default_available", lambda: (False, "no default trained here"))
    mac, info = models.load_model("default", BenchConfig(**TINY).resolve(), "cpu")
    assert info["substituted"] == "tiny" and info["substitution_reason"] == "no default trained here"
    assert info["name"] == "default" and info["layout"]["num_layers"] == 2 and mac.num_tokens == 4


def test_a_killed_worker_is_reported_as_such():
    from mac_memory.bench.runner import _exit_reason

    assert "out of memory" in _exit_reason(-9) and "SIGKILL" in _exit_reason(-9)
    assert _exit_reason(3) == "worker exited with code 3"


def test_worker_runs_tasks_and_streams_json_lines(tmp_path):
    from mac_memory.bench import worker

    cfg = BenchConfig(**{**TINY, "measurements": ("training",), "train_reps": 1, "track_tensors": False})
    results = tmp_path / "results.jsonl"
    spec = tmp_path / "task.json"
    spec.write_text(json.dumps({"config": cfg.resolve().to_dict(), "model": "tiny",
                                "tasks": [["training", "bpd_0.5"]], "workdir": str(tmp_path / "work"),
                                "results": str(results)}))
    assert worker.main([str(spec)]) == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert "info" in lines[0] and lines[0]["info"]["name"] == "tiny"
    assert lines[1]["measurement"] == "training" and lines[1]["variant"] == "bpd_0.5"
    assert lines[1]["result"]["docs_with_grad"] == 2 and _positive(lines[1]["result"]["step_s"]["median"])


def test_config_resolves_by_mode_and_validates():
    quick, full = BenchConfig(quick=True).resolve(), BenchConfig().resolve()
    assert quick.models == ("default", "gpt2-small") and quick.isolation == "model"
    assert full.models == ("default", "gpt2-small", "llama-1b") and full.isolation == "variant"
    assert full.scale_sizes == (1000, 10000, 100000) and quick.reps < full.reps
    assert BenchConfig(quick=True, reps=7).resolve().reps == 7
    assert BenchConfig(quick=True).models is None  # resolve() returns a copy, never mutates
    for bad in ({"models": ("gpt5",)}, {"isolation": "thread"}, {"scale_sizes": (100, 10)},
                {"train_dropouts": (1.0,)}, {"new_tokens": 0}, {"train_lm_recompute_chunk": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            BenchConfig(**bad)


def test_cli_maps_options_onto_the_config():
    import argparse

    from mac_memory.cli import _commands, add_dataclass_arguments, dataclass_from_args

    assert "bench" in _commands()
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, BenchConfig)
    ns = parser.parse_args(["--quick", "--models", "tiny", "default", "--out", "x.json", "--rag-ks", "2", "4"])
    cfg = dataclass_from_args(BenchConfig, ns)
    assert cfg.quick and cfg.models == ("tiny", "default") and cfg.out == "x.json" and cfg.rag_ks == (2, 4)


@pytest.mark.slow
def test_bench_in_fresh_subprocesses(tmp_path):
    """Every variant in its own process (the full run's isolation): results stream back, stores are shared."""
    from mac_memory.bench.runner import run_bench

    cfg = BenchConfig(**{**TINY, "isolation": "variant", "measurements": ("storage", "training"),
                         "fail_fast": False}, workdir=str(tmp_path / "work"), out=str(tmp_path / "b.json"),
                      plots=False)
    report = run_bench(cfg)
    tiny = report["models"]["tiny"]
    assert tiny["errors"] == [] and tiny["info"]["name"] == "tiny"
    assert _positive(tiny["storage"]["24"]["modulation_bytes_per_doc"])  # read what `prepare` wrote elsewhere
    assert set(tiny["training"]) == {"bpd_0.75", "bpd_0"}
