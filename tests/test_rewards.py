"""The CIDEr-D reward: pycocoevalcap's scorer on real Flickr8k captions, a hand computation, eos, caching."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from caption.data.vocab import tokenize
from caption.training.rewards import CiderD


def read_flickr_captions(flickr_dir, split: str, count: int) -> list[list[list[str]]]:
    """The tokenised captions of the first ``count`` images of an official Flickr8k split."""
    names = (flickr_dir / f"Flickr_8k.{split}Images.txt").read_text().split()[:count]
    captions: dict[str, list[list[str]]] = {name: [] for name in names}
    with open(flickr_dir / "Flickr8k.token.txt", encoding="utf-8") as handle:
        for line in handle:
            key, _, text = line.rstrip("\n").partition("\t")
            name = key.rsplit("#", 1)[0]
            if name in captions:
                captions[name].append(tokenize(text))
    assert all(len(texts) == 5 for texts in captions.values())
    return list(captions.values())


@pytest.fixture(scope="module")
def dev_captions(flickr_dir) -> list[list[list[str]]]:
    return read_flickr_captions(flickr_dir, "dev", 50)


def pycocoevalcap_cider(candidates, references, eos=None) -> np.ndarray:
    """pycocoevalcap's CIDEr (its df and ref_len come from the references it is given)."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    end = [eos] if eos else []
    scorer = CiderScorer(n=4, sigma=6.0)
    for words, refs in zip(candidates, references):
        scorer += (" ".join(words + end), [" ".join(ref + end) for ref in refs])
    return scorer.compute_score()[1]


# -- (a) pycocoevalcap on real captions ------------------------------------------------------------------

@pytest.mark.parametrize("eos", [None, "<eos>"])
def test_matches_pycocoevalcap_on_real_flickr8k_captions(dev_captions, eos):
    # pycocoevalcap's cider_scorer.py is already CIDEr-D (clipping and the Gaussian length penalty are in
    # it, as in ruotianluo's ciderD_scorer.py), so the default CiderD is what it must equal.
    references = [texts[1:] for texts in dev_captions]  # 4 references an image, the first caption held out
    held_out = [texts[0] for texts in dev_captions]
    other_image = [dev_captions[(i + 1) % len(dev_captions)][0] for i in range(len(dev_captions))]
    ours = CiderD(references, eos=eos)  # df from exactly the references pycocoevalcap will see
    for candidates in (held_out, other_image):
        theirs = pycocoevalcap_cider(candidates, references, eos)
        mine = ours.scores(candidates, references)
        assert mine.dtype == np.float64 and mine.shape == (len(candidates),)
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
    assert ours.scores(held_out, references).mean() > 5 * ours.scores(other_image, references).mean()


def test_clipping_and_length_penalty_only_lower_scores(dev_captions):
    references = [texts[1:] for texts in dev_captions]
    candidates = [texts[0] for texts in dev_captions]
    full = CiderD(references).scores(candidates, references)
    for clip, length_penalty in ((False, True), (True, False), (False, False)):
        relaxed = CiderD(references, clip=clip, length_penalty=length_penalty).scores(candidates, references)
        assert np.all(relaxed >= full - 1e-12)
        assert np.any(relaxed > full + 1e-6)


# -- (b) by hand -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("clip", "length_penalty"),
                         [(True, True), (True, False), (False, True), (False, False)])
