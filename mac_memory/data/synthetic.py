"""A synthetic world of invented people: facts no language model can know before reading them.

Each entity is a person with a syllable-built name ("Velmora Quistan") and a handful of attributes
(birth city, birth year, employer, profession, instrument, pet, favourite colour). One short document
(about 45-70 words with the defaults, longer with more distractors) states the facts in varied wording and sentence order, and
interleaves *distractors*: values of the same types that belong to someone else or to another relation
("Her brother Kado Quistan was born in Dorby.", "She later moved to Belholm."). A reader that only
matches the answer's type fails; it has to bind the value to the entity and the relation. Every answer is
a short span that occurs verbatim in its document.

Cities and companies are invented too (built from the same syllables, fixed per world seed); years,
professions, instruments, pets and colours come from small fixed lists. The whole vocabulary is small
and regular on purpose, so that a tiny LM trained from scratch with a ~2k BPE vocabulary can learn it.

Two generators share one vocabulary per seed but use separate random streams and disjoint name sets:

* :func:`generate_world` — a fixed world (``n_entities`` people) split *by entity* into train/val/test:
  the memory's documents and the questions about them.
* :func:`iter_documents` — an endless stream of fresh people, never the world's (for teaching a base LM
  to *read* a document rather than memorise a fixed set).

Example:
    >>> world = generate_world(WorldConfig(seed=0, n_entities=100))
    >>> doc = world["train"][0]
    >>> all(a in doc.context for qa in doc.qas for a in qa.answers)
    True
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..prompts import format_qa
from .stream import QA, Document, PathLike, write_stream

logger = logging.getLogger(__name__)

__all__ = [
    "ATTRIBUTES",
    "WorldConfig",
    "attribute_values",
    "format_qa",
    "generate_world",
    "iter_documents",
    "write_world",
]

ATTRIBUTES: tuple[str, ...] = (
    "birth_city",
    "birth_year",
    "employer",
    "profession",
    "instrument",
    "pet",
    "favorite_color",
)
"""Every attribute an entity has, in the order questions are asked."""

# ------------------------------------------------------------------------------------------ vocabulary

PROFESSIONS = (
    "baker", "teacher", "carpenter", "nurse", "farmer", "painter", "engineer", "doctor", "pilot",
    "tailor", "librarian", "fisherman", "architect", "chemist", "gardener", "lawyer", "sailor",
    "butcher", "potter", "weaver", "miner", "surgeon", "clerk", "jeweler", "plumber", "mechanic",
    "journalist", "translator", "dentist", "astronomer",
)  # fmt: skip
INSTRUMENTS = (
    "violin", "piano", "guitar", "flute", "cello", "harp", "trumpet", "clarinet", "drums", "oboe",
    "accordion", "banjo", "saxophone", "trombone", "mandolin", "harmonica",
)  # fmt: skip
PETS = (
    "dog", "cat", "parrot", "rabbit", "hamster", "turtle", "horse", "goat", "ferret", "canary",
    "tortoise", "lizard", "owl", "pony",
)  # fmt: skip
COLORS = (
    "red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink", "brown",
    "silver", "teal", "crimson",
)  # fmt: skip
YEARS = tuple(str(y) for y in range(1850, 2021))

N_CITIES = 40
"""Invented cities per world (enough for varied facts and distractors, few enough to learn)."""
N_COMPANIES = 30
"""Invented companies per world."""

# Syllables: onset + vowel + coda. A small, regular inventory so BPE learns the syllables as tokens.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st",
           "tr", "qu")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")  # open syllables weighted up: the names read more easily
# Suffixes that no name can contain (names only close their last syllable, with n/r/l/s), so a city or
# company never hides inside a person's name and every answer occurs exactly once in its document.
_CITY_SUFFIXES = ("by", "holm", "ford", "burg", "mouth", "field", "haven", "wick")
_COMPANY_SUFFIXES = ("corp", "tech", " Works", " Labs", " Mills", " Foods", " Motors", " Textiles")

# Names are partitioned by a stable hash so the three kinds of people can never share a full name: a
# world entity never appears as a fresh reading entity, and nobody's sibling is another entity of the
# world (which would plant a second, contradictory "fact" about that entity in the memory).
_WORLD, _FRESH, _SIDE = 0, 1, 2


def _name_class(full_name: str) -> int:
    return zlib.crc32(full_name.encode("utf-8")) % 3


def _syllable(rng: random.Random, coda: bool) -> str:
    onset = rng.choice(_ONSETS)
    vowel = rng.choice(_VOWELS[:-1] if onset == "qu" else _VOWELS)  # no "quu"
    return onset + vowel + (rng.choice(_CODAS) if coda else "")


def _word(rng: random.Random, lo: int, hi: int) -> str:
    # Only the last syllable may close with a consonant: "Velmora", "Quistan", not "Krinbrinvus".
    n = rng.randint(lo, hi)
    return "".join(_syllable(rng, coda=i == n - 1) for i in range(n)).capitalize()


def attribute_values(seed: int) -> dict[str, tuple[str, ...]]:
    """Every value each attribute can take in the world of ``seed`` (cities and companies vary by seed).

    Useful to train a tokenizer on, or to check that a prediction is at least of the right type.
    """
    return dict(_vocabulary(seed))  # a copy: callers may mutate it without touching the cache


@lru_cache(maxsize=32)
def _vocabulary(seed: int) -> dict[str, tuple[str, ...]]:
    rng = random.Random(f"mac-memory/synthetic/{seed}/vocabulary")

    def invent(count: int, suffixes: Sequence[str]) -> tuple[str, ...]:
        out: list[str] = []
        while len(out) < count:
            name = _word(rng, 1, 2) + rng.choice(suffixes)
            if name not in out:
                out.append(name)
        return tuple(out)

    return {
        "birth_city": invent(N_CITIES, _CITY_SUFFIXES),
        "birth_year": YEARS,
        "employer": invent(N_COMPANIES, _COMPANY_SUFFIXES),
        "profession": PROFESSIONS,
        "instrument": INSTRUMENTS,
        "pet": PETS,
        "favorite_color": COLORS,
    }


# ------------------------------------------------------------------------------------------- templates
# Placeholders: {S}/{s} the entity as subject (sentence start / mid-sentence), {P}/{p} possessive,
# {ps}/{pp} always the pronoun (second mention in one sentence), {<attr>} a value, {a_<attr>} the value
# with its article ("an engineer"), {D} another person, {rel} their relation to the entity.

# One or more attributes per sentence: the combined forms keep two facts in one clause, as real text does.
_FACT_TEMPLATES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("birth_city",): (
        "{S} was born in {birth_city}.",
        "{S} was born in the city of {birth_city}.",
        "{P} birthplace is {birth_city}.",
        "{birth_city} is the city where {s} was born.",
    ),
    ("birth_year",): (
        "{S} was born in {birth_year}.",
        "{S} was born in the year {birth_year}.",
        "{P} year of birth is {birth_year}.",
        "In {birth_year}, {s} was born.",
    ),
    ("birth_city", "birth_year"): (
        "{S} was born in {birth_city} in {birth_year}.",
        "In {birth_year}, {s} was born in {birth_city}.",
    ),
    ("employer",): (
        "{S} works for {employer}.",
        "{S} is employed by {employer}.",
        "{S} has a job at {employer}.",
        "{P} employer is {employer}.",
    ),
    ("profession",): (
        "{S} works as {a_profession}.",
        "{S} is {a_profession} by trade.",
        "By profession, {s} is {a_profession}.",
        "{S} earns a living as {a_profession}.",
    ),
    ("employer", "profession"): (
        "{S} works as {a_profession} at {employer}.",
        "{S} is {a_profession} employed by {employer}.",
    ),
    ("instrument",): (
        "{S} plays the {instrument}.",
        "In {p} free time, {ps} plays the {instrument}.",
        "{S} has played the {instrument} since childhood.",
        "{P} favorite instrument is the {instrument}.",
    ),
    ("pet",): (
        "{S} has a pet {pet}.",
        "{S} keeps {a_pet} as a pet.",
        "{P} pet is {a_pet}.",
        "{S} lives with {a_pet}.",
    ),
    ("favorite_color",): (
        "{P} favorite color is {favorite_color}.",
        "{S} likes the color {favorite_color} best.",
        "{S} prefers {favorite_color} to any other color.",
        "Of all colors, {s} likes {favorite_color} the most.",
    ),
}
# How often two facts share a sentence when the world has both attributes.
_COMBINE_PROBABILITY = 0.3

# Distractors: a value of the attribute's type that is *not* the entity's. Templates with {D} belong to
# another person; the others keep the entity as subject but change the relation (moved to, applied to).
_DISTRACTOR_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "{P} {rel} {D} was born in {v}.",
        "{D}, one of {p} {rel}s, grew up in {v}.",
        "{S} later moved to {v}.",
        "{S} once spent a summer in {v}.",
    ),
    "birth_year": (
        "{P} {rel} {D} was born in {v}.",
        "{D}, one of {p} {rel}s, was born in {v}.",
        "{P} {rel} {D} started school in {v}.",
    ),
    "employer": (
        "{P} {rel} {D} works for {v}.",
        "{D}, one of {p} {rel}s, is employed by {v}.",
        "{S} once applied for a job at {v}.",
    ),
    "profession": (
        "{P} {rel} {D} works as {a_v}.",
        "{D}, one of {p} {rel}s, is {a_v}.",
        "{S} once wanted to become {a_v}.",
    ),
    "instrument": (
        "{P} {rel} {D} plays the {v}.",
        "{D}, one of {p} {rel}s, plays the {v}.",
        "{S} once tried to learn the {v}.",
    ),
    "pet": (
        "{P} {rel} {D} has a pet {v}.",
        "{D}, one of {p} {rel}s, keeps {a_v}.",
        "{S} is afraid of {a_v}.",
    ),
    "favorite_color": (
        "{P} {rel} {D} likes the color {v} best.",
        "{D}, one of {p} {rel}s, prefers {v}.",
        "{P} front door is painted {v}.",
    ),
}
_RELATIONS = ("brother", "sister", "cousin", "friend", "neighbor")
_SHARES_SURNAME = frozenset({"brother", "sister"})  # the harder case: same surname, other first name

# Questions always name the entity in full: in a memory of many documents the name is the only key.
_QUESTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "Where was {N} born?",
        "In which city was {N} born?",
        "What is the birthplace of {N}?",
        "What city was {N} born in?",
    ),
    "birth_year": (
        "In what year was {N} born?",
        "When was {N} born?",
        "What is the birth year of {N}?",
        "Which year was {N} born in?",
    ),
    "employer": (
        "Which company does {N} work for?",
        "Who employs {N}?",
        "What is the name of {N}'s employer?",
        "Where does {N} have a job?",
    ),
    "profession": (
        "What does {N} do for a living?",
        "What is {N}'s profession?",
        "What is the job of {N}?",
        "What does {N} work as?",
    ),
    "instrument": (
        "Which instrument does {N} play?",
        "What instrument does {N} play?",
        "What musical instrument can {N} play?",
    ),
    "pet": (
        "What kind of pet does {N} have?",
        "What pet does {N} keep?",
        "What animal does {N} have as a pet?",
    ),
    "favorite_color": (
        "What is {N}'s favorite color?",
        "Which color does {N} like best?",
        "What color does {N} prefer?",
    ),
}

MAX_DISTRACTORS = 10
"""Upper bound on ``distractors_per_doc`` (every attribute list has at least 13 spare values)."""


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


# ---------------------------------------------------------------------------------------------- config


def _check(cond: bool, name: str, value: Any, need: str, owner: str = "WorldConfig") -> None:
    if not cond:
        raise ConfigError(f"{owner}.{name}={value!r} is invalid: {need}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_doc_options(
    attributes: Any, questions_per_doc: Any, distractors_per_doc: Any, owner: str = "WorldConfig"
) -> None:
    _check(
        isinstance(attributes, tuple) and len(attributes) > 0 and all(a in ATTRIBUTES for a in attributes),
        "attributes",
        attributes,
        f"give a non-empty tuple drawn from {ATTRIBUTES}",
        owner,
    )
    _check(
        len(set(attributes)) == len(attributes), "attributes", attributes, "list each attribute once", owner
    )
    _check(
        questions_per_doc is None
        or (_is_int(questions_per_doc) and 1 <= questions_per_doc <= len(attributes)),
        "questions_per_doc",
        questions_per_doc,
        f"must be None (one per attribute) or an integer in [1, {len(attributes)}] (one per attribute at most)",
        owner,
    )
    _check(
        _is_int(distractors_per_doc) and 0 <= distractors_per_doc <= MAX_DISTRACTORS,
        "distractors_per_doc",
        distractors_per_doc,
        f"must be an integer in [0, {MAX_DISTRACTORS}]",
        owner,
    )


@dataclass
class WorldConfig:
    """How to generate a synthetic world; the same config always gives byte-identical documents.

    Example:
        >>> WorldConfig(seed=3, n_entities=500, attributes=("birth_city", "employer")).n_entities
        500
    """

    seed: int = 0
    """World seed: fixes the invented cities and companies, the people and every wording choice."""
    n_entities: int = 1000
    """Number of people in the world (one document each)."""
    attributes: tuple[str, ...] = ATTRIBUTES
    """Which attributes each person has and the documents state (default: all of ATTRIBUTES)."""
    questions_per_doc: int | None = None
    """Questions per document, each about a different attribute; None = one per attribute."""
    distractors_per_doc: int = 2
    """Distractor sentences per document: same-type values that are not the person's (0 = none)."""
    val_fraction: float = 0.1
    """Fraction of the people whose documents form the validation split."""
    test_fraction: float = 0.1
    """Fraction of the people whose documents form the test split."""

    def __post_init__(self) -> None:
        if isinstance(self.attributes, list):  # from JSON
            self.attributes = tuple(self.attributes)
        _check(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "must be a non-negative integer")
        _check(
            _is_int(self.n_entities) and self.n_entities >= 1,
            "n_entities",
            self.n_entities,
            "must be a positive integer",
        )
        _check_doc_options(self.attributes, self.questions_per_doc, self.distractors_per_doc)
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            _check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0,
                name,
                value,
                "must be a number in [0, 1)",
            )
        n_train = (
            self.n_entities
            - _split_size(self.n_entities, self.val_fraction)
            - _split_size(self.n_entities, self.test_fraction)
        )
        _check(
            n_train >= 1,
            "val_fraction",
            self.val_fraction,
            f"with test_fraction={self.test_fraction} and n_entities={self.n_entities} "
            "no entity is left for the train split",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``attributes`` as a list)."""
        data = dataclasses.asdict(self)
        data["attributes"] = list(self.attributes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer version) warn instead of failing."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"Ignoring unknown WorldConfig keys {unknown}.", UserWarning, stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


def _split_size(n: int, fraction: float) -> int:
    # Round half up (Python's round() is banker's: 2.5 -> 2), so sizes are what a reader expects.
    return math.floor(n * fraction + 0.5)


# ------------------------------------------------------------------------------------------ generation


@dataclass
class _Person:
    first: str
    last: str
    female: bool

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"


@dataclass
class _Sentence:
    template: str
    values: dict[str, str]
    side: _Person | None = None
    relation: str = ""
    is_distractor: bool = False


def _draw_person(rng: random.Random, name_class: int, taken: set[str]) -> _Person:
    """A person whose full name falls in ``name_class`` and is not in ``taken``."""
    while True:
        first, last = _word(rng, 2, 3), _word(rng, 2, 3)
        full = f"{first} {last}"
        if _name_class(full) == name_class and full not in taken:
            return _Person(first, last, rng.random() < 0.5)


def _draw_side_person(rng: random.Random, entity: _Person, relation: str, used_first: set[str]) -> _Person:
    """Somebody in the entity's life; siblings share the surname, so only the first name tells them apart."""
    while True:
        first = _word(rng, 2, 3)
        last = entity.last if relation in _SHARES_SURNAME else _word(rng, 2, 3)
        if first in used_first or _name_class(f"{first} {last}") != _SIDE:
            continue
        used_first.add(first)
        female = {"brother": False, "sister": True}.get(relation, rng.random() < 0.5)
        return _Person(first, last, female)


