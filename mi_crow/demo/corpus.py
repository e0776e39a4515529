"""Deterministic English-like corpus with planted, labelled concepts.

The demo pipeline needs text whose ground truth is known: which concepts a sample
mentions and exactly where. Templates draw marker words from ``CONCEPTS``; labels
are then recomputed from the final text, so a label can never disagree with it.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# Marker words are unique across concepts and never appear in neutral vocabulary,
# so a whole-word match identifies the concept unambiguously.
CONCEPTS: dict[str, tuple[str, ...]] = {
    "animals": (
        "cat", "dog", "horse", "rabbit", "fox", "owl", "mouse", "bear", "lion", "tiger", "wolf", "duck",
    ),
    "colors": ("red", "blue", "green", "yellow", "purple", "pink", "black", "white", "brown", "grey"),
    "numbers": ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve"),
    "weather": ("rain", "snow", "wind", "storm", "fog", "thunder", "hail", "frost", "sunshine", "drizzle"),
    "food": ("bread", "cheese", "apple", "soup", "rice", "cake", "pasta", "honey", "butter", "pie"),
    "emotions": ("happy", "sad", "angry", "afraid", "proud", "calm", "lonely", "excited", "nervous", "glad"),
    "sports": (
        "football", "tennis", "hockey", "golf", "rugby", "baseball", "basketball", "volleyball", "boxing",
    ),
    "music": ("piano", "guitar", "violin", "drum", "flute", "trumpet", "cello", "harp", "banjo"),
}  # fmt: skip

_NAMES = ("anna", "ben", "clara", "david", "emma", "felix", "grace", "henry", "iris", "jack", "lucy", "sam")
_PLACES = ("garden", "kitchen", "river", "park", "school", "market", "station", "library", "field", "house")
_TIMES = ("this morning", "every evening", "yesterday", "last week", "at noon", "on sunday", "after lunch")

# Slots: {name}, {name2}, {place}, {time}, and {<concept>} / {<concept>2} for marker words.
_CONCEPT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "animals": (
        "the {animals} sat quietly near the {place}.",
        "{name} saw a {animals} running across the {place} {time}.",
        "a small {animals} was sleeping by the {place}.",
        "the {animals} and the {animals2} played together in the {place}.",
        "{name} fed the {animals} {time}.",
        "there is a {animals} living behind the {place}.",
    ),
    "colors": (
        "{name} painted the door {colors} {time}.",
        "the walls of the {place} were {colors} and {colors2}.",
        "{name} wore a {colors} coat to the {place}.",
        "her favourite color is {colors}.",
        "the old car was painted {colors}.",
    ),
    "numbers": (
        "{name} counted {numbers} boxes in the {place}.",
        "there were {numbers} people waiting at the {place}.",
        "the train left at {numbers} o'clock {time}.",
        "{name} bought {numbers} tickets and {numbers2} maps.",
        "we walked for {numbers} hours to reach the {place}.",
    ),
    "weather": (
        "the {weather} started {time} and kept going.",
        "{name} stayed inside the {place} because of the {weather}.",
        "heavy {weather} covered the {place}.",
        "the forecast said {weather} and then {weather2}.",
        "there was a lot of {weather} near the {place} {time}.",
    ),
    "food": (
        "{name} ate some {food} in the {place}.",
        "we made {food} and {food2} for dinner {time}.",
        "the {food} on the table smelled very good.",
        "{name} bought fresh {food} at the {place}.",
        "a plate of {food} was waiting in the {place}.",
    ),
    "emotions": (
        "{name} felt {emotions} {time}.",
        "everyone in the {place} was {emotions}.",
        "{name} looked {emotions} and a little {emotions2}.",
        "after the news {name} became very {emotions}.",
        "it is normal to feel {emotions} sometimes.",
    ),
    "sports": (
        "{name} played {sports} at the {place} {time}.",
        "the {sports} match ended late {time}.",
        "{name} and {name2} watched {sports} on television.",
        "our team won the {sports} game.",
        "{name} likes {sports} more than {sports2}.",
    ),
    "music": (
        "{name} played the {music} {time}.",
        "the sound of a {music} came from the {place}.",
        "{name} is learning to play the {music}.",
        "a {music} and a {music2} were on the stage.",
        "{name} bought a new {music} at the {place}.",
    ),
}

# Sentences mixing two concepts give the probing stage overlapping positives.
_MIXED_TEMPLATES: tuple[str, ...] = (
    "the {colors} {animals} ran to the {place}.",
    "{name} gave the {animals} some {food}.",
    "the {animals} was {emotions} during the {weather}.",
    "{name} saw {numbers} {colors} birds {time}.",
    "{name} felt {emotions} after the {sports} match.",
    "{name} played the {music} during the {weather}.",
    "{name} ate {numbers} slices of {food}.",
    "the {colors} {music} stood in the corner of the {place}.",
)

_NEUTRAL_TEMPLATES: tuple[str, ...] = (
    "{name} walked to the {place} {time}.",
    "the door of the {place} was open.",
    "{name} wrote a long letter to {name2}.",
    "we waited at the {place} for a while.",
    "{name} read a book in the {place} {time}.",
    "the meeting started {time}.",
    "nobody knew the answer to the question.",
    "{name} and {name2} talked about the plan.",
    "the road to the {place} was long and quiet.",
    "{name} forgot the keys at the {place}.",
    "it was a normal day at the {place}.",
    "{name} cleaned the {place} {time}.",
)

_MIN_WORDS = 8
_SLOT = re.compile(r"\{([a-z]+?)(2?)\}")


@dataclass(frozen=True)
class Sample:
    text: str
    concepts: tuple[str, ...]


@cache
def _marker_pattern(concept: str) -> re.Pattern[str]:
    words = sorted(CONCEPTS[concept], key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)


def concept_token_mask(text: str, concept: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of ``concept``'s marker words in ``text``."""
    if concept not in CONCEPTS:
        raise KeyError(f"unknown concept {concept!r}; known: {sorted(CONCEPTS)}")
    return [m.span() for m in _marker_pattern(concept).finditer(text)]


