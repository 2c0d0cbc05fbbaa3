"""Synthetic documents of a chosen length in base-LM tokens, each with a question about its first fact.

The benchmark measures cost, not quality, so the text only needs to look like the documents a memory
holds: sentences about invented people, places and companies (nothing a model can know), padded with
further facts until the document reaches the target length *in the tokenizer of the LM being measured*
(so "a 150-token document" means the same thing for every model). Everything is deterministic in the
seed, so every measuring process builds exactly the same documents.

Example:
    >>> docs = make_documents(2, 40, lambda t: len(t.split()), seed=0, tag="demo")
    >>> docs[0].question.endswith("?"), docs[0].tokens >= 40
    (True, True)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BenchDoc", "make_documents", "record_text", "tokenizer_corpus"]

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ia", "ou")
_CODAS = ("", "", "n", "r", "l", "s")
_PLACE_SUFFIXES = ("by", "holm", "ford", "burg", "mouth", "field", "haven", "wick")
_ORG_SUFFIXES = ("corp", " Works", " Labs", " Mills", " Foods", " Motors")
_JOBS = ("engineer", "cartographer", "baker", "violinist", "surgeon", "teacher", "pilot", "architect",
         "gardener", "lawyer", "chemist", "carpenter")
_FIELDS = ("chemistry", "history", "music", "law", "medicine", "geology", "poetry", "economics")
_PETS = ("cat", "parrot", "tortoise", "dog", "rabbit", "goat", "ferret")

# (fact sentence, question, answer); {n} person, {p} place, {o} organisation, {j} job, {f} field, {y} year.
_FACTS = (
    ("{n} was born in {p} in {y}.", "Where was {n} born?", "{p}"),
    ("{n} works for {o} as a {j}.", "Who does {n} work for?", "{o}"),
    ("{n} lives in {p} with a {pet}.", "Where does {n} live?", "{p}"),
    ("{n} studied {f} at the University of {p}.", "What did {n} study?", "{f}"),
    ("{n} founded {o} in {y}.", "Who founded {o}?", "{n}"),
    ("{n} has worked as a {j} since {y}.", "What is the job of {n}?", "{j}"),
)


@dataclass(frozen=True)
class BenchDoc:
    """A synthetic document, a question about its first sentence, the answer, and its length in tokens."""

    text: str
    question: str
    answer: str
    tokens: int


def _word(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if i == n - 1 else "")
                   for i in range(n)).capitalize()


def _values(rng: random.Random) -> dict[str, str]:
    return {
        "n": f"{_word(rng, 1, 3)} {_word(rng, 2, 3)}",
        "p": _word(rng, 1, 2) + rng.choice(_PLACE_SUFFIXES),
        "o": _word(rng, 1, 2) + rng.choice(_ORG_SUFFIXES),
        "j": rng.choice(_JOBS),
        "f": rng.choice(_FIELDS),
        "y": str(rng.randint(1820, 2015)),
        "pet": rng.choice(_PETS),
    }


def _sentence(rng: random.Random) -> tuple[str, str, str]:
    fact, question, answer = rng.choice(_FACTS)
    v = _values(rng)
    return fact.format(**v), question.format(**v), answer.format(**v)


def tokenizer_corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """Sentences of the same kind as the documents, to train a small BPE tokenizer on."""
    rng = random.Random(f"mac-memory/bench/corpus/{seed}")
    out = []
    for _ in range(n):
        fact, question, answer = _sentence(rng)
        out.append(f"{fact} Question: {question}\nAnswer: {answer}")
    return out


def make_documents(n: int, target_tokens: int, count_tokens: Callable[[str], int], *, seed: int = 0,
                   tag: str = "") -> list[BenchDoc]:
    """``n`` distinct documents of at least ``target_tokens`` tokens (by ``count_tokens``), first fact asked.

    Sentences are appended until the count reaches the target, so a document overshoots by less than one
    sentence (about 10-20 tokens).
    """
    rng = random.Random(f"mac-memory/bench/{tag}/{target_tokens}/{seed}")
    docs: list[BenchDoc] = []
    seen: set[str] = set()
    while len(docs) < n:
        fact, question, answer = _sentence(rng)
        sentences = [fact]
        total = count_tokens(fact)
        while total < target_tokens:
            filler = _sentence(rng)[0]
            sentences.append(filler)
            total += count_tokens(" " + filler)
        text = " ".join(sentences)
        if text in seen:  # equal texts would be one record (content ids); never happens in practice
            continue
        seen.add(text)
        docs.append(BenchDoc(text, question, answer, count_tokens(text)))
    return docs


def record_text(i: int, rng: random.Random) -> str:
    """A short synthetic text for a record written straight through the store layer (scale benchmark)."""
    return f"Record {i}. " + _sentence(rng)[0]
