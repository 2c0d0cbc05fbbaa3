"""``mac-memory demo``: MAC end to end on a model small enough for any laptop.

The engine demo builds a tiny base LM and MAC networks in-process (no download), amortizes a few
documents into memory tokens in one pass each, aggregates them for a question and generates with the
resulting prefix, printing what a user of the library would look at: bytes per modulation, the
aggregation weights (provenance) and the generated text. The networks are untrained here, so the text
is noise; ``mac-memory train`` is what teaches them.
"""

from __future__ import annotations

import argparse
import tempfile
import time

DOCUMENTS = [
    "Velmora Quistan was born in Ostravel in 1871 and works for Brindlecorp as a cartographer.",
    "Kado Fen, a violinist, grew up in Marrowick; his sister works for Telvane.",
    "The Halden bridge over the Sorn river opened in 1904 and was rebuilt in 1958.",
]
QUESTION = "Where was Velmora Quistan born?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed of the tiny models (default: 0)")


def run(ns: argparse.Namespace) -> int:
    import torch

    from .config import AggregatorConfig, AmortizerConfig, BaseLMConfig, MACConfig
    from .frozen_lm import FrozenLM
    from .model import MACModel
    from .tiny_models import save_tiny

    torch.manual_seed(ns.seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_tiny("llama", f"{tmp}/tiny-llama", seed=ns.seed)
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