def test_cider_d_by_hand_on_three_captions(clip, length_penalty):
    # Corpus: image A has "a dog runs" and "the dog runs fast", image B has "a cat sits".
    corpus = [[["a", "dog", "runs"], ["the", "dog", "runs", "fast"]], [["a", "cat", "sits"]]]
    scorer = CiderD(corpus, clip=clip, length_penalty=length_penalty)
    candidate = ["a", "dog", "a", "dog", "runs"]
    score = scorer.scores([candidate], [corpus[0]])[0]

    # 2 images, so ref_len = log 2 =: L. Document frequencies (images with the n-gram): "a" is in both
    # (df 2, log df = L, idf = L - L = 0); every other corpus n-gram is in one image (log 1 = 0, idf L);
    # n-grams absent from the corpus have df 0 (log max(1, 0) = 0, idf L). Weight = tf * idf.
    L = math.log(2)
    assert scorer.ref_len == pytest.approx(L)
    # Candidate "a dog a dog runs": 5 words, 4 bigrams (its "length").
    #   1-grams: a tf 2 -> 0, dog tf 2 -> 2L, runs -> L               |h1| = sqrt(4 + 1) L = sqrt(5) L
    #   2-grams: (a dog) tf 2 -> 2L, (dog a) -> L, (dog runs) -> L    |h2| = sqrt(4 + 1 + 1) L = sqrt(6) L
    #   3-grams: (a dog a), (dog a dog), (a dog runs), each L          |h3| = sqrt(3) L
    #   4-grams: (a dog a dog), (dog a dog runs), each L               |h4| = sqrt(2) L
    # Reference 1 "a dog runs": length 2.
    #   1: a 0, dog L, runs L (|r1| = sqrt(2) L); 2: (a dog) L, (dog runs) L (sqrt(2) L);
    #   3: (a dog runs) L (L); 4: nothing (norm 0: the similarity stays 0).
    # Reference 2 "the dog runs fast": length 3.
    #   1: the, dog, runs, fast, each L (2L); 2: (the dog), (dog runs), (runs fast) (sqrt(3) L);
    #   3: (the dog runs), (dog runs fast) (sqrt(2) L); 4: (the dog runs fast) (L).
    # Numerators, sum over the candidate's n-grams of min(h, r) * r (clipped) or h * r (not clipped):
    #   ref 1, order 1: dog min(2L, L) L = L^2 (or 2L^2), runs L^2          -> 2 L^2 (3 L^2)
    #   ref 1, order 2: (a dog) min(2L, L) L = L^2 (or 2L^2), (dog runs) L^2 -> 2 L^2 (3 L^2)
    #   ref 1, order 3: (a dog runs) L^2
    #   ref 2, order 1: dog L^2 (or 2L^2), runs L^2                         -> 2 L^2 (3 L^2)
    #   ref 2, order 2: (dog runs) L^2;  ref 2, orders 3 and 4: no shared n-gram, 0
    # Divided by |h_n| |r_n| (the L^2 cancel):
    k = 2.0 if clip else 3.0
    ref1 = [k / math.sqrt(5 * 2), k / math.sqrt(6 * 2), 1 / math.sqrt(3 * 1), 0.0]
    ref2 = [k / (math.sqrt(5) * 2), 1 / math.sqrt(6 * 3), 0.0, 0.0]
    # Gaussian length penalty, sigma 6: delta 4 - 2 = 2 for ref 1, 4 - 3 = 1 for ref 2.
    p1 = math.exp(-(2**2) / (2 * 6**2)) if length_penalty else 1.0
    p2 = math.exp(-(1**2) / (2 * 6**2)) if length_penalty else 1.0
    # Sum over the 2 references per order, mean over the 4 orders, divided by 2 references, times 10.
    per_order = [p1 * a + p2 * b for a, b in zip(ref1, ref2)]
    expected = sum(per_order) / 4 / 2 * 10
    assert score == pytest.approx(expected, abs=1e-6)
    if clip and length_penalty:
        assert expected == pytest.approx(
            1.25 * (math.exp(-1 / 18) * (2 / math.sqrt(10) + 2 / math.sqrt(12) + 1 / math.sqrt(3))
                    + math.exp(-1 / 72) * (1 / math.sqrt(5) + 1 / math.sqrt(18)))
        )


def test_exact_match_of_a_single_reference_scores_ten():
    # Clipped cosine <= 1 and penalty <= 1, so 10 is the maximum, reached only by the reference itself.
    corpus = [[tokenize("a dog runs on the grass")], [tokenize("a cat sits on a mat")],
              [tokenize("two men ride bikes")]]
    scorer = CiderD(corpus, eos="<eos>")
    ref = corpus[0][0]
    candidates = [ref, ref + ["a"], ref[:-1], ["a", "dog", "runs"], ref + ref]
    got = scorer.scores(candidates, [[ref]] * len(candidates))
    assert got[0] == pytest.approx(10.0, abs=1e-9)
    assert np.all(got[1:] < 10.0 - 1e-3)
    # Several identical references: still exactly 10.
    assert scorer.scores([ref], [[ref, ref, ref]])[0] == pytest.approx(10.0, abs=1e-9)


# -- (c) eos ---------------------------------------------------------------------------------------------

