"""The retrieval prior: candidates' search similarity joins the aggregation, and `calibrate` picks its temperature.

What a user notices: with a calibrated prior the clearly best-matching document dominates the merged
modulation (and its aggregation weight), close calls stay mixed, a checkpoint without a temperature
behaves exactly as before, and calibration writes a checkpoint that reloads with the chosen temperature.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import replace

import chromadb
import numpy as np
import pytest
import torch

from mac_memory.config import AggregatorConfig, MACConfig
from mac_memory.data import Document, WorldConfig, generate_world
from mac_memory.errors import ConfigError
from mac_memory.evaluation import EvalConfig, evaluate
from mac_memory.evaluation.calibrate import CalibrateConfig, calibrate
from mac_memory.model import MACModel
from mac_memory.networks.aggregator import AggregationNetwork


@pytest.fixture(scope="module")
def network() -> AggregationNetwork:
    torch.manual_seed(0)
    return AggregationNetwork(AggregatorConfig(num_layers=1, num_heads=4, window=4), d_mem=32).eval()


@pytest.fixture(scope="module")
def mac(tiny_path) -> MACModel:
    from helpers.reliability import tiny_mac

    return tiny_mac(str(tiny_path("llama")))


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return generate_world(WorldConfig(seed=0, n_entities=120))["test"][:8]  # 8 documents, 7 questions each


class WordEmbedder:
    """Hashed bag of words (both memory and eval interfaces): questions land near their own document."""

    name = "test-word-embedder-256"
    dim = 256

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().replace("?", " ").replace(".", " ").split():
                out[i, zlib.crc32(word.encode()) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return self.embed(list(texts))

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


# ------------------------------------------------------------------------------------------ the network


@pytest.mark.parametrize("readout", ["slot", "token"])
def test_a_dominant_prior_passes_its_document_through(readout):
    torch.manual_seed(0)
    net = AggregationNetwork(AggregatorConfig(num_layers=1, num_heads=4, readout=readout), d_mem=32).eval()
    queries, memory = torch.randn(2, 4, 32), torch.randn(2, 3, 4, 32)
    prior = torch.tensor([[0.0, 60.0, 0.0], [0.0, 0.0, 60.0]])
    with torch.no_grad():
        out = net(queries, memory, prior=prior)
        alone = net(queries, memory[torch.arange(2), torch.tensor([1, 2])][:, None])
    assert torch.allclose(out.weights[0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    assert torch.allclose(out.weights[1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    if readout == "slot":  # slot t of that document alone (a memory of one passes through the read-out)
        assert torch.allclose(out.tokens, alone.tokens, atol=1e-4)


def test_no_prior_and_a_flat_prior_change_nothing(network):
    torch.manual_seed(1)
    queries, memory = torch.randn(2, 4, 32), torch.randn(2, 3, 4, 32)
    with torch.no_grad():
        plain = network(queries, memory)
        flat = network(queries, memory, prior=torch.full((2, 3), 7.0))  # the same shift for every candidate
        tilted = network(queries, memory, prior=torch.tensor([[2.0, 0.0, 0.0]] * 2))
    assert torch.allclose(plain.tokens, flat.tokens, atol=1e-5)
    assert torch.allclose(plain.weights, flat.weights, atol=1e-6)
    assert bool((tilted.weights[:, 0] > plain.weights[:, 0]).all())  # a higher prior, a larger share


def test_hierarchical_aggregation_follows_the_prior_across_windows(network):
    torch.manual_seed(2)
    queries, memory = torch.randn(1, 4, 32), torch.randn(1, 11, 4, 32)  # window 4: three levels of merging
    mask = torch.ones(1, 11, dtype=torch.bool)
    mask[0, 10] = False  # a padding candidate, with a prior of -inf as the eval index reports it
    prior = torch.zeros(1, 11)
    prior[0, 6], prior[0, 10] = 80.0, float("-inf")
    with torch.no_grad():
        out = network.aggregate(queries, memory, mask, prior=prior)
    assert out.weights.shape == (1, 11)
    assert float(out.weights[0, 6]) == pytest.approx(1.0, abs=1e-4)
    assert float(out.weights[0, 10]) == 0.0 and bool(torch.isfinite(out.tokens).all())


def test_a_prior_of_the_wrong_shape_is_refused(network):
    with pytest.raises(ValueError, match="one value per candidate"):
        network(torch.randn(1, 4, 32), torch.randn(1, 3, 4, 32), prior=torch.zeros(1, 2))


# ------------------------------------------------------------------------------------------ the model


def test_without_a_temperature_similarity_is_ignored(mac):
    assert mac.config.aggregator.retrieval_temperature is None
    memory = mac.amortize(["Ada was born in Lyon.", "Bo plays the harp.", "Cy keeps a cat."])
    with torch.no_grad():
        plain = mac.aggregate(["Where was Ada born?"], memory)
        given = mac.aggregate(["Where was Ada born?"], memory, similarity=torch.tensor([[0.1, 0.9, 0.2]]))
    assert torch.equal(plain.weights, given.weights) and torch.equal(plain.tokens, given.tokens)


def test_the_calibrated_temperature_turns_similarity_into_the_weights(mac):
    memory = mac.amortize(["Ada was born in Lyon.", "Bo plays the harp.", "Cy keeps a cat."])
    sim = torch.tensor([[0.31, 0.62, 0.30]])
    mac.config.aggregator.retrieval_temperature = 0.005
    try:
        with torch.no_grad():
            sharp = mac.aggregate(["Who plays the harp?"], memory, similarity=sim)
        assert float(sharp.weights[0, 1]) > 0.999
        with pytest.raises(ValueError, match="similarity must be"):
            mac.aggregate(["Who plays the harp?"], memory, similarity=torch.tensor([[0.3, 0.6]]))
        # Padding candidates and missing scores (-inf) contribute nothing to the prior.
        prior = mac.retrieval_prior(torch.tensor([[0.5, float("-inf")]]), torch.tensor([[True, False]]))
        assert torch.equal(prior, torch.tensor([[100.0, 0.0]]))
    finally:
        mac.config.aggregator.retrieval_temperature = None


def test_temperature_is_validated_saved_and_absent_in_old_configs(mac, tmp_path):
    for bad in (0, -0.1, float("inf"), "0.02", True):
        with pytest.raises(ConfigError, match="retrieval_temperature"):
            AggregatorConfig(retrieval_temperature=bad)
    data = mac.config.to_dict()
    data["aggregator"].pop("retrieval_temperature")
    assert MACConfig.from_dict(data).aggregator.retrieval_temperature is None  # written before the prior
    config = replace(mac.config, aggregator=replace(mac.config.aggregator, retrieval_temperature=0.02))
    config.save(tmp_path / "mac_config.json")
    assert MACConfig.load(tmp_path / "mac_config.json").aggregator.retrieval_temperature == 0.02


# ------------------------------------------------------------------------------------------ where it is used


def test_eval_hands_each_candidates_similarity_to_the_aggregation(mac, docs, monkeypatch):
    seen = []
    original = mac.generate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("similarity"))
        return original(*args, **kwargs)

    monkeypatch.setattr(mac, "generate", spy)
    config = EvalConfig(methods=("mac",), k=3, retention=False, max_questions=10, threads=1, max_new_tokens=2,
                        batch_size=8, out=None)
    evaluate(config, mac=mac, documents=docs, embedder=WordEmbedder())
    assert seen and all(s is not None and s.shape[1] == 3 for s in seen)
    rows = torch.cat(seen)
    assert bool((rows[:, :-1] >= rows[:, 1:]).all())  # best first, as retrieved
    assert bool((rows[:, 0] > 0).all())


def test_memory_weights_follow_the_retrieval_prior(mac):
    from helpers.reliability import settings

    from mac_memory.memory import MACMemory

    texts = ["Ada Lovelace was born in London in 1815.", "Bo Diddley played the guitar in Chicago.",
             "Cy Twombly painted large canvases in Rome."]
    memory = MACMemory(model=mac, embedder=WordEmbedder(), collection="prior",
                       client=chromadb.EphemeralClient(settings=settings()))
    memory.add_texts(texts)
    question = "Where was Ada Lovelace born?"
    plain = memory.recall(question, k=3)
    mac.config.aggregator.retrieval_temperature = 0.001
    try:
        sharp = memory.recall(question, k=3)
    finally:
        mac.config.aggregator.retrieval_temperature = None
    assert sharp.hits[0].text == texts[0]  # the search ranks the right document first ...
    assert float(sharp.weights[0]) > 0.999  # ... and with the prior it carries the answer
    assert float(plain.weights[0]) < 0.99  # untrained networks alone spread the weight
    assert sharp.sources()[0].text.startswith("Ada Lovelace")


# ------------------------------------------------------------------------------------------ calibrate


def test_calibrate_sweeps_chooses_and_writes_a_checkpoint_that_reloads(mac, docs, tmp_path):
    ckpt = mac.save_pretrained(tmp_path / "ckpt")
    loaded = MACModel.from_pretrained(ckpt, device="cpu")
    config = CalibrateConfig(checkpoint=str(ckpt), out=str(tmp_path / "calibrated"), k=3,
                             temperatures=(0.05, 0.01), max_questions=12, threads=1)
    result = calibrate(config, mac=loaded, documents=docs, embedder=WordEmbedder())
    assert [row["temperature"] for row in result["sweep"]] == [None, 0.05, 0.01]
    assert all(0.0 <= row["f1"] <= 100.0 for row in result["sweep"])
    best = max(row["f1"] for row in result["sweep"])
    chosen = next(row for row in result["sweep"] if row["f1"] == best)  # ties: the softest prior
    assert result["chosen"] == chosen["temperature"] and result["n_questions"] == 12
    again = MACModel.from_pretrained(tmp_path / "calibrated", device="cpu")
    assert again.config.aggregator.retrieval_temperature == result["chosen"]
    assert again.fingerprint() == loaded.fingerprint()  # networks untouched: one scalar was fitted
    written = json.loads((tmp_path / "calibrated" / "calibration.json").read_text())
    assert written["chosen"] == result["chosen"]
    assert MACModel.from_pretrained(ckpt, device="cpu").config.aggregator.retrieval_temperature is None


def test_calibrate_options_are_checked():
    with pytest.raises(ConfigError, match="temperatures"):
        CalibrateConfig(checkpoint="x", temperatures=(0.1, -1.0))
    with pytest.raises(ConfigError, match="k="):
        CalibrateConfig(checkpoint="x", k=0)
    with pytest.raises(ConfigError, match="checkpoint is required"):
        calibrate(CalibrateConfig())