def concepts_in(text: str) -> tuple[str, ...]:
    """Concepts with at least one marker word in ``text``, in ``CONCEPTS`` order."""
    return tuple(c for c in CONCEPTS if _marker_pattern(c).search(text))


def _slot_pool(slot: str) -> tuple[str, ...]:
    if slot in CONCEPTS:
        return CONCEPTS[slot]
    pools = {"name": _NAMES, "place": _PLACES, "time": _TIMES}
    if slot not in pools:
        raise ValueError(f"unknown template slot {slot!r}")
    return pools[slot]


def _fill(template: str, rng: random.Random) -> str:
    chosen: dict[str, str] = {}

    def pick(match: re.Match[str]) -> str:
        slot, second = match.group(1), bool(match.group(2))
        pool = _slot_pool(slot)
        if second and slot in chosen:
            # "the cat and the cat" reads badly; the second slot of a kind differs.
            pool = tuple(w for w in pool if w != chosen[slot])
        word = rng.choice(pool)
        chosen.setdefault(slot, word)
        return word

    return _SLOT.sub(pick, template)


def _concept_sentence(concept: str, rng: random.Random, mixed_prob: float = 0.25) -> str:
    mixed = [t for t in _MIXED_TEMPLATES if "{" + concept + "}" in t]
    if mixed and rng.random() < mixed_prob:
        return _fill(rng.choice(mixed), rng)
    return _fill(rng.choice(_CONCEPT_TEMPLATES[concept]), rng)


def _neutral_sentence(rng: random.Random) -> str:
    return _fill(rng.choice(_NEUTRAL_TEMPLATES), rng)


def _lengthen(text: str, rng: random.Random) -> str:
    # Very short samples give the model too little context per sample; filler keeps labels intact.
    if len(text.split()) < _MIN_WORDS:
        text = f"{text} {_neutral_sentence(rng)}"
    return text


def _concept_sample_text(rng: random.Random) -> str:
    concept = rng.choice(tuple(CONCEPTS))
    first = _concept_sentence(concept, rng)
    roll = rng.random()
    if roll < 0.45:
        return _lengthen(first, rng)
    if roll < 0.75:
        return f"{first} {_neutral_sentence(rng)}"
    return f"{first} {_concept_sentence(rng.choice(tuple(CONCEPTS)), rng)}"


def _neutral_sample_text(rng: random.Random) -> str:
    first = _neutral_sentence(rng)
    if rng.random() < 0.4:
        return f"{first} {_neutral_sentence(rng)}"
    return _lengthen(first, rng)


def generate_corpus(n_samples: int, seed: int = 0, neutral_fraction: float = 0.2) -> list[Sample]:
    """Generate ``n_samples`` short labelled samples, identical for identical arguments.

    Exactly ``round(n_samples * neutral_fraction)`` samples are neutral (no concept),
    placed at random positions.
    """
    if n_samples < 0:
        raise ValueError("n_samples must be >= 0")
    if not 0.0 <= neutral_fraction <= 1.0:
        raise ValueError("neutral_fraction must be in [0, 1]")
    # A private Random keeps the corpus independent of global random state.
    rng = random.Random(seed)
    n_neutral = round(n_samples * neutral_fraction)
    neutral_at = set(rng.sample(range(n_samples), n_neutral))
    samples: list[Sample] = []
    for i in range(n_samples):
        text = _neutral_sample_text(rng) if i in neutral_at else _concept_sample_text(rng)
        samples.append(Sample(text=text, concepts=concepts_in(text)))
    return samples


def write_corpus(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples as JSONL with fields ``text`` and ``concepts``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps({"text": s.text, "concepts": list(s.concepts)}) + "\n")
    return path


def read_corpus(path: str | Path) -> list[Sample]:
    """Read a JSONL corpus written by :func:`write_corpus`."""
    samples: list[Sample] = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                samples.append(Sample(text=row["text"], concepts=tuple(row.get("concepts", ()))))
    return samples