def test_eos_penalises_a_dangling_article(dev_captions):
    references = [
        tokenize("a brown dog runs on the grass"),
        tokenize("a dog running across the grass"),
        tokenize("a brown dog is running on the green grass"),
        tokenize("the dog runs through the grass"),
        tokenize("a dog runs outside on the grass"),
    ]
    clean = tokenize("a brown dog runs on the grass")
    dangling = clean + ["a"]
    corpus = dev_captions + [references]
    drops = {}
    for eos in (None, "<eos>"):
        scorer = CiderD(corpus, eos=eos)
        s_clean, s_dangling = scorer.scores([clean, dangling], [references, references])
        assert s_dangling < s_clean
        drops[eos] = (s_clean - s_dangling) / s_clean
    # With "<eos>" the dangling caption also loses the "grass <eos>" bigram the references share and gains
    # an "a <eos>" bigram none has: it drops further relative to the clean caption.
    assert drops["<eos>"] > drops[None] + 0.02

    # And on the real data: each dev image's first caption, held out, with and without a dangling "a".
    references = [texts[1:] for texts in dev_captions]
    held_out = [texts[0] for texts in dev_captions]
    mean_drops = {}
    for eos in (None, "<eos>"):
        scorer = CiderD(references, eos=eos)
        s_clean = scorer.scores(held_out, references)
        s_dangling = scorer.scores([words + ["a"] for words in held_out], references)
        mean_drops[eos] = float(np.mean((s_clean - s_dangling) / s_clean))
    assert mean_drops[None] > 0
    assert mean_drops["<eos>"] > 1.5 * mean_drops[None]  # measured: 0.125 vs 0.067


# -- (d) caching -----------------------------------------------------------------------------------------

def test_reference_cache_gives_identical_results(dev_captions):
    # SCST's shape: 16 images, 5 samples each (here other captions of the images, truncated variously).
    images = dev_captions[:16]
    scorer = CiderD(dev_captions, eos="<eos>")
    candidates, references, keys = [], [], []
    for i, texts in enumerate(images):
        for j in range(5):
            sample = texts[j][: 4 + 2 * j] if j % 2 else dev_captions[(i + j) % 50][j]
            candidates.append(sample)
            references.append([list(ref) for ref in texts])  # a fresh copy each: no sharing by identity
            keys.append(f"image-{i}")
    candidates[1] = candidates[0]  # duplicated samples are common late in SCST

    uncached = scorer.scores(candidates, references)
    cold = scorer.scores(candidates, references, reference_keys=keys)
    warm = scorer.scores(candidates, references, reference_keys=keys)
    tiny = CiderD(dev_captions, eos="<eos>", cache_size=2)
    evicting = tiny.scores(candidates, references, reference_keys=keys)
    one_by_one = np.array([scorer.score(c, r) for c, r in zip(candidates, references)])
    for other in (cold, warm, evicting, one_by_one):
        assert np.array_equal(uncached, other)
    assert len(tiny._cache) == 2
    assert uncached[0] == uncached[1]

    # A warm call of the SCST shape is fast (about 3 ms measured on a loaded 2-core machine).
    start = time.perf_counter()
    scorer.scores(candidates, references, reference_keys=keys)
    assert time.perf_counter() - start < 0.25


# -- API -------------------------------------------------------------------------------------------------

def test_from_captions_tokenises_like_the_vocabulary():
    captions = [["A dog's ball.", "The DOG runs!"], ["A cat sits on a mat ."]]
    a = CiderD.from_captions(captions, eos="<eos>")
    b = CiderD([[tokenize(t) for t in texts] for texts in captions], eos="<eos>")
    refs = [tokenize(t) for t in captions[0]]
    assert a.num_images == 2 and a.ref_len == pytest.approx(math.log(2))
    assert a.scores([["a", "dog's", "ball"]], [refs])[0] == b.scores([["a", "dog's", "ball"]], [refs])[0]


def test_bad_inputs_are_reported():
    scorer = CiderD([[tokenize("a dog runs")], [tokenize("a cat sits")]])
    with pytest.raises(ValueError, match="reference sets"):
        scorer.scores([["a"]], [])
    with pytest.raises(ValueError, match="reference keys"):
        scorer.scores([["a"]], [[["a"]]], reference_keys=[1, 2])
    with pytest.raises(ValueError, match="no reference"):
        scorer.scores([["a"]], [[]])
    with pytest.raises(TypeError, match="tokenise"):
        scorer.scores(["a dog runs"], [[["a"]]])
    with pytest.raises(TypeError, match="tokenise"):
        CiderD([["a dog runs"]])
    with pytest.raises(ValueError, match="non-empty"):
        CiderD([])
    assert scorer.scores([[]], [[["a", "dog"]]])[0] == 0.0
    assert scorer.scores([], []).shape == (0,)
