"""SQuAD-style EM and F1, checked against hand-computed values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mac_memory.evaluation import Scores, exact_match, f1_score, normalize_answer, score_predictions


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("The Cat!", "cat"),
        ("  a  Quick,\tbrown fox. ", "quick brown fox"),
        ("An apple a day", "apple day"),
        ("theatre and thermal", "theatre and thermal"),  # articles only as whole words
        ("Mr. O'Neil's (the) house", "mr oneils house"),
        ("THE", ""),
        ("", ""),
    ],
)
def test_normalize_answer(text: str, normalised: str) -> None:
    assert normalize_answer(text) == normalised


def test_exact_match_normalises_and_takes_the_best_reference() -> None:
    assert exact_match("The Cat!", ["cat"]) == 1.0
    assert exact_match("cat", ["dog"]) == 0.0
    assert exact_match("cats", ["cat"]) == 0.0
    assert exact_match("Red Dog", ["x", "the red dog.", "y"]) == 1.0
    assert exact_match("cat", "the cat") == 1.0  # a bare string is one reference


def test_f1_partial_overlap_by_hand() -> None:
    # pred "the big red dog" -> [big, red, dog]; ref "red dog house" -> [red, dog, house]
    # common = {red, dog} = 2; precision = 2/3, recall = 2/3, F1 = 2/3.
    assert f1_score("the big red dog", ["red dog house"]) == pytest.approx(2 / 3)
    # pred "red" vs ref "red dog house": P = 1/1, R = 1/3, F1 = 2 * (1/3) / (4/3) = 0.5.
    assert f1_score("red", ["red dog house"]) == pytest.approx(0.5)
    # Multiset, not set: pred [dog, dog, dog] vs ref [dog] share one token: P = 1/3, R = 1, F1 = 0.5.
    assert f1_score("dog dog dog", ["dog"]) == pytest.approx(0.5)
    assert f1_score("blue whale", ["red dog"]) == 0.0


def test_f1_takes_the_max_over_references() -> None:
    # vs "cat": 0; vs "red dog house": P = 1, R = 2/3 -> 0.8; vs "dog": P = 1/2, R = 1 -> 2/3.
    assert f1_score("red dog", ["cat", "red dog house", "dog"]) == pytest.approx(0.8)
    assert f1_score("red dog", ["dog", "cat"]) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("prediction", "reference", "em", "f1"),
    [
        ("", "", 1.0, 1.0),
        ("", "cat", 0.0, 0.0),
        ("cat", "", 0.0, 0.0),
        ("the", "a", 1.0, 1.0),  # both normalise to nothing
        ("!!!", "cat", 0.0, 0.0),
    ],
)
def test_empty_strings(prediction: str, reference: str, em: float, f1: float) -> None:
    assert exact_match(prediction, [reference]) == em
    assert f1_score(prediction, [reference]) == f1


def test_no_reference_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one reference"):
        f1_score("cat", [])
    with pytest.raises(ValueError, match="at least one reference"):
        exact_match("cat", [])


def test_score_predictions_aggregates_in_percent() -> None:
    scores = score_predictions(
        ["Paris", "the big red dog", "x"],
        [["paris", "Paris, France"], ["red dog house"], ["y", "z"]],
    )
    # EM: 1 + 0 + 0 over 3; F1: 1 + 2/3 + 0 over 3.
    assert scores.n == 3
    assert scores.em == pytest.approx(100 / 3)
    assert scores.f1 == pytest.approx(100 * (5 / 3) / 3)
    assert str(scores) == "EM 33.33 / F1 55.56 (n=3)"
    assert scores.to_dict() == {"em": scores.em, "f1": scores.f1, "n": 3}
    assert score_predictions([], []) == Scores(em=0.0, f1=0.0, n=0)


def test_score_predictions_length_mismatch_names_both_lengths() -> None:
    with pytest.raises(ValueError, match=r"2 predictions and 3 reference lists"):
        score_predictions(["a", "b"], [["a"], ["b"], ["c"]])


_text = st.text(alphabet=st.sampled_from(list("ab cd,.THE")), max_size=20)


@settings(max_examples=200, deadline=None)
@given(_text, _text)
def test_metric_properties(prediction: str, reference: str) -> None:
    em = exact_match(prediction, [reference])
    f1 = f1_score(prediction, [reference])
    assert 0.0 <= f1 <= 1.0
    assert em in (0.0, 1.0)
    if em == 1.0:
        assert f1 == 1.0
    assert f1 == pytest.approx(f1_score(reference, [prediction]))  # F1 is symmetric for one reference
    assert f1_score(prediction, [prediction]) == 1.0
    assert normalize_answer(normalize_answer(prediction)) == normalize_answer(prediction)


def test_score_by_group_scores_each_group_and_skips_ungrouped():
    from mac_memory.evaluation.metrics import score_by_group

    preds = ["Paris", "1935", "red", "blue"]
    refs = [["Paris"], ["1937"], ["red"], ["green"]]
    scores = score_by_group(preds, refs, ["city", "year", "colour", None])
    assert list(scores) == ["city", "colour", "year"]
    assert (scores["city"].f1, scores["year"].f1, scores["colour"].n) == (100.0, 0.0, 1)
    with pytest.raises(ValueError, match="as many"):
        score_by_group(preds, refs, ["city"])
