"""How well a base LM reads, per attribute: F1 with the gold document in the prompt (``rag_gold``).

    python benchmarks/reading_by_attribute.py BASE_LM [BASE_LM ...] [--mac CHECKPOINT ...] [--docs 60] [--threads 1]

For each base LM (a local directory or hub name) and three document sets — held-out people of the
training world (its test split), the world's training people, and fresh people from a stream with other
invented cities and companies — it asks every question of the first ``--docs`` documents with the
document written into the prompt, exactly as the evaluation's ``rag_gold`` does, and prints F1 per
attribute. A from-scratch LM learns to read one attribute type at a time (docs/results.md); the overall
F1 hides which types it still guesses.

``--mac CHECKPOINT``: the same per attribute for MAC checkpoints (on their recorded base LM), each
question answered from its own document's modulation alone, as the evaluation's ``mac_gold`` does —
which kinds of fact the networks carry.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from mac_memory.data.synthetic import WorldConfig, generate_world, iter_documents
from mac_memory.evaluation.metrics import Scores, score_by_group, score_predictions
from mac_memory.evaluation.protocol import EvalConfig, _Protocol, fit_rag_prompts
from mac_memory.frozen_lm import FrozenLM
from mac_memory.model import MACModel
from mac_memory.prompts import clean_answer

NEW_TOKENS = 16


def _scored(preds: list[str], items: list) -> tuple[Scores, dict[str, Scores]]:
    refs = [qa.answers for _, qa in items]
    return score_predictions(preds, refs), score_by_group(preds, refs, [qa.metadata.get("attribute") for _, qa in items])


def by_attribute(lm: FrozenLM, docs: list, batch: int = 16) -> tuple[Scores, dict[str, Scores]]:
    """Scores of every question of ``docs`` with its document in the prompt, in all and per attribute."""
    items = [(d, qa) for d in docs for qa in d.qas]
    preds: list[str] = []
    for i in range(0, len(items), batch):
        chunk = items[i : i + batch]
        prompts = fit_rag_prompts(lm, [[d.context] for d, _ in chunk], [qa.question for _, qa in chunk], NEW_TOKENS)
        preds += [clean_answer(t) for t in lm.generate(prompts, max_new_tokens=NEW_TOKENS)]
    return _scored(preds, items)


def mac_by_attribute(mac: MACModel, docs: list) -> tuple[Scores, dict[str, Scores]]:
    """Scores of every question of ``docs`` answered from its own document's modulation alone: the
    evaluation protocol's own ``mac_gold`` method, run on these documents."""
    run = _Protocol(EvalConfig(methods=("mac_gold",), retention=False, max_new_tokens=NEW_TOKENS), mac, docs, None)
    preds, _ = run.run_method("mac_gold")
    return _scored([clean_answer(t) for t in preds], [(None, it.qa) for it in run.items])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base_lms", nargs="*", help="base LMs: rag_gold per attribute")
    parser.add_argument("--mac", nargs="+", default=[], metavar="CHECKPOINT", help="MAC checkpoints: mac_gold per attribute")
    parser.add_argument("--docs", type=int, default=60, help="documents per set")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--world-entities", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=1)
    ns = parser.parse_args()
    if not ns.base_lms and not ns.mac:
        parser.error("give at least one base LM or --mac checkpoint")
    torch.set_num_threads(ns.threads)
    world = generate_world(WorldConfig(seed=ns.world_seed, n_entities=ns.world_entities))
    sets = {
        "held-out people": world["test"][: ns.docs],
        "training people": world["train"][: ns.docs],
        "fresh stream": list(itertools.islice(iter_documents(seed=777), ns.docs)),
    }
    rows = []
    for path in ns.base_lms:
        lm = FrozenLM.from_pretrained(path)
        for name, docs in sets.items():
            every, per = by_attribute(lm, docs)
            rows.append((path, name, every.f1, {a: sc.f1 for a, sc in per.items()}))
    for path in ns.mac:
        mac = MACModel.from_pretrained(path)
        for name, docs in sets.items():
            every, per = mac_by_attribute(mac, docs)
            rows.append((f"mac_gold {path}", name, every.f1, {a: sc.f1 for a, sc in per.items()}))
    attributes = sorted({a for *_, per in rows for a in per})
    print("| model | documents | all | " + " | ".join(attributes) + " |")
    print("|---|---|---:|" + "---:|" * len(attributes))
    for path, name, every, per in rows:
        cells = " | ".join(f"{per[a]:.0f}" if a in per else "—" for a in attributes)
        print(f"| {path} | {name} | {every:.1f} | {cells} |")


if __name__ == "__main__":
    main()
