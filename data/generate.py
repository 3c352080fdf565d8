"""Generate the bundled synthetic sentence corpus with known discrete factors.

Every sentence is built from eight independent categorical factors:

    factor     values                                          realisation
    subject    cat dog bird horse teacher farmer doctor king   "the <noun>" / "the <noun>s"
    number     singular plural                                 plural "-s" on the subject noun,
                                                               verb agreement in the present tense
    verb       chase help watch follow visit call push greet   see the verb group below
    tense      past present future                             see the verb group below
    negation   no yes                                          "not" in the verb group
    adjective  none big small old                              word before the object noun
    object     fox boy girl baker nurse queen pilot sailor     "the [<adjective>] <noun>"
    adverb     none quickly slowly quietly                     word after the object

Sentence template (lower case, whitespace tokenised, always ending in " ."):

    the SUBJECT VERB-GROUP the [ADJECTIVE] OBJECT [ADVERB] .

Verb group, shown for "chase":

    tense     negation  singular subject    plural subject
    past      no        chased              chased
    past      yes       did not chase       did not chase
    present   no        chases              chase
    present   yes       does not chase      do not chase
    future    no        will chase          will chase
    future    yes       will not chase      will not chase

All verbs are regular, so the past form is the same for both numbers. Factor
values are sampled independently and uniformly with ``random.Random(seed)``,
split by split (train, then valid, then test), so the same seed always yields
byte-identical files. Subject and object nouns come from disjoint sets and
every word occupies a fixed slot, so each text determines its factors uniquely;
``check_injective`` asserts this over the whole combinatorial space.

Usage: python data/generate.py [--out data/] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

SUBJECTS = {  # singular -> plural
    "cat": "cats",
    "dog": "dogs",
    "bird": "birds",
    "horse": "horses",
    "teacher": "teachers",
    "farmer": "farmers",
    "doctor": "doctors",
    "king": "kings",
}
VERBS = {  # base -> (present third-person singular, past)
    "chase": ("chases", "chased"),
    "help": ("helps", "helped"),
    "watch": ("watches", "watched"),
    "follow": ("follows", "followed"),
    "visit": ("visits", "visited"),
    "call": ("calls", "called"),
    "push": ("pushes", "pushed"),
    "greet": ("greets", "greeted"),
}
OBJECTS = ("fox", "boy", "girl", "baker", "nurse", "queen", "pilot", "sailor")

# Factor name -> its values, in sampling order.
FACTORS: dict[str, tuple[str, ...]] = {
    "subject": tuple(SUBJECTS),
    "number": ("singular", "plural"),
    "verb": tuple(VERBS),
    "tense": ("past", "present", "future"),
    "negation": ("no", "yes"),
    "adjective": ("none", "big", "small", "old"),
    "object": OBJECTS,
    "adverb": ("none", "quickly", "slowly", "quietly"),
}

SPLITS = {"train": 20_000, "valid": 1_000, "test": 1_000}
MIN_WORDS, MAX_WORDS = 4, 10


def verb_group(verb: str, tense: str, negated: bool, plural: bool) -> list[str]:
    """Realise the verb with tense, negation and subject agreement."""
    third_singular, past = VERBS[verb]
    if tense == "future":
        return ["will", "not", verb] if negated else ["will", verb]
    if tense == "past":
        return ["did", "not", verb] if negated else [past]
    if negated:
        return ["do" if plural else "does", "not", verb]
    return [verb if plural else third_singular]


def noun_phrase(noun: str, adjective: str) -> list[str]:
    """'the [adjective] noun'; the adjective value 'none' adds no word."""
    return ["the", noun] if adjective == "none" else ["the", adjective, noun]


def realise(factors: dict[str, str]) -> str:
    """Turn one assignment of every factor into its sentence."""
    plural = factors["number"] == "plural"
    subject = SUBJECTS[factors["subject"]] if plural else factors["subject"]
    words = [
        "the",
        subject,
        *verb_group(factors["verb"], factors["tense"], factors["negation"] == "yes", plural),
        *noun_phrase(factors["object"], factors["adjective"]),
    ]
    if factors["adverb"] != "none":
        words.append(factors["adverb"])
    words.append(".")
    assert MIN_WORDS <= len(words) <= MAX_WORDS, words
    return " ".join(words)


def all_assignments():
    """Every combination of factor values, as dicts."""
    for values in itertools.product(*FACTORS.values()):
        yield dict(zip(FACTORS, values))


def check_injective() -> int:
    """Assert that no two factor assignments share a text; return the space size."""
    texts = {realise(factors) for factors in all_assignments()}
    size = 1
    for values in FACTORS.values():
        size *= len(values)
    assert len(texts) == size, "two factor assignments realise to the same text"
    return size


def sample_record(rng: random.Random) -> dict[str, str]:
    """Draw every factor uniformly and attach the realised text."""
    factors = {name: rng.choice(values) for name, values in FACTORS.items()}
    return {"text": realise(factors), **factors}


def write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    """One JSON object per line, sorted keys, UTF-8, '\\n' line endings."""
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    space = check_injective()
    rng = random.Random(args.seed)
    splits = {name: [sample_record(rng) for _ in range(n)] for name, n in SPLITS.items()}

    args.out.mkdir(parents=True, exist_ok=True)
    for name, records in splits.items():
        write_jsonl(args.out / f"{name}.jsonl", records)

    train_texts = {r["text"] for r in splits["train"]}
    print(f"combinatorial space: {space} sentences")
    print(f"train: {len(splits['train'])} sentences, {len(train_texts)} distinct")
    for name in ("valid", "test"):
        records = splits[name]
        seen = sum(r["text"] in train_texts for r in records)
        print(f"{name}: {len(records)} sentences, {seen / len(records):.1%} with text in train")


if __name__ == "__main__":
    main()