def _refs(person: _Person, mode: str) -> dict[str, str]:
    """Placeholders referring to the entity: by full name, first name, or pronoun."""
    pron = ("she", "her", "her") if person.female else ("he", "his", "him")
    if mode == "pronoun":
        s, p = pron[0], pron[1]
        refs = {"S": s.capitalize(), "s": s, "P": p.capitalize(), "p": p}
    else:
        name = person.full if mode == "full" else person.first
        refs = {"S": name, "s": name, "P": f"{name}'s", "p": f"{name}'s"}
    refs.update(ps=pron[0], pp=pron[1])
    return refs


def _make_document(
    rng: random.Random,
    vocab: dict[str, tuple[str, ...]],
    entity: _Person,
    doc_id: str,
    attributes: tuple[str, ...],
    questions_per_doc: int | None,
    distractors_per_doc: int,
) -> Document:
    facts = {attr: rng.choice(vocab[attr]) for attr in attributes}

    # Fact sentences: pair up attributes that real text often states together, then shuffle.
    remaining = list(attributes)
    units: list[tuple[str, ...]] = []
    for pair in (("birth_city", "birth_year"), ("employer", "profession")):
        if all(a in remaining for a in pair) and rng.random() < _COMBINE_PROBABILITY:
            units.append(pair)
            for a in pair:
                remaining.remove(a)
    units.extend((a,) for a in remaining)
    rng.shuffle(units)
    sentences = [_Sentence(rng.choice(_FACT_TEMPLATES[unit]), {a: facts[a] for a in unit}) for unit in units]

    # Distractors: spread over the attributes (round-robin over a shuffled order), each value distinct
    # from the fact and from the other distractors, so the document holds exactly one correct span.
    order = list(attributes)
    rng.shuffle(order)
    used_values = {attr: {facts[attr]} for attr in attributes}
    used_first = {entity.first}
    distractors: list[dict[str, Any]] = []
    for k in range(distractors_per_doc):
        attr = order[k % len(order)]
        value = rng.choice([v for v in vocab[attr] if v not in used_values[attr]])
        used_values[attr].add(value)
        template = rng.choice(_DISTRACTOR_TEMPLATES[attr])
        side, relation = None, "self"
        if "{D}" in template:
            relation = rng.choice(_RELATIONS)
            side = _draw_side_person(rng, entity, relation, used_first)
        distractors.append(
            {
                "attribute": attr,
                "value": value,
                "person": side.full if side else entity.full,
                "relation": relation,
            }
        )
        # Never first: the document opens by naming its entity. Inserted at a random later position.
        sentence = _Sentence(template, {"v": value}, side, relation, is_distractor=True)
        sentences.insert(rng.randint(1, len(sentences)), sentence)

    # Render. The first sentence names the entity in full; after a distractor (which introduces someone
    # else, possibly of the same gender) use the first name, never a pronoun that could be misread.
    parts: list[str] = []
    previous_distractor = False
    for i, sentence in enumerate(sentences):
        if i == 0:
            mode = "full"
        elif previous_distractor:
            mode = "first"
        else:
            mode = rng.choice(("pronoun", "pronoun", "first"))
        fields = _refs(entity, mode)
        for key, value in sentence.values.items():
            fields[key] = value
            fields[f"a_{key}"] = _article(value)
        if sentence.side is not None:
            fields["D"] = sentence.side.full
            fields["rel"] = sentence.relation
        text = sentence.template.format(**fields)
        parts.append(text[0].upper() + text[1:])
        previous_distractor = sentence.is_distractor
    context = " ".join(parts)

    asked = list(attributes)
    if questions_per_doc is not None:
        chosen = set(rng.sample(asked, questions_per_doc))
        asked = [a for a in asked if a in chosen]  # keep the config's order: stable, readable files
    qas = tuple(
        QA(
            qid=f"{doc_id}-{attr}",
            question=rng.choice(_QUESTION_TEMPLATES[attr]).format(N=entity.full),
            answers=(facts[attr],),
            metadata={"attribute": attr},
        )
        for attr in asked
    )
    return Document(
        doc_id=doc_id,
        context=context,
        qas=qas,
        title=entity.full,
        metadata={"entity": entity.full, "facts": facts, "distractors": distractors},
    )


