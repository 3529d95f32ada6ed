"""CIDEr-D, the reward of self-critical sequence training (SCST), in pure Python.

The arithmetic is that of ``cider/pyciderevalcap/ciderD/ciderD_scorer.py`` in ruotianluo's
self-critical.pytorch (the same as pycocoevalcap's ``cider_scorer.py``) in its "corpus" df mode, except
that the document frequencies are counted ONCE, from a training reference corpus given to the constructor,
rather than from the references of each call:

* n-grams of orders 1..n (n=4) of already-tokenised captions;
* each caption is a TF-IDF vector per order, ``tf * (ref_len - log(max(1, df)))`` with
  ``ref_len = log(number of images in the corpus)`` (an n-gram absent from the corpus has df 0, so its
  weight is ``tf * ref_len``);
* per order, ``sum_g min(hyp[g], ref[g]) * ref[g] / (|hyp| |ref|)`` (the clipping of CIDEr-D), times the
  Gaussian length penalty ``exp(-(len_hyp - len_ref)^2 / (2 sigma^2))`` (sigma=6);
* averaged over the references and over the orders, times 10.

As in the original, the "length" of a caption is its number of bigrams (``len(words) - 1``; 0 for an
empty or one-word caption), so a length difference is the word-count difference except between an empty
and a one-word caption.

SCST scores K sampled captions of each image against that image's references at every step: pass
``reference_keys`` (e.g. image ids) and each image's references are vectorised once and reused across the
K samples and across steps (an LRU cache of ``cache_size`` reference sets).

Timing, measured on real Flickr8k captions (df from the 6,000 train images, eos on; 16 train images x 5
candidates, real captions of 8-12 words (9.8 on average) standing in for samples, against each image's
5 references; CPython 3.11 on a shared 2-core machine, medians of 30 calls): a ``scores`` call takes
about 3.1 ms when the references are cached by ``reference_keys`` (7.9 ms when all 16 images are new, or
without keys), and up to 9 ms while other jobs loaded the machine; 50 images x 5 candidates about 17 ms
cached. pycocoevalcap's CiderScorer takes 55 ms for the same 16 x 5 (it re-counts document frequencies
and re-vectorises the references for every candidate). Building the scorer from the Flickr8k train split
(30,000 captions) takes about 1 s.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from caption.data.vocab import tokenize

Ngram = tuple[str, ...]


def ngram_counts(words: Sequence[str], n: int) -> list[dict[Ngram, int]]:
    """Counts of the n-grams of orders 1..n (one dict per order, in order of first appearance)."""
    words = list(words)
    out = []
    for k in range(1, n + 1):
        counts: dict[Ngram, int] = {}
        for ngram in zip(*[words[i:] for i in range(k)]):
            counts[ngram] = counts.get(ngram, 0) + 1
        out.append(counts)
    return out


def _check_tokens(words: object, what: str) -> None:
    if isinstance(words, str):
        raise TypeError(f"{what} must be a list of words, not the string {words[:40]!r}: tokenise it "
                        "(caption.data.vocab.tokenize, or build the scorer with CiderD.from_captions)")


class _Vector:
    """A caption's TF-IDF weights per order, their Euclidean norms, and its length (number of bigrams)."""

    __slots__ = ("weights", "norms", "length")

    def __init__(self, weights: list[dict[Ngram, float]], norms: list[float], length: int) -> None:
        self.weights = weights
        self.norms = norms
        self.length = length


class _ReferenceSet:
    """One image's references: per order an inverted index n-gram -> (r, weight, r', weight', ...) over
    the references that have it, and each reference's norms and length."""

    __slots__ = ("index", "norms", "lengths")

    def __init__(self, vectors: list[_Vector]) -> None:
        index: list[dict[Ngram, tuple]] = []
        for k in range(len(vectors[0].weights)):
            order: dict[Ngram, tuple] = {}
            for r, vector in enumerate(vectors):
                for ngram, weight in vector.weights[k].items():
                    previous = order.get(ngram)
                    order[ngram] = (r, weight) if previous is None else previous + (r, weight)
            index.append(order)
        self.index = index
        self.norms = [vector.norms for vector in vectors]
        self.lengths = [vector.length for vector in vectors]


