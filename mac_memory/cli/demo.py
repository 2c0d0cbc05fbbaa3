"""``mac-memory demo``: the online-adaptation protocol, live, on the embedded default.

1. Finds the embedded default (small base LM + MAC networks trained by this project on its synthetic
   world); on a fresh machine it trains it once (minutes, progress bars) and caches it.
2. Streams documents about *held-out* invented people (facts no model can know) into the memory,
   then answers their questions with every method — the frozen LM alone, MAC (gold document only,
   retrieval + aggregation, whole memory), RAG with the documents in the prompt, and online
   fine-tuning — and prints the comparison table (EM/F1, time) and the retention curve.

``--engine`` runs the engine-only demo instead: tiny untrained networks built in-process, showing the
mechanics (bytes per modulation, aggregation weights, generation under a prefix) in seconds.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

logger = logging.getLogger(__name__)

DOCUMENTS = [
    "Velmora Quistan was born in Ostravel in 1871 and works for Brindlecorp as a cartographer.",
    "Kado Fen, a violinist, grew up in Marrowick; his sister works for Telvane.",
    "The Halden bridge over the Sorn river opened in 1904 and was rebuilt in 1958.",
]
QUESTION = "Where was Velmora Quistan born?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--docs", type=int, default=100, help="held-out documents streamed into memory (default: 100)")
    parser.add_argument("--questions", type=int, default=200, help="questions asked (default: 200)")
    parser.add_argument("--k", type=int, default=4, help="candidates retrieved per question (default: 4)")
    parser.add_argument("--out", default="runs/demo/report.json", help="report path (JSON + .md + .png)")
    parser.add_argument("--engine", action="store_true", help="only the in-process engine demo (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def run(ns: argparse.Namespace) -> int:
    if ns.engine:
        return run_engine(ns.seed)
    from ..evaluation.protocol import EvalConfig, evaluate
    from ..evaluation.report import markdown_table
    from ..training.default import RECIPE, default_paths, load_default

    start = time.perf_counter()
    paths = default_paths(train=True)
    logger.info("embedded default: base LM %s, MAC checkpoint %s", paths.base_lm, paths.checkpoint)
    mac = load_default(paths=paths)
    config = EvalConfig(data="synthetic:test", world_seed=RECIPE.base.world_seed,
                        world_entities=RECIPE.base.world_entities, limit_docs=ns.docs, max_questions=ns.questions,
                        k=ns.k, retention_first=max(1, ns.docs // 10), out=ns.out, seed=ns.seed)
    report = evaluate(config, mac=mac)
    print(f"\nOnline adaptation on {ns.docs} documents about held-out invented people "
          f"(base LM {paths.base_lm.name}, {time.perf_counter() - start:.0f} s in all):\n")
    print(markdown_table(report))
    if ns.out:
        print(f"\nreport: {ns.out} (+ .md, .png)")
    return 0


def run_engine(seed: int = 0) -> int:
    """The mechanics with tiny, untrained, in-process models: amortize, aggregate, generate."""
    import torch

    from ..config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig
    from ..frozen_lm import FrozenLM
    from ..model import MACModel
    from ..tiny_models import save_tiny

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny("llama", f"{tmp}/tiny-llama", seed=seed)
        lm = FrozenLM.from_pretrained(path, device="cpu")
        config = MACConfig(base_lm=BaseLMConfig(str(path)),
                           amortizer=AmortizerConfig(kind="kv_anchored", num_tokens=8, d_mem=64),
                           aggregator=AggregatorConfig(num_layers=2, num_heads=4, window=16))
        mac = MACModel(config, lm).eval()
        print(f"base LM: tiny Llama (GQA) {lm.layout}; MAC networks: "
              f"{sum(p.numel() for p in mac.parameters()):,} parameters")
        start = time.perf_counter()
        with torch.no_grad():
            memory = mac.amortize(DOCUMENTS)  # (N, T, d_mem)
        took = time.perf_counter() - start
        per_doc = memory[0].numel() * 2  # stored as float16
        print(f"amortized {len(DOCUMENTS)} documents in {took * 1000:.0f} ms: memory {tuple(memory.shape)}, "
              f"{per_doc} bytes per document (fp16)")
        answers, weights = mac.generate([QUESTION], memory, max_new_tokens=8)
        print(f"question: {QUESTION}")
        for doc, w in sorted(zip(DOCUMENTS, weights[0].tolist()), key=lambda x: -x[1]):
            print(f"  weight {w:.3f}  {doc[:60]}...")
        print(f"answer (untrained networks, so noise): {answers[0]!r}")
        print("prompt held only the question; the documents reached the LM as a prefix of "
              f"{config.prefix_len} key/value positions per layer.")
    return 0
