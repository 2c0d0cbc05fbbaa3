"""The incremental answer filters: however a generation is split into pieces, the joined output equals
the non-streamed answer (``clean_answer``, then the cut at the earliest stop sequence)."""

from __future__ import annotations

import itertools
import random

import pytest
from mac_memory.memory.memory import first_line_pieces, stream_answer
from mac_memory.prompts import clean_answer

from langchain_mac_memory._streaming import cut_at_stop, stop_pieces

TEXTS = [
    "",
    "   ",
    "Ostravel",
    "  Ostravel in 1871 \n and more",
    "\n\n  first line  \t\nsecond",
    "a b  c   ",
    "end with newline\n",
    "tabs\tinside\r\nnext",
    "::::::::",
]
STOPS = [None, [], ["x"], [" "], ["in 1"], ["abc", "b"], ["1871", "871 "], [""], ["\n"], ["::"]]


def _splits(text: str, seed: int) -> list[list[str]]:
    """The text in one piece, char by char, and in random pieces."""
    rng = random.Random(seed)
    out = [[text], list(text)]
    for _ in range(5):
        cuts = (
            sorted(rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 4))))
            if len(text) > 1
            else []
        )
        bounds = [0, *cuts, len(text)]
        out.append([text[a:b] for a, b in itertools.pairwise(bounds)])
    return out


def _run(pieces: list[str], stop: list[str] | None) -> str:
    return "".join(stop_pieces(first_line_pieces(pieces), stop))


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("stop", STOPS)
def test_joined_pieces_equal_the_answer(text: str, stop: list[str] | None) -> None:
    expected = cut_at_stop(clean_answer(text), stop)
    for seed, pieces in enumerate(_splits(text, seed=len(text))):
        assert _run(pieces, stop) == expected, (pieces, seed)


def test_cut_at_stop_takes_the_earliest_occurrence() -> None:
    assert cut_at_stop("abcabc", ["c", "b"]) == "a"
    assert cut_at_stop("abc", ["abc", "b"]) == ""
    assert cut_at_stop("abc", ["", "z"]) == "abc"
    assert cut_at_stop("abc", None) == "abc"


def test_stream_answer_matches_generate(make_memory) -> None:  # type: ignore[no-untyped-def]
    """End to end on the tiny LM: the streamed pieces join to the generated, cleaned answer."""
    lm = make_memory().mac.lm
    prompt = "Question: Where was Velmora born?\nAnswer:"
    expected = clean_answer(lm.generate([prompt], None, max_new_tokens=10)[0])
    pieces = list(stream_answer(lm, prompt, None, 10))
    assert "".join(pieces) == expected
    assert "".join(stop_pieces(stream_answer(lm, prompt, None, 10), [expected[2:4]])) == cut_at_stop(
        expected, [expected[2:4]]
    )