class CiderD:
    """CIDEr-D with document frequencies from a fixed reference corpus.

    ``references`` holds, for each image of the corpus (e.g. the training split), the token lists of its
    reference captions; ``ref_len = log(number of images)``. With ``eos`` set (e.g. ``"<eos>"``), that
    token is appended to every candidate and every reference (the corpus included) before n-gram
    counting, so that how a caption ends is scored: a caption that stops after a dangling "a" gets no credit
    for an "a <eos>" bigram that no reference has (ruotianluo's SCST scores the end token the same way).
    ``clip=False`` and ``length_penalty=False`` give plain CIDEr's cosine similarity (no clipping of the
    candidate's weights, no Gaussian penalty).

    ``cache_size`` bounds the LRU cache of vectorised reference sets (``None``: unbounded). A set of 5
    Flickr8k references takes about 32 KB, so the default 30,000 (Flickr8k's or Flickr30k's whole train
    split) is at most about 1 GB; COCO's 113k train images would need about 3.6 GB to be all cached.
    """

    def __init__(
        self,
        references: Iterable[Sequence[Sequence[str]]],
        n: int = 4,
        sigma: float = 6.0,
        *,
        eos: str | None = None,
        clip: bool = True,
        length_penalty: bool = True,
        cache_size: int | None = 30_000,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.n = n
        self.sigma = float(sigma)
        self.eos = eos
        self.clip = clip
        self.length_penalty = length_penalty
        self.cache_size = cache_size

        document_frequency: Counter[Ngram] = Counter()
        images = 0
        for refs in references:
            images += 1
            seen: set[Ngram] = set()
            for ref in refs:
                _check_tokens(ref, "a reference")
                for counts in ngram_counts(self._with_eos(ref), n):
                    seen.update(counts)
            document_frequency.update(seen)
        if images == 0:
            raise ValueError("CiderD needs a non-empty reference corpus for its document frequencies")
        self.num_images = images
        self.ref_len = float(np.log(float(images)))
        # log(max(1, df)) is 0 for df 0 and df 1 alike: only n-grams in 2 or more images are kept.
        frequent = [(ngram, df) for ngram, df in document_frequency.items() if df > 1]
        logs = np.log(np.array([df for _, df in frequent], dtype=np.float64)).tolist()
        self._log_df: dict[Ngram, float] = {ngram: log for (ngram, _), log in zip(frequent, logs)}
        self._cache: OrderedDict[Hashable, _ReferenceSet] = OrderedDict()
        self._penalties: dict[int, float] = {}

    @classmethod
    def from_captions(cls, captions: Iterable[Iterable[str]], **kwargs) -> CiderD:
        """Build from caption strings (one list per image), tokenised with ``caption.data.vocab.tokenize``."""
        return cls(([tokenize(text) for text in texts] for texts in captions), **kwargs)

    def clear_cache(self) -> None:
        self._cache.clear()

    def scores(
        self,
        candidates: Sequence[Sequence[str]],
        references: Sequence[Sequence[Sequence[str]]],
        reference_keys: Sequence[Hashable] | None = None,
    ) -> np.ndarray:
        """CIDEr-D of each candidate against its references (``references[i]`` for ``candidates[i]``).

        ``reference_keys[i]`` names the reference set ``references[i]`` (e.g. its image id): sets are
        vectorised once per key and kept in the cache, so a key must always name the same references.
        Without keys, a reference set is still vectorised once per call for candidates that share the
        same list object. Candidates are words without the end token (it is appended when ``eos`` is set).
        """
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference sets")
        if reference_keys is not None and len(reference_keys) != len(candidates):
            raise ValueError(f"{len(candidates)} candidates but {len(reference_keys)} reference keys")
        local: dict[int, _ReferenceSet] = {}
        seen: dict[tuple[str, ...], _Vector] = {}  # sampled captions often repeat within a batch
        done: dict[tuple[tuple[str, ...], _ReferenceSet], float] = {}  # keys keep the sets alive
        out = np.empty(len(candidates), dtype=np.float64)
        for i, (words, refs) in enumerate(zip(candidates, references)):
            if reference_keys is None:
                ref_set = local.get(id(refs))
                if ref_set is None:
                    ref_set = local[id(refs)] = self._reference_set(refs)
            else:
                ref_set = self._cached_reference_set(reference_keys[i], refs)
            _check_tokens(words, "a candidate")
            words = tuple(words)
            value = done.get((words, ref_set))
            if value is None:
                vector = seen.get(words)
                if vector is None:
                    vector = seen[words] = self._vector(words)
                value = done[(words, ref_set)] = self._score(vector, ref_set)
            out[i] = value
        return out

    def score(self, candidate: Sequence[str], references: Sequence[Sequence[str]]) -> float:
        """CIDEr-D of one candidate (no caching)."""
        return float(self.scores([candidate], [references])[0])

    # -- internals -------------------------------------------------------------------------------------

    def _with_eos(self, words: Sequence[str]) -> list[str]:
        return [*words, self.eos] if self.eos is not None else list(words)

    def _vector(self, words: Sequence[str]) -> _Vector:
        words = self._with_eos(words)
        ref_len, log_df = self.ref_len, self._log_df.get
        weights: list[dict[Ngram, float]] = []
        norms: list[float] = []
        for k in range(1, self.n + 1):
            ngrams = list(zip(*[words[i:] for i in range(k)]))
            counts = dict.fromkeys(ngrams, 0)
            if len(counts) == len(ngrams):  # the usual case, every tf is 1 (and 1 * x == x exactly)
                order = {ngram: ref_len - log_df(ngram, 0.0) for ngram in ngrams}
            else:
                for ngram in ngrams:
                    counts[ngram] += 1
                order = {ngram: tf * (ref_len - log_df(ngram, 0.0)) for ngram, tf in counts.items()}
            square = 0.0
            for weight in order.values():
                square += weight * weight
            weights.append(order)
            norms.append(math.sqrt(square))
        # The original's length is the number of bigrams: len(words) - 1 (or 0), and 0 when n == 1.
        length = max(len(words) - 1, 0) if self.n > 1 else 0
        return _Vector(weights, norms, length)

    def _reference_set(self, refs: Sequence[Sequence[str]]) -> _ReferenceSet:
        if len(refs) == 0:
            raise ValueError("a candidate has no reference captions")
        _check_tokens(refs, "a reference set")
        for ref in refs:
            _check_tokens(ref, "a reference")
        return _ReferenceSet([self._vector(ref) for ref in refs])

    def _cached_reference_set(self, key: Hashable, refs: Sequence[Sequence[str]]) -> _ReferenceSet:
        ref_set = self._cache.get(key)
        if ref_set is None:
            ref_set = self._cache[key] = self._reference_set(refs)
            if self.cache_size is not None and len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return ref_set

    def _penalty(self, delta: int) -> float:
        if not self.length_penalty:
            return 1.0
        value = self._penalties.get(delta)
        if value is None:
            # np.e ** x in the original: the same Python float power, bit for bit.
            value = self._penalties[delta] = math.e ** (-(float(delta) ** 2) / (2 * self.sigma**2))
        return value

    def _score(self, hyp: _Vector, refs: _ReferenceSet) -> float:
        n, clip, count = self.n, self.clip, len(refs.lengths)
        penalties = [self._penalty(hyp.length - ref_length) for ref_length in refs.lengths]
        mean = 0.0
        for k in range(n):
            index, numerators = refs.index[k], [0.0] * count
            for ngram, weight in hyp.weights[k].items():
                hits = index.get(ngram)
                if hits is None:
                    continue
                pairs = iter(hits)
                for r, ref_weight in zip(pairs, pairs):
                    if clip:  # min(weight, ref_weight), inlined
                        numerators[r] += (weight if weight <= ref_weight else ref_weight) * ref_weight
                    else:
                        numerators[r] += weight * ref_weight
            norm, total = hyp.norms[k], 0.0
            for r in range(count):
                value = numerators[r]
                if norm != 0 and refs.norms[r][k] != 0:
                    value /= norm * refs.norms[r][k]
                total += value * penalties[r]
            mean += total  # sequential, as numpy's mean of n <= 8 values (no compensated sum)
        return mean / n / count * 10.0
