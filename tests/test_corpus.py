"""The bundled corpus in data/: reproducible, well-formed, and text -> factors is unique."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SPLIT_SIZES = {"train": 20_000, "valid": 1_000, "test": 1_000}

# The factor value sets documented in data/README.md.
FACTORS = {
    "subject": {"cat", "dog", "bird", "horse", "teacher", "farmer", "doctor", "king"},
    "number": {"singular", "plural"},
    "verb": {"chase", "help", "watch", "follow", "visit", "call", "push", "greet"},
    "tense": {"past", "present", "future"},
    "negation": {"no", "yes"},
    "adjective": {"none", "big", "small", "old"},
    "object": {"fox", "boy", "girl", "baker", "nurse", "queen", "pilot", "sailor"},
    "adverb": {"none", "quickly", "slowly", "quietly"},
}


def load(split):
    with (DATA / f"{split}.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def splits():
    return {split: load(split) for split in SPLIT_SIZES}


def test_regeneration_is_byte_identical(tmp_path):
    subprocess.run(
        [sys.executable, str(DATA / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for split in SPLIT_SIZES:
        name = f"{split}.jsonl"
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name


def test_records_are_well_formed(splits):
    for split, records in splits.items():
        assert len(records) == SPLIT_SIZES[split], split
        for record in records:
            assert set(record) == {"text", *FACTORS}, record
            for factor, values in FACTORS.items():
                assert record[factor] in values, (factor, record)
            words = record["text"].split()
            assert 4 <= len(words) <= 10, record
            assert record["text"] == " ".join(words) == record["text"].lower(), record
            assert words[-1] == ".", record


def test_text_determines_factors(splits):
    factors_of = {}
    for records in splits.values():
        for record in records:
            factors = {k: v for k, v in record.items() if k != "text"}
            assert factors_of.setdefault(record["text"], factors) == factors, record["text"]


def load_generator():
    spec = importlib.util.spec_from_file_location("generate", DATA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BASE = {
    "subject": "cat",
    "number": "singular",
    "verb": "chase",
    "tense": "past",
    "negation": "no",
    "adjective": "none",
    "object": "fox",
    "adverb": "none",
}


@pytest.mark.parametrize(
    "changes, text",
    [
        ({}, "the cat chased the fox ."),
        ({"number": "plural"}, "the cats chased the fox ."),
        ({"negation": "yes"}, "the cat did not chase the fox ."),
        ({"tense": "present"}, "the cat chases the fox ."),
        ({"tense": "present", "number": "plural"}, "the cats chase the fox ."),
        ({"tense": "present", "negation": "yes"}, "the cat does not chase the fox ."),
        ({"tense": "present", "negation": "yes", "number": "plural", "adjective": "old"},
         "the cats do not chase the old fox ."),
        ({"tense": "future", "negation": "yes", "verb": "watch", "adverb": "quickly"},
         "the cat will not watch the fox quickly ."),
        ({"tense": "present", "verb": "push", "subject": "teacher", "object": "queen"},
         "the teacher pushes the queen ."),
    ],
)
def test_grammar_examples(changes, text):
    """Tense, negation, agreement and modifiers are realised as documented."""
    assert load_generator().realise({**BASE, **changes}) == text
