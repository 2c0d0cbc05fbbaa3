"""Training commands on tiny models: losses go down, checkpoints load, resume continues exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mac_memory.cli import main
from mac_memory.frozen_lm import FrozenLM
from mac_memory.model import MACModel
from mac_memory.tiny_models import save_tiny
from mac_memory.training.base_lm import BaseTrainConfig, train_base
from mac_memory.training.meta import MetaTrainConfig, amortize_with_dropout, train_mac


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("lm") / "tiny-llama")


def _meta_cfg(base: Path, out: Path, **kw) -> MetaTrainConfig:
    defaults = dict(base_lm=str(base), out=str(out), world_entities=60, num_tokens=4, d_mem=32, agg_layers=1,
                    agg_heads=4, window=4, steps=40, batch_size=8, eval_every=20, eval_questions=8, lr=3e-3,
                    warmup=5, seed=0)
    defaults.update(kw)
    return MetaTrainConfig(**defaults)


def test_train_base_from_scratch_lowers_loss_and_writes_a_loadable_lm(tmp_path):
    cfg = BaseTrainConfig(out=str(tmp_path / "base"), world_entities=30, vocab_size=300, hidden_size=32,
                          num_layers=1, num_heads=2, num_kv_heads=1, steps=12, batch_size=4, eval_every=6,
                          warmup=2, max_length=128)
    final = train_base(cfg)
    log = _log(tmp_path / "base" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 13))
    assert sum(r["loss"] for r in log[-3:]) < sum(r["loss"] for r in log[:3])
    assert {"rag_gold_f1", "no_memory_f1"} <= set(log[5])
    # Per kind of fact, and every kind gets asked (not only each document's first two questions).
    kinds = {k: v for k, v in log[5].items() if k.startswith("rag_gold_f1/")}
    assert len(kinds) >= 3 and all(0.0 <= v <= 100.0 for v in kinds.values()), kinds
    lm = FrozenLM.from_pretrained(final, device="cpu")  # the real loading path reads it back
    assert lm.layout.num_layers == 1 and lm.layout.num_kv_heads == 1


def test_meta_training_lowers_answer_loss(tiny_lm_dir, tmp_path):
    final = train_mac(_meta_cfg(tiny_lm_dir, tmp_path / "run", backprop_dropout=0.5))
    losses = [r["loss"] for r in _log(tmp_path / "run" / "log.jsonl")]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.05, (first, last)
    mac = MACModel.from_pretrained(final)
    assert mac.config.amortizer.num_tokens == 4
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_resume_continues_from_the_same_step_and_matches_an_uninterrupted_run(tiny_lm_dir, tmp_path):
    straight = train_mac(_meta_cfg(tiny_lm_dir, tmp_path / "a", steps=10, eval_every=5))
    interrupted = tmp_path / "b"
    train_mac(_meta_cfg(tiny_lm_dir, interrupted, steps=10, eval_every=5))
    # Simulate a crash right after the step-5 checkpoint: drop everything written later.
    shutil.rmtree(interrupted / "step-10")
    shutil.rmtree(interrupted / "final")
    log = _log(interrupted / "log.jsonl")[:5]
    (interrupted / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    resumed = train_mac(_meta_cfg(tiny_lm_dir, interrupted, steps=10, eval_every=5, resume=True))
    steps = [r["step"] for r in _log(interrupted / "log.jsonl")]
    assert steps == list(range(1, 11))
    a, b = MACModel.from_pretrained(straight), MACModel.from_pretrained(resumed)
    assert a.fingerprint() == b.fingerprint()


def test_backprop_dropout_keeps_gradients_for_the_requested_share(tiny_lm_dir):
    import torch

    from mac_memory.config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig

    lm = FrozenLM.from_pretrained(tiny_lm_dir, device="cpu")
    mac = MACModel(MACConfig(base_lm=BaseLMConfig(str(tiny_lm_dir)),
                             amortizer=AmortizerConfig(num_tokens=4, d_mem=32),
                             aggregator=AggregatorConfig(num_layers=1, num_heads=4)), lm)
    docs = [f"Document number {i} talks about Ostravel." for i in range(8)]
    torch.manual_seed(0)
    memory = amortize_with_dropout(mac, docs, dropout=0.75)
    assert memory.shape == (8, 4, 32) and memory.requires_grad
    grads = torch.autograd.grad(memory.sum(), mac.amortizer.pool_queries, retain_graph=True)[0]
    assert grads.abs().sum() > 0
    # Exactly 2 of 8 rows are differentiable: the other rows' gradient w.r.t. the memory is cut.
    per_row = [torch.autograd.grad(memory[i].sum(), mac.amortizer.pool_queries, retain_graph=True,
                                   allow_unused=True)[0] for i in range(8)]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in per_row) == 2
    with torch.no_grad():
        plain = mac.amortize(docs)
    assert torch.allclose(memory.detach(), plain, atol=1e-6)  # dropout changes gradients, never values


def test_recomputing_the_lms_activations_trains_the_same_networks(tiny_lm_dir, tmp_path):
    """``--lm-recompute-chunk`` saves memory only: the same run gives the same loss curve (batch 8 in chunks
    of 3, 3 and 2 questions) and networks that answer alike."""
    runs = {chunk: train_mac(_meta_cfg(tiny_lm_dir, tmp_path / f"chunk{chunk}", steps=6, eval_every=6,
                                       backprop_dropout=0.5, lm_recompute_chunk=chunk)) for chunk in (0, 3)}
    curves = {chunk: [r["loss"] for r in _log(tmp_path / f"chunk{chunk}" / "log.jsonl")] for chunk in runs}
    assert len(curves[0]) == 6
    assert curves[3] == pytest.approx(curves[0], rel=1e-4, abs=1e-5)
    a, b = (MACModel.from_pretrained(runs[c]) for c in (0, 3))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3, msg=name)


def test_cli_train_command(tiny_lm_dir, tmp_path):
    code = main(["train", "--base-lm", str(tiny_lm_dir), "--out", str(tmp_path / "cli"), "--world-entities", "40",
                 "--num-tokens", "4", "--d-mem", "32", "--agg-layers", "1", "--agg-heads", "4", "--window", "4",
                 "--steps", "3", "--batch-size", "4", "--eval-every", "3", "--eval-questions", "4",
                 "--memory", "gold"])
    assert code == 0
    assert (tmp_path / "cli" / "final" / "mac_manifest.json").is_file()


def test_bad_training_options_are_refused():
    from mac_memory.errors import ConfigError

    with pytest.raises(ConfigError, match="memory"):
        MetaTrainConfig(memory="everything")
    with pytest.raises(ConfigError, match="backprop_dropout"):
        MetaTrainConfig(backprop_dropout=1.0)
    with pytest.raises(ConfigError, match="lm_recompute_chunk"):
        MetaTrainConfig(lm_recompute_chunk=-2)


def test_default_recipe_trains_both_rungs_and_packages_a_float16_copy_that_loads(tmp_path, monkeypatch):
    """train-default's base phases, MAC rungs (gold, gold twice more, then batch) and the float16 copy shipped in the package."""
    from dataclasses import replace

    from safetensors import safe_open

    from mac_memory.training import default

    base = BaseTrainConfig(world_entities=30, vocab_size=300, hidden_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1, steps=4, batch_size=4, eval_every=4, warmup=1, max_length=128)
    rung = _meta_cfg("unused", "unused", steps=3, eval_every=3, batch_size=4)
    calibration = default.CalibrateConfig(world_entities=30, k=2, temperatures=(0.02,), max_questions=6, threads=1)
    gold = replace(rung, memory="gold")
    recipe = default.DefaultRecipe(base=base, base_continue=(replace(base, steps=6, lr=5e-4),
                                                             replace(base, steps=7, lr=2e-4)),
                                   mac_gold=gold, mac_gold_continue=(replace(gold, steps=2, seed=1),
                                                                               replace(gold, steps=2, seed=2)),
                                   mac=rung,
                                   calibration=calibration)
    paths = default.train_default(recipe, tmp_path / "cache")
    base_log = [json.loads(line) for line in (tmp_path / "cache" / "base-run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in base_log if "loss" in r] == [1, 2, 3, 4, 5, 6, 7]  # phases 2, 3 resumed
    assert (tmp_path / "cache" / "mac-gold-run" / "final" / "mac_manifest.json").is_file()
    gold2_cfg = json.loads((tmp_path / "cache" / "mac-gold2-run" / "train_config.json").read_text())
    assert gold2_cfg["init"].endswith("mac-gold-run/final") and gold2_cfg["seed"] == 1
    gold3_cfg = json.loads((tmp_path / "cache" / "mac-gold3-run" / "train_config.json").read_text())
    assert gold3_cfg["init"].endswith("mac-gold2-run/final") and gold3_cfg["seed"] == 2
    batch_cfg = json.loads((tmp_path / "cache" / "mac-run" / "train_config.json").read_text())
    assert batch_cfg["init"].endswith("mac-gold3-run/final") and batch_cfg["memory"] == "batch"
    sweep = json.loads((tmp_path / "cache" / "mac-run" / "final" / "calibration.json").read_text())
    assert [row["temperature"] for row in sweep["sweep"]] == [None, 0.02]  # calibrated last, on val

    packaged = default.package_default(paths, tmp_path / "assets")
    with safe_open(str(packaged.checkpoint / "mac_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    with safe_open(str(packaged.base_lm / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    monkeypatch.delenv("MAC_MEMORY_CHECKPOINT", raising=False)
    monkeypatch.setattr(default, "PACKAGED", tmp_path / "assets")
    assert default.default_paths() == packaged  # the packaged copy comes first
    mac = default.load_default(device="cpu")  # float32 LM from float16 weights passes the identity check
    trained = default.load_default(device="cpu", paths=paths)
    assert mac.config.aggregator.retrieval_temperature == sweep["chosen"]  # shipped with the checkpoint
    for (name, a), (_, b) in zip(sorted(mac.state_dict().items()), sorted(trained.state_dict().items())):
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-2), name


def test_fresh_documents_join_the_batches_without_changing_world_only_runs():
    """fresh_fraction mixes never-repeated people written with other worlds' cities into each batch."""
    import random

    from mac_memory.data import WorldConfig, generate_world
    from mac_memory.errors import ConfigError
    from mac_memory.training.meta import FRESH_SEED, DocumentSampler

    world = generate_world(WorldConfig(seed=0, n_entities=60))["train"]
    plain = DocumentSampler(world, MetaTrainConfig(), random.Random(3), stream=0)
    assert [d.doc_id for d in plain.sample(8)] == [d.doc_id for d in random.Random(3).sample(world, k=8)]

    mixed = DocumentSampler(world, MetaTrainConfig(fresh_fraction=0.5, fresh_vocabularies=4), random.Random(3),
                            stream=0)
    batches = [mixed.sample(16) for _ in range(20)]
    ids = [d.doc_id for batch in batches for d in batch]
    fresh = [i for i in ids if "fresh" in i]
    assert all(len(batch) == 16 for batch in batches)
    assert 0.35 < len(fresh) / len(ids) < 0.65
    assert len(set(fresh)) == len(fresh)  # never the same fresh person twice
    assert {i.split("-")[1] for i in fresh} == {str(FRESH_SEED + j) for j in range(4)}
    assert all(d.qas and all(a in d.context for qa in d.qas for a in qa.answers) for b in batches for d in b)

    with pytest.raises(ConfigError, match="fresh_fraction"):
        MetaTrainConfig(fresh_fraction=1.5)
    with pytest.raises(ConfigError, match="synthetic world"):
        MetaTrainConfig(fresh_fraction=0.5, train_file="mine.jsonl")
    with pytest.raises(ConfigError, match="fresh_vocabularies"):
        MetaTrainConfig(fresh_vocabularies=0)


def test_own_training_file_reads_its_own_documents(tmp_path):
    """With --train-file, reading examples are that stream's documents + questions, not synthetic people."""
    from mac_memory.data import Document, write_stream
    from mac_memory.data.stream import QA
    from mac_memory.errors import DataFormatError
    from mac_memory.training.base_lm import example_stream

    docs = [Document(f"d{i}", f"The tower of Lumen number {i} is {i * 7} metres tall.",
                     (QA(f"q{i}", f"How tall is the tower of Lumen number {i}?", (f"{i * 7} metres",)),))
            for i in range(5)]
    write_stream(tmp_path / "mine.jsonl", docs)
    cfg = BaseTrainConfig(train_file=str(tmp_path / "mine.jsonl"), reading_fraction=1.0, qa_fraction=0.0)
    stream = example_stream(cfg, docs, fresh_seed=0)
    for text, answers in (next(stream) for _ in range(20)):
        assert "tower of Lumen" in text and answers and answers[0].endswith("metres")
    with pytest.raises(DataFormatError, match="nothing to read"):
        next(example_stream(cfg, [Document("e", "No questions here.", ())], fresh_seed=0))


def test_reading_examples_too_long_for_max_length_keep_their_answers_instead_of_losing_them():
    """A reading example longer than max_length used to be cut at the end, answers and all: now its last
    questions go first, then the document is cut to whole sentences around the answer; what fits stays."""
    from mac_memory.data import Document
    from mac_memory.data.stream import QA
    from mac_memory.errors import DataFormatError
    from mac_memory.prompts import format_with_documents
    from mac_memory.tiny_models import build_tokenizer
    from mac_memory.training.base_lm import _batch, example_stream

    tokenizer = build_tokenizer()
    filler = [f"Report {k} says the rain in the valley was heavier than the year before." for k in range(10)]
    docs = [Document(f"d{i}", " ".join([*filler[:5], f"The tower of Lumen {i} is {100 + i} metres tall.", *filler[5:],
                                        f"Its architect was Ada Vell {i}."]),
                     (QA(f"h{i}", f"How tall is the tower of Lumen {i}?", (f"{100 + i} metres",)),
                      QA(f"a{i}", f"Who designed the tower of Lumen {i}?", (f"Ada Vell {i}",))))
            for i in range(4)]
    max_length = 64

    def length(text: str) -> int:
        return len(tokenizer(text + tokenizer.eos_token)["input_ids"])

    assert all(length(d.context) > max_length for d in docs)  # the whole document alone is too long
    cfg = BaseTrainConfig(train_file="mine.jsonl", reading_fraction=1.0, qa_fraction=0.0, reading_questions=2,
                          max_length=max_length)
    stream = example_stream(cfg, docs, fresh_seed=0, fits=lambda t: length(t) <= max_length)
    for text, answers in (next(stream) for _ in range(12)):
        context = text.split("\n\nQuestion:")[0]
        doc = next(d for d in docs if context in d.context)  # a run of the document's own sentences
        assert answers and all(f"Answer: {a}" in text for a in answers)
        assert answers[0] in context and context.endswith(".") and length(context) < length(doc.context)
        ids, mask, weights = _batch(tokenizer, [(text, answers)], max_length, answer_weight=4.0)
        assert int(mask.sum()) == length(text) <= max_length  # nothing truncated...
        assert ids[0, int(mask.sum()) - 1] == tokenizer.eos_token_id and (weights == 4.0).sum() > 0  # answers weighted

    # A document that fits with one question but not with two keeps the whole document and one question.
    medium = [Document("m", " ".join([*filler[:2], "The tower of Lumen is 120 metres tall.", "Its architect was Ada Vell."]),
                       (QA("h", "How tall is the tower of Lumen?", ("120 metres",)),
                        QA("a", "Who designed the tower of Lumen?", ("Ada Vell",))))]
    one = max(length(format_with_documents([medium[0].context], qa.question) + " " + qa.answers[0])
              for qa in medium[0].qas)
    cfg = BaseTrainConfig(train_file="mine.jsonl", reading_fraction=1.0, qa_fraction=0.0, reading_questions=2,
                          max_length=one)
    unchecked = [next(stream) for stream in [example_stream(cfg, medium, 0)] for _ in range(12)]
    assert any(length(text) > one for text, _ in unchecked)  # these would have been truncated
    checked = [next(stream) for stream in [example_stream(cfg, medium, 0, fits=lambda t: length(t) <= one)]
               for _ in range(12)]
    assert all(text.startswith(medium[0].context + "\n\n") and len(answers) == 1 for text, answers in checked)

    # Examples that fit are exactly what they were without the check (the embedded default's stream).
    short = [Document(f"s{i}", f"The tower of Lumen {i} is {100 + i} metres tall.", docs[i].qas[:1]) for i in range(4)]
    roomy = BaseTrainConfig(train_file="mine.jsonl", reading_fraction=1.0, qa_fraction=0.0, max_length=512)
    plain, checked = example_stream(roomy, short, 0), example_stream(roomy, short, 0, fits=lambda t: length(t) <= 512)
    assert [next(plain) for _ in range(8)] == [next(checked) for _ in range(8)]

    # Not even the answer's sentence with its question fits: a clear error instead of endless skipping.
    with pytest.raises(DataFormatError, match="max_length=8"):
        next(example_stream(BaseTrainConfig(train_file="mine.jsonl", reading_fraction=1.0, qa_fraction=0.0,
                                            max_length=8), docs, 0, fits=lambda t: length(t) <= 8))


def test_curriculum_keeps_the_sentences_that_answer_whatever_characters_the_answer_has():
    """The reading curriculum drops sentences that answer nothing; an answer like "$200" (no word boundary
    before "$") or one inside a longer number must not fool it."""
    import random

    from mac_memory.training.base_lm import _shortened

    context = "The first units cost $200 each. Rain fell. Sales reached 1200 units. The mayor waved."
    for seed in range(5):
        assert _shortened(context, ["$200"], 0.0, random.Random(seed)) == "The first units cost $200 each."
        assert _shortened(context, ["120"], 0.0, random.Random(seed)) == ""  # "120" is not in "1200"


def test_number_tokens_make_each_number_one_token_starting_from_its_old_pieces():
    from transformers import AutoConfig, AutoModelForCausalLM

    from mac_memory.tiny_models import build_tokenizer
    from mac_memory.training.base_lm import add_number_tokens

    tokenizer = build_tokenizer()
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                  tie_word_embeddings=False, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    size = len(tokenizer)
    pieces = tokenizer(" 1935", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1
    before_in = model.get_input_embeddings().weight[pieces].mean(0).clone()
    before_out = model.get_output_embeddings().weight[pieces].mean(0).clone()

    assert add_number_tokens(model, tokenizer, "1930-1939") == 10
    assert len(tokenizer) == size + 10 == model.get_input_embeddings().weight.shape[0]
    assert model.get_output_embeddings().weight.shape[0] == size + 10
    ids = tokenizer("She was born in 1935, in Kelo.", add_special_tokens=False)["input_ids"]
    new = tokenizer.convert_tokens_to_ids(" 1935")
    assert new in ids and tokenizer.decode(ids) == "She was born in 1935, in Kelo."
    assert torch.equal(model.get_input_embeddings().weight[new], before_in)
    assert torch.equal(model.get_output_embeddings().weight[new], before_out)
    assert add_number_tokens(model, tokenizer, "1930-1940") == 1  # only 1940 is new
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([ids])).logits).all()


def test_train_base_grows_the_vocabulary_when_a_phase_adds_number_tokens(tmp_path):
    from transformers import AutoTokenizer

    from mac_memory.errors import ConfigError

    cfg = BaseTrainConfig(out=str(tmp_path / "base"), world_entities=30, vocab_size=300, hidden_size=32,
                          num_layers=1, num_heads=2, num_kv_heads=1, steps=4, batch_size=4, eval_every=4,
                          warmup=2, max_length=128)
    train_base(cfg)
    with pytest.raises(ConfigError, match="LO-HI"):
        train_base(BaseTrainConfig(out=str(tmp_path / "bad"), number_tokens="2020-1850"))
    assert not (tmp_path / "bad").exists()

    from dataclasses import replace

    final = train_base(replace(cfg, steps=8, resume=True, number_tokens="1850-2020"))
    log = _log(tmp_path / "base" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 9))
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.tokenize("born in 1999.")[-2:] == [" 1999", "."]
    lm = FrozenLM.from_pretrained(final, device="cpu")
    assert lm.model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert lm.generate(["Question: In what year was Varn born?\nAnswer:"], max_new_tokens=3)


def test_train_base_with_lora_writes_a_small_adapter_that_loads_as_the_warmed_lm(tiny_lm_dir, tmp_path):
    """``--lora-rank``: only the adapter trains; ``final/`` is a float16 peft adapter that loads (merged) as the
    warmed LM, and a MAC checkpoint made on it refuses the bare base LM."""
    from safetensors.torch import load_file

    from mac_memory.config import AmortizerConfig, BaseLMConfig, MACConfig
    from mac_memory.errors import BaseModelMismatchError

    pytest.importorskip("peft")
    base_files = {p.name: p.read_bytes() for p in tiny_lm_dir.iterdir() if p.is_file()}
    cfg = BaseTrainConfig(out=str(tmp_path / "qa"), from_pretrained=str(tiny_lm_dir), lora_rank=4,
                          world_entities=30, steps=6, batch_size=4, eval_every=3, warmup=1, max_length=128,
                          lr=1e-2)
    final = train_base(cfg)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in final.iterdir()}
    assert not (final / "model.safetensors").exists()
    tensors = load_file(final / "adapter_model.safetensors")
    assert tensors and all("lora_" in name and t.dtype == torch.float16 for name, t in tensors.items())
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_lm_dir)
    assert {p.name: p.read_bytes() for p in tiny_lm_dir.iterdir() if p.is_file()} == base_files  # base untouched
    assert "rag_gold_f1" in _log(tmp_path / "qa" / "log.jsonl")[2]
    assert (tmp_path / "qa" / "curves.png").is_file()

    bare = FrozenLM.from_pretrained(tiny_lm_dir, device="cpu")
    warmed = FrozenLM.from_pretrained(final, device="cpu")  # the adapter names its base: one path loads both
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert not torch.allclose(bare.model(ids).logits, warmed.model(ids).logits)
    assert warmed.weights_source()["adapter_sha256"] and not bare.weights_source()["adapter_sha256"]

    mac = MACModel(MACConfig(base_lm=BaseLMConfig(str(final)), amortizer=AmortizerConfig(num_tokens=2, d_mem=16)),
                   warmed)
    mac.save_pretrained(tmp_path / "ckpt")
    assert MACModel.from_pretrained(tmp_path / "ckpt").lm.weights_source() == warmed.weights_source()
    with pytest.raises(BaseModelMismatchError, match="adapter"):
        MACModel.from_pretrained(tmp_path / "ckpt", lm=bare)


def test_the_token_after_each_answer_is_weighted_so_the_lm_learns_to_stop(tiny_lm_dir):
    """Answer-only training (``text_weight`` 0) must still teach where an answer ends: the line break before the
    next question and the final end token carry the answer's weight; nothing else does."""
    from transformers import AutoTokenizer

    from mac_memory.training.base_lm import _batch

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    text = "The tower is tall.\n\nQuestion: Who built it?\nAnswer: Ada Vell\nQuestion: How tall?\nAnswer: 120 metres"
    answers = ["Ada Vell", "120 metres"]
    ids, mask, weights = _batch(tokenizer, [(text, answers)], 128, answer_weight=4.0, text_weight=0.0)
    picked = (weights[0] == 4.0).nonzero().flatten().tolist()
    assert set(weights[0].tolist()) == {0.0, 4.0}
    # Each answer and the token that ends it: the line break, then the end token.
    assert tokenizer.decode(ids[0, picked], skip_special_tokens=True) == "Ada Vell\n120 metres"
    last = int(mask[0].sum()) - 1
    assert picked[-1] == last and ids[0, last] == tokenizer.eos_token_id
