"""Degenerate captions: repeated phrases and dangling endings, the failure modes of CIDEr-optimised models.

A caption is degenerate when it repeats a word pair ("a man in a red shirt in a red shirt": "a red" and
"red shirt" occur twice), says the same word twice in a row ("a a dog"), or ends in a word that cannot end
an English caption ("a dog runs on the"). SCST with a CIDEr reward is known to drift towards such captions,
so the share of them is worth watching next to the metrics.

Two choices keep most human captions from being flagged, measured on the 35,460 Flickr8k reference captions:

* a repeated pair made of function words only ("in a", "on the", "with a") is not a repetition: natural
  captions reuse them ("a man in a red shirt stands in a field"). Counting them would flag 4.0% of the
  references; without them 2.35% are (multi-subject captions such as "a black and white dog and a
  brown and white dog", which a pair-based rule cannot tell from a stutter).
* the dangling words are those that need a following noun phrase: articles, possessive determiners,
  conjunctions, and the prepositions that are not also verb particles. "on", "in", "by", "up", "out",
  "off", "down", "over", "around", "behind", "inside", "outside" are left out because captions end in them
  ("a boy with a hat on", "a dog jumps in", "a cyclist rides by"; 189 references end in "on", 47 in
  "by"), and so is "her", which is also an object pronoun ("a man looks at her": 138 references).
  With this list 18 references (0.05%) end in a dangling word: half are truncated ("a little girl
  feeds a"), the rest strand a preposition ("a child is looking at").

In all, 2.4% of the Flickr8k references are flagged: that is the floor to compare a model's share with.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from caption.data.vocab import tokenize

ARTICLES = frozenset({"a", "an", "the"})
POSSESSIVES = frozenset({"my", "your", "his", "its", "our", "their"})  # not "her": also an object pronoun
CONJUNCTIONS = frozenset({"and", "or", "but", "nor", "while", "as", "than", "because"})
PREPOSITIONS = frozenset({
    "of", "with", "at", "to", "for", "from", "into", "onto", "toward", "towards", "among", "between",
    "during", "upon", "via",
})  # those that are not also verb particles (see the module docstring)

#: Words a caption cannot end in.
DANGLING_WORDS = ARTICLES | POSSESSIVES | CONJUNCTIONS | PREPOSITIONS

#: Function words: a repeated pair of two of them ("in a" twice) is not counted as a repetition.
FUNCTION_WORDS = DANGLING_WORDS | frozenset({"in", "on", "by", "her", "is", "are", "up", "out", "off", "down"})


def repeated_pair(words: Sequence[str]) -> tuple[str, str] | None:
    """The first word pair that makes the caption repetitive (see ``is_degenerate``), or None."""
    seen: set[tuple[str, str]] = set()
    for pair in zip(words, words[1:]):
        if pair[0] == pair[1]:
            return pair
        if pair in seen and not (pair[0] in FUNCTION_WORDS and pair[1] in FUNCTION_WORDS):
            return pair
        seen.add(pair)
    return None


def is_degenerate(words: Sequence[str]) -> bool:
    """True when the (tokenised) caption repeats a word pair, doubles a word, or ends in a dangling word.

    A repeated pair of function words only ("in a ... in a") does not count; an empty caption is not
    degenerate (it is empty).
    """
    words = list(words)
    if not words:
        return False
    return words[-1] in DANGLING_WORDS or repeated_pair(words) is not None


def degenerate_share(captions: Iterable[str]) -> float:
    """The fraction of captions (strings, tokenised with ``caption.data.vocab.tokenize``) that are degenerate.

    0.0 for no captions.
    """
    total = flagged = 0
    for text in captions:
        total += 1
        flagged += is_degenerate(tokenize(text))
    return flagged / total if total else 0.0
