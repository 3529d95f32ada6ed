"""Degenerate captions: repeated phrases and dangling endings, the failure modes of CIDEr-optimised models.

A caption is degenerate when it says the same word twice in a row ("a a dog"), repeats a pair of content
words ("a man in a white shirt and a white shirt") or a three-word phrase with a content word in it ("a
man is sitting on a bench on a bench", "a group of a group of people"), or ends in a word that cannot
end an English caption ("a dog runs on the"). SCST with a CIDEr reward is known to drift towards such
captions, so the share of them is measured next to the metrics (and penalised in SCST's reward).

The rules are chosen so that ordinary captions pass, checked on the 35,000 Flickr8k train and dev
reference captions:

* a repeated pair with a function word in it ("in a", "a white" in "a white dog jumps over a white
  fence") is not a repetition: people reuse them. Counting every repeated pair flagged 4.0% of the
  references; these rules flag 319 (0.9%), nearly all two similar subjects described alike ("a boy in
  green shorts swims past a boy in black shorts", "in front of ... in front of").
* the dangling words are those that need a following noun phrase: articles, possessive determiners,
  conjunctions, and the prepositions that are not also verb particles. "on", "in", "by", "up", "out",
  "off", "down", "over", "around", "behind", "inside", "outside" are left out because captions end in them
  ("a boy with a hat on", "a dog jumps in", "a cyclist rides by"), and so is "her", which is also an
  object pronoun ("a man looks at her"). 15 references end in a dangling word: half are truncated ("a
  little girl feeds a"), the rest strand a preposition ("a child is looking at").

In all, 334 references (0.95%) are flagged: that is the floor to compare a model's share with.
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
FUNCTION_WORDS = DANGLING_WORDS | frozenset(
    {"in", "on", "by", "her", "is", "are", "up", "out", "off", "down"}
)


def repeated_phrase(words: Sequence[str]) -> tuple[str, ...] | None:
    """The first phrase that makes the caption repetitive (see ``is_degenerate``), or None."""
    for first, second in zip(words, words[1:]):
        if first == second:
            return first, second
    seen: set[tuple[str, ...]] = set()
    for n in (2, 3):
        for start in range(len(words) - n + 1):
            phrase = tuple(words[start : start + n])
            content = [word not in FUNCTION_WORDS for word in phrase]
            counts = all(content) if n == 2 else any(content)
            if counts and phrase in seen:
                return phrase
            seen.add(phrase)
    return None


def is_degenerate(words: Sequence[str]) -> bool:
    """True when the (tokenised) caption doubles a word, repeats a pair of content words ("red shirt ...
    red shirt") or a three-word phrase with a content word ("on a bench on a bench"), or ends in a
    dangling word. An empty caption is not degenerate (it is empty).
    """
    words = list(words)
    if not words:
        return False
    return words[-1] in DANGLING_WORDS or repeated_phrase(words) is not None


def degenerate_share(captions: Iterable[str]) -> float:
    """The fraction of captions (strings, tokenised with ``caption.data.vocab.tokenize``) that are degenerate.

    0.0 for no captions.
    """
    total = flagged = 0
    for text in captions:
        total += 1
        flagged += is_degenerate(tokenize(text))
    return flagged / total if total else 0.0
