"""Degenerate captions: repeated phrases, doubled words, dangling endings."""

from __future__ import annotations

import pytest

from caption.data.vocab import tokenize
from caption.evaluation.degenerate import DANGLING_WORDS, degenerate_share, is_degenerate, repeated_phrase

CASES = [
    # (caption, degenerate?, why)
    ("a man in a red shirt in a red shirt", True, "repeated phrase"),
    ("a dog is running on the grass on the grass", True, "repeated 'the grass'"),
    ("a a dog runs", True, "doubled article"),
    ("a dog dog runs through the field", True, "doubled noun"),
    ("a man rides a bike bike", True, "doubled word at the end"),
    ("a dog runs through the", True, "dangling article"),
    ("a man is sitting on a bench with a", True, "dangling article"),
    ("a dog plays with an", True, "dangling article"),
    ("a girl in a pink dress and", True, "dangling conjunction"),
    ("two dogs play in the snow with", True, "dangling preposition"),
    ("a boy holds his", True, "dangling possessive"),
    ("a group of", True, "dangling 'of'"),
    ("a man stands in front of a building while", True, "dangling 'while'"),
    ("A dog runs into the ...", True, "punctuation is dropped before the check"),
    ("a dog and a cat", False, "single words repeated, no pair repeated"),
    ("a man is sitting on a bench on a bench", True, "repeated 'on a bench'"),
    ("a group of a group of people", True, "repeated 'a group of'"),
    ("a man in a white shirt and a white shirt", True, "repeated 'white shirt'"),
    ("a white dog jumps over a white fence", False,
     "'a white' twice: one content word, and no phrase of three"),
    ("a man in a yellow shirt rides a yellow kayak", False, "'a yellow' twice: one content word"),
    ("a man in a red shirt stands in a field", False, "'in a' twice: function words only"),
    ("a dog with a ball on the grass with a stick", False, "'with a' twice: function words only"),
    ("a black dog chases a brown dog", False, "'dog' twice, pairs all differ"),
    ("a boy with a hat on", False, "'on' is a particle here"),
    ("a dog jumps in", False, "'in' is a particle here"),
    ("a cyclist rides by", False, "'by' is a particle here"),
    ("a man looks at her", False, "'her' is an object pronoun here"),
    ("A Dog's ball is red.", False, "clitic and punctuation"),
    ("", False, "empty"),
]


@pytest.mark.parametrize(("text", "expected", "why"), CASES, ids=[c[0] or "<empty>" for c in CASES])
def test_is_degenerate(text, expected, why):
    assert is_degenerate(tokenize(text)) is expected, why


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("a man in a red shirt in a red shirt", ("red", "shirt")),
        ("a a dog", ("a", "a")),
        ("a dog on a bench on a bench", ("on", "a", "bench")),
        ("a dog and a cat", None),
        ("a man in a hat in a car", None),
    ],
)
def test_repeated_phrase(text, phrase):
    assert repeated_phrase(tokenize(text)) == phrase


def test_dangling_list_leaves_out_particles_and_her():
    for word in ("on", "in", "by", "up", "out", "off", "her", "outside"):
        assert word not in DANGLING_WORDS
    for word in ("a", "an", "the", "with", "of", "and", "at", "to", "for", "from", "his", "their", "its",
                 "into"):
        assert word in DANGLING_WORDS


def test_degenerate_share():
    captions = [text for text, _, _ in CASES]
    expected = sum(flag for _, flag, _ in CASES) / len(CASES)
    assert degenerate_share(captions) == pytest.approx(expected)
    assert degenerate_share(iter(["a dog runs", "a dog runs on the"])) == 0.5
    assert degenerate_share([]) == 0.0
