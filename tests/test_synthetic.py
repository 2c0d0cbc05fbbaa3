"""The synthetic world: deterministic, split by entity, answerable only by binding facts to people."""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest

from mac_memory.data import (
    ATTRIBUTES,
    Document,
    WorldConfig,
    attribute_values,
    format_qa,
    generate_world,
    iter_documents,
    load_stream,
    write_world,
)
from mac_memory.errors import ConfigError

N = 300


@pytest.fixture(scope="module")
def world() -> dict[str, list[Document]]:
    return generate_world(WorldConfig(seed=0, n_entities=N))


def _all(world: dict[str, list[Document]]) -> list[Document]:
    return [doc for split in ("train", "val", "test") for doc in world[split]]


def _count_word(text: str, value: str) -> int:
    return len(re.findall(rf"(?<!\w){re.escape(value)}(?!\w)", text))


def _other_values_in(doc: Document, seed: int) -> int:
    """Values of the document's attribute types found in its text that are NOT the entity's facts.

    Computed from the vocabulary and the text alone, so it does not trust the generator's metadata.
    """
    vocab = attribute_values(seed)
    facts = doc.metadata["facts"]
    return sum(
        _count_word(doc.context, value)
        for attr, true_value in facts.items()
        for value in vocab[attr]
        if value != true_value
    )


def test_same_seed_same_world_other_seed_other_world(world: dict[str, list[Document]]) -> None:
    again = generate_world(WorldConfig(seed=0, n_entities=N))
    assert again == world
    assert [d.metadata for d in _all(again)] == [d.metadata for d in _all(world)]  # not in ==
    other = generate_world(WorldConfig(seed=1, n_entities=N))
    assert {d.context for d in _all(other)}.isdisjoint(d.context for d in _all(world))
    assert set(attribute_values(0)["birth_city"]) != set(attribute_values(1)["birth_city"])


def test_write_world_is_byte_identical_and_loads_back(tmp_path: Path) -> None:
    config = WorldConfig(seed=5, n_entities=60)
    first = write_world(tmp_path / "a", config)
    second = write_world(tmp_path / "b", config)
    assert sorted(first) == ["test", "train", "val"]
    for split, path in first.items():
        assert path.name == f"{split}.jsonl"
        assert path.read_bytes() == second[split].read_bytes()
    world = generate_world(config)
    loaded = {split: load_stream(path) for split, path in first.items()}
    assert loaded == world
    assert [d.metadata for d in loaded["train"]] == [d.metadata for d in world["train"]]


def test_entities_do_not_depend_on_world_size(world: dict[str, list[Document]]) -> None:
    small = {d.doc_id: d for d in _all(generate_world(WorldConfig(seed=0, n_entities=40)))}
    big = {d.doc_id: d for d in _all(world)}
    assert all(big[doc_id] == doc for doc_id, doc in small.items())


def test_split_is_by_entity_with_the_requested_sizes() -> None:
    config = WorldConfig(seed=2, n_entities=400, val_fraction=0.1, test_fraction=0.25)
    world = generate_world(config)
    assert {k: len(v) for k, v in world.items()} == {"train": 260, "val": 40, "test": 100}
    entities = {split: {d.metadata["entity"] for d in docs} for split, docs in world.items()}
    assert sum(len(e) for e in entities.values()) == 400  # names unique in the world
    assert entities["train"].isdisjoint(entities["val"])
    assert entities["train"].isdisjoint(entities["test"])
    assert entities["val"].isdisjoint(entities["test"])
    ids = sorted(int(d.doc_id.rsplit("-", 1)[1]) for docs in world.values() for d in docs)
    assert ids == list(range(400))
    assert all(d.doc_id.startswith("syn-2-") for docs in world.values() for d in docs)


def test_every_answer_occurs_exactly_once_and_ids_are_unique(world: dict[str, list[Document]]) -> None:
    docs = _all(world)
    qids = [qa.qid for d in docs for qa in d.qas]
    assert len(qids) == len(set(qids)) == N * len(ATTRIBUTES)
    for doc in docs:
        assert doc.title == doc.metadata["entity"]
        assert doc.metadata["entity"] in doc.context.split(". ")[0]  # the text opens with its subject
        for qa in doc.qas:
            (answer,) = qa.answers
            assert answer == doc.metadata["facts"][qa.metadata["attribute"]]
            assert _count_word(doc.context, answer) == 1, (doc.context, answer)
            assert doc.metadata["entity"] in qa.question  # the name is the only key into the memory
    json.dumps([d.metadata for d in docs])  # metadata is JSON-serialisable


def test_documents_have_the_intended_length(world: dict[str, list[Document]]) -> None:
    words = [len(d.context.split()) for d in _all(world)]
    assert 40 <= min(words) and max(words) <= 90


def test_wording_and_order_vary(world: dict[str, list[Document]]) -> None:
    docs = _all(world)
    templates: dict[str, set[str]] = defaultdict(set)
    for doc in docs:
        for qa in doc.qas:
            templates[qa.metadata["attribute"]].add(qa.question.replace(doc.metadata["entity"], "{N}"))
    assert set(templates) == set(ATTRIBUTES)
    assert all(len(t) >= 3 for t in templates.values()), {k: len(v) for k, v in templates.items()}

    # Document sentences: with names and values blanked out, almost every document reads differently,
    # and the opening sentence is about many different attributes (random order).
    skeletons = set()
    first_attrs = set()
    for doc in docs:
        text = doc.context
        first_sentence = text.split(". ")[0]
        for attr, value in doc.metadata["facts"].items():
            text = text.replace(value, "<V>")
            if value in first_sentence:
                first_attrs.add(attr)
        skeletons.add(re.sub(r"\b[A-Z][a-z]+\b", "<Name>", text))
    assert len(skeletons) > 0.9 * len(docs)
    assert first_attrs == set(ATTRIBUTES)