def _rng(seed: int, stream: str, index: int) -> random.Random:
    # String seeds go through SHA-512 inside random.seed: stable across runs, platforms and
    # PYTHONHASHSEED. One generator per entity means entity i does not depend on n_entities.
    return random.Random(f"mac-memory/synthetic/{seed}/{stream}/{index}")


def generate_world(config: WorldConfig) -> dict[str, list[Document]]:
    """Generate the world of ``config`` as ``{"train": [...], "val": [...], "test": [...]}``.

    The split is by entity (each person's one document lands in exactly one split); documents keep
    their index order inside a split. ``doc_id`` is ``syn-<seed>-<index>``, ``qid`` is
    ``<doc_id>-<attribute>``. ``Document.metadata`` holds ``entity``, ``facts`` (attribute -> value)
    and ``distractors`` (attribute, value, person, relation of every distractor sentence).
    Entity ``i`` does not depend on ``n_entities``: a smaller world's documents are a prefix of a
    larger one's (only the split assignment changes).
    """
    vocab = _vocabulary(config.seed)
    taken: set[str] = set()
    docs: list[Document] = []
    for index in range(config.n_entities):
        rng = _rng(config.seed, "world", index)
        entity = _draw_person(rng, _WORLD, taken)
        taken.add(entity.full)
        docs.append(
            _make_document(
                rng,
                vocab,
                entity,
                f"syn-{config.seed}-{index}",
                config.attributes,
                config.questions_per_doc,
                config.distractors_per_doc,
            )
        )

    order = list(range(config.n_entities))
    random.Random(f"mac-memory/synthetic/{config.seed}/split").shuffle(order)
    n_test = _split_size(config.n_entities, config.test_fraction)
    n_val = _split_size(config.n_entities, config.val_fraction)
    test, val = set(order[:n_test]), set(order[n_test : n_test + n_val])
    splits: dict[str, list[Document]] = {"train": [], "val": [], "test": []}
    for index, doc in enumerate(docs):
        splits["test" if index in test else "val" if index in val else "train"].append(doc)
    logger.debug("synthetic world seed=%d: %s", config.seed, {k: len(v) for k, v in splits.items()})
    return splits


