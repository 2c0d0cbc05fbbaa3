"""Peak tensor memory of MAC's training loss: answer-position logits only vs the model's loss over all logits.

    python benchmarks/answer_loss_memory.py [--models gpt2-small llama-1b] [--batch 16] [--threads 1]

For each configured base LM (random weights, built from its config as in ``mac-memory bench``) and a batch
of synthetic questions with short answers under a 12-token prefix, it measures forward + backward of

* ``full``: ``FrozenLM.forward(..., labels=...)`` — the HF model projects every position onto the
  vocabulary and computes its own loss (what ``answer_loss`` did before session 5), and
* ``answer_only``: ``FrozenLM.answer_loss`` — only the last answer-span positions are projected,

with the bench's op-by-op tensor tracker, checks that both give the same loss, and prints the ratio.
"""

from __future__ import annotations

import argparse
import random

import torch

from mac_memory.bench.config import BenchConfig
from mac_memory.bench.measure import tensor_peak
from mac_memory.bench.models import load_model
from mac_memory.prefix import PrefixKV


def measure(name: str, questions: list[str], answers: list[str], prefix_len: int) -> str:
    """One table row: peak tensor bytes of forward + backward, all logits vs answer positions only."""
    mac, _ = load_model(name, BenchConfig(models=(name,)).resolve(), "cpu")
    lm = mac.lm
    L = lm.layout
    shape = (L.num_layers, len(questions), L.num_kv_heads, prefix_len, L.head_dim)
    keys = torch.randn(shape, requires_grad=True)
    values = torch.randn(shape, requires_grad=True)
    prefix = PrefixKV(keys, values)
    ids, mask, labels = lm.qa_batch(questions, answers)
    losses: dict[str, float] = {}

    def full() -> None:
        loss = lm.forward(ids, mask, prefix=prefix, labels=labels).loss
        loss.backward()
        losses["full"] = float(loss.detach())

    def answer_only() -> None:
        loss = lm.answer_loss(questions, answers, prefix)
        loss.backward()
        losses["answer_only"] = float(loss.detach())

    peaks = {}
    for label, fn in (("full", full), ("answer_only", answer_only)):
        fn()  # warm-up
        keys.grad = values.grad = None
        peaks[label] = tensor_peak(fn, "cpu")[0]
        keys.grad = values.grad = None
    equal = abs(losses["full"] - losses["answer_only"]) <= 1e-4 * max(1.0, abs(losses["full"]))
    return (f"| {name} | {len(questions)} | {peaks['full'] / 2**20:,.1f} | {peaks['answer_only'] / 2**20:,.1f} | "
            f"{peaks['full'] / peaks['answer_only']:.2f} | {'yes' if equal else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2-small", "llama-1b"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prefix", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    ns = parser.parse_args()
    torch.set_num_threads(ns.threads)
    rng = random.Random(0)
    words = "where when which city company year person born works plays lives colour pet".split()
    questions = [" ".join(rng.choices(words, k=rng.randint(6, 14))) + "?" for _ in range(ns.batch)]
    answers = [" ".join(rng.choices(words, k=rng.randint(1, 3))) for _ in range(ns.batch)]
    print("| model | batch | full logits: peak MiB | answer positions only: peak MiB | ratio | loss equal |")
    print("|---|---:|---:|---:|---:|---|")
    for name in ns.models:
        print(measure(name, questions, answers, ns.prefix), flush=True)


if __name__ == "__main__":
    main()