@pytest.mark.parametrize("distractors", [0, 2, 5])
def test_documents_hold_distractors_of_the_same_types(distractors: int) -> None:
    docs = _all(generate_world(WorldConfig(seed=3, n_entities=50, distractors_per_doc=distractors)))
    for doc in docs:
        # Counted from the text alone: other values of the fact types, each differing from the truth.
        assert _other_values_in(doc, seed=3) == distractors, doc.context
        recorded = doc.metadata["distractors"]
        assert len(recorded) == distractors
        for item in recorded:
            assert item["value"] != doc.metadata["facts"][item["attribute"]]
            assert _count_word(doc.context, item["value"]) == 1
            assert item["person"] in doc.context
    if distractors >= 2:
        # Some distractors are siblings sharing the surname: only the first name binds the fact.
        surnames = [
            d.metadata["entity"].split()[1] == i["person"].split()[1]
            for d in docs
            for i in d.metadata["distractors"]
            if i["relation"] in ("brother", "sister")
        ]
        assert surnames and all(surnames)


def test_attribute_subset_and_questions_per_doc() -> None:
    config = WorldConfig(
        seed=4, n_entities=50, attributes=("employer", "pet", "birth_year"), questions_per_doc=2
    )
    docs = _all(generate_world(config))
    asked: set[str] = set()
    for doc in docs:
        assert set(doc.metadata["facts"]) == {"employer", "pet", "birth_year"}
        attrs = [qa.metadata["attribute"] for qa in doc.qas]
        assert len(attrs) == len(set(attrs)) == 2
        asked.update(attrs)
        # Only the chosen types appear: no city of this world is mentioned anywhere.
        assert not any(c in doc.context for c in attribute_values(4)["birth_city"])
    assert asked == {"employer", "pet", "birth_year"}


def test_iter_documents_fresh_people_from_another_stream(world: dict[str, list[Document]]) -> None:
    fresh = list(iter_documents(0, n=200))
    assert len(fresh) == 200
    assert fresh == list(iter_documents(0, n=200))  # deterministic too
    assert fresh[:10] == list(iter_documents(0, n=10))
    world_names = {d.metadata["entity"] for d in _all(world)}
    fresh_names = {d.metadata["entity"] for d in fresh}
    assert len(fresh_names) > 195
    assert world_names.isdisjoint(fresh_names)
    # Nobody in the world appears in any document as someone else's relative or friend either.
    side_people = {
        i["person"] for d in _all(world) + fresh for i in d.metadata["distractors"] if i["relation"] != "self"
    }
    assert len(side_people) > 400
    assert side_people.isdisjoint(world_names | fresh_names)
    # Same vocabulary as the world of this seed, every answer in its text.
    cities = set(attribute_values(0)["birth_city"])
    for doc in fresh:
        assert doc.doc_id.startswith("syn-0-fresh0-")
        assert doc.metadata["facts"]["birth_city"] in cities
        assert all(a in doc.context for qa in doc.qas for a in qa.answers)
    # Another stream: other people, same vocabulary.
    other = list(iter_documents(0, n=50, stream=1))
    assert {d.metadata["entity"] for d in other}.isdisjoint(fresh_names | world_names)
    assert {d.metadata["facts"]["birth_city"] for d in other} <= cities
    # Endless when n is None.
    assert len(list(itertools.islice(iter_documents(7), 300))) == 300


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"n_entities": 0}, "n_entities"),
        ({"n_entities": True}, "n_entities"),
        ({"attributes": ("birth_city", "height")}, "attributes"),
        ({"attributes": ()}, "attributes"),
        ({"attributes": ("pet", "pet")}, "attributes"),
        ({"questions_per_doc": 0}, "questions_per_doc"),
        ({"questions_per_doc": len(ATTRIBUTES) + 1}, "questions_per_doc"),
        ({"distractors_per_doc": -1}, "distractors_per_doc"),
        ({"distractors_per_doc": 11}, "distractors_per_doc"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction"),
        ({"n_entities": 2, "val_fraction": 0.3, "test_fraction": 0.3}, "val_fraction"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        WorldConfig(**kwargs)
    assert f"WorldConfig.{field}=" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_iter_documents_checks_arguments_at_call_time() -> None:
    with pytest.raises(ConfigError, match=r"iter_documents\.n="):
        iter_documents(0, n=-5)
    with pytest.raises(ConfigError, match=r"iter_documents\.stream="):
        iter_documents(0, stream=-1)
    with pytest.raises(ConfigError, match=r"iter_documents\.attributes="):
        iter_documents(0, attributes=("shoe_size",))


def test_config_round_trips_as_json() -> None:
    config = WorldConfig(seed=9, n_entities=77, attributes=("pet", "employer"), questions_per_doc=1)
    data = json.loads(json.dumps(config.to_dict()))
    assert WorldConfig.from_dict(data) == config
    with pytest.warns(UserWarning, match="future_knob"):
        assert WorldConfig.from_dict({**data, "future_knob": 1}) == config


def test_format_qa_is_the_project_prompt() -> None:
    assert (
        format_qa("Where was Velmora Quistan born?") == "Question: Where was Velmora Quistan born?\nAnswer:"
    )
    assert format_qa("Who?", "Bo") == "Question: Who?\nAnswer: Bo"