def iter_documents(
    seed: int = 0,
    n: int | None = None,
    *,
    stream: int = 0,
    attributes: tuple[str, ...] = ATTRIBUTES,
    questions_per_doc: int | None = None,
    distractors_per_doc: int = 2,
) -> Iterator[Document]:
    """Documents about fresh people, endlessly (or ``n`` of them), for teaching a base LM to read.

    Same vocabulary (cities, companies) as the world of ``seed`` but a separate random stream, and names
    that can never be a world entity's (whatever its size). ``stream`` picks one of many independent
    sequences over that same vocabulary: use different streams (not different seeds, which change the
    cities and companies) for, e.g., a tokenizer corpus and the training examples. Fresh people may
    repeat among themselves in very long streams; that is harmless for reading practice. ``doc_id`` is
    ``syn-<seed>-fresh<stream>-<index>``.
    """
    owner = "iter_documents"
    _check(_is_int(seed) and seed >= 0, "seed", seed, "must be a non-negative integer", owner)
    _check(
        n is None or (_is_int(n) and n >= 0),
        "n",
        n,
        "must be None (endless) or a non-negative integer",
        owner,
    )
    _check(_is_int(stream) and stream >= 0, "stream", stream, "must be a non-negative integer", owner)
    if isinstance(attributes, list):
        attributes = tuple(attributes)
    _check_doc_options(attributes, questions_per_doc, distractors_per_doc, owner)
    # Validation above runs at call time; the generator below runs lazily.
    return _fresh_documents(seed, n, stream, attributes, questions_per_doc, distractors_per_doc)


def _fresh_documents(
    seed: int,
    n: int | None,
    stream: int,
    attributes: tuple[str, ...],
    questions_per_doc: int | None,
    distractors_per_doc: int,
) -> Iterator[Document]:
    vocab = _vocabulary(seed)
    index = 0
    while n is None or index < n:
        rng = _rng(seed, f"fresh{stream}", index)
        entity = _draw_person(rng, _FRESH, set())
        yield _make_document(
            rng,
            vocab,
            entity,
            f"syn-{seed}-fresh{stream}-{index}",
            attributes,
            questions_per_doc,
            distractors_per_doc,
        )
        index += 1


def write_world(out_dir: PathLike, config: WorldConfig) -> dict[str, Path]:
    """Generate the world and write ``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` into ``out_dir``.

    Returns the path of each split. The same config always writes byte-identical files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for split, docs in generate_world(config).items():
        paths[split] = out / f"{split}.jsonl"
        write_stream(paths[split], docs)
    return paths
