"""The attention LSTM decoder and batched beam search, on features of real Flickr8k images."""

import numpy as np
import pytest
import torch

from caption.config import DecoderConfig
from caption.data.datasets import pad_captions
from caption.data.vocab import Vocabulary
from caption.decoding.beam import beam_search
from caption.models.decoder import AttentionLSTMDecoder, caption_loss


def _memory(features, rows=None):
    array = features.features if rows is None else features.features[rows]
    return torch.from_numpy(np.asarray(array, dtype=np.float32))  # (B, N, C)


def _train(decoder, memory, captions, item_index, steps, lr):
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=0)
    decoder.train()
    for _ in range(steps):
        logits, alphas = decoder(memory, captions, item_index=item_index)  # (M, T, V), (M, T, N)
        loss, ce = caption_loss(logits, alphas, captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    decoder.eval()
    return ce.item()


@pytest.fixture(scope="module")
def overfit(few_real_images):
    """A decoder trained to memorise one caption for each of eight real images."""
    split, features = few_real_images
    texts = [split.captions[image_id][0] for image_id in split.image_ids]
    vocab = Vocabulary.build(texts, min_count=1, max_length=20)
    captions = pad_captions([vocab.encode(t) for t in texts])  # (8, L)
    torch.manual_seed(0)
    decoder = AttentionLSTMDecoder(len(vocab), 1280, DecoderConfig(embed_dim=128, attention_dim=128, hidden_dim=256, dropout=0.0))
    loss = _train(decoder, _memory(features), captions, torch.arange(8), steps=150, lr=3e-3)
    return decoder, vocab, texts, _memory(features), loss


def test_decoder_overfits_real_images_and_greedy_decoding_reproduces_the_captions(overfit):
    decoder, vocab, texts, memory, loss = overfit
    assert loss < 0.05  # cross-entropy per word
    results = beam_search(decoder, memory, beam_size=1, max_length=25)
    decoded = [vocab.decode(r[0].tokens) for r in results]
    assert decoded == [vocab.decode(vocab.encode(t)) for t in texts]


def test_attention_maps_cover_every_word(overfit):
    decoder, vocab, texts, memory, _ = overfit
    best = beam_search(decoder, memory, beam_size=3, max_length=25)[0][0]
    assert best.attention.shape == (len(best.tokens), 49)
    np.testing.assert_allclose(best.attention.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def ambiguous(few_real_images):
    """A briefly trained decoder on all five captions per image: its beams genuinely compete."""
    split, features = few_real_images
    texts = [t for image_id in split.image_ids for t in split.captions[image_id]]
    vocab = Vocabulary.build(texts, min_count=1)
    captions = pad_captions([vocab.encode(t) for t in texts])
    item_index = torch.tensor([i for i, image_id in enumerate(split.image_ids) for _ in split.captions[image_id]])
    torch.manual_seed(1)
    decoder = AttentionLSTMDecoder(len(vocab), 1280, DecoderConfig(embed_dim=64, attention_dim=64, hidden_dim=128, dropout=0.0))
    _train(decoder, _memory(features), captions, item_index, steps=40, lr=3e-3)
    return decoder, _memory(features)


@pytest.mark.parametrize("beam_size", [1, 3, 5])
def test_batched_beam_search_matches_one_image_at_a_time(ambiguous, beam_size):
    decoder, memory = ambiguous
    batched = beam_search(decoder, memory, beam_size=beam_size, max_length=16)
    for i in range(memory.shape[0]):
        single = beam_search(decoder, memory[i : i + 1], beam_size=beam_size, max_length=16)[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in single]
        np.testing.assert_allclose([h.score for h in batched[i]], [h.score for h in single], atol=1e-4)


def test_beam_size_one_is_greedy_argmax(ambiguous):
    decoder, memory = ambiguous
    hyp = beam_search(decoder, memory[:1], beam_size=1, max_length=12)[0][0]
    projected, state = decoder.start(memory[:1])
    token, tokens = torch.tensor([1]), []
    with torch.no_grad():
        for _ in range(12):
            logits, state, _ = decoder.step(decoder.embedding(token), state, memory[:1], projected)
            logits[:, [0, 1, 3]] = float("-inf")  # <pad>, <bos> and <unk> are never emitted
            token = logits.argmax(-1)
            if int(token) == 2:
                break
            tokens.append(int(token))
    assert hyp.tokens == tokens


def test_beams_are_sorted_distinct_and_bounded_by_max_length(ambiguous):
    decoder, memory = ambiguous
    for beams in beam_search(decoder, memory, beam_size=4, max_length=5):
        scores = [h.score for h in beams]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in beams}) == 4
        assert all(len(h.tokens) <= 5 for h in beams)
        # score is the log-probability normalised by the length including <eos>
        for h in beams:
            assert h.score == pytest.approx(h.log_prob / (len(h.tokens) + 1), rel=1e-5)


def test_every_beam_log_prob_is_its_captions_teacher_forced_log_prob(ambiguous):
    """Follows the back-pointers of every beam of every item (items leave the batch at different steps)."""
    decoder, memory = ambiguous
    banned = [0, 1, 3]  # <pad>, <bos>, <unk>: excluded from the distribution, as in the search
    for i, beams in enumerate(beam_search(decoder, memory, beam_size=3, max_length=16)):
        for h in beams:
            caption = torch.tensor([[1, *h.tokens, 2]])  # <bos> words <eos>
            with torch.no_grad():
                logits, _ = decoder(memory[i : i + 1], caption)  # (1, T, V)
            logits[..., banned] = float("-inf")
            log_prob = logits.log_softmax(-1).gather(2, caption[:, 1:, None]).sum().item()
            assert h.log_prob == pytest.approx(log_prob, abs=1e-3)


def test_masked_positions_are_never_attended(ambiguous):
    """Padding the memory with masked rows (as video batches will) changes nothing."""
    decoder, memory = ambiguous
    padded = torch.cat([memory, torch.randn(memory.shape[0], 11, memory.shape[2])], dim=1)  # (B, N + 11, C)
    mask = torch.ones(padded.shape[:2], dtype=torch.bool)
    mask[:, memory.shape[1]:] = False
    plain = beam_search(decoder, memory, beam_size=3, max_length=12)
    masked = beam_search(decoder, padded, mask, beam_size=3, max_length=12)
    for a, b in zip(plain, masked):
        assert a[0].tokens == b[0].tokens
        assert np.abs(b[0].attention[:, memory.shape[1]:]).max() == 0.0


def test_loss_ignores_padding_and_weights_the_attention_regulariser():
    torch.manual_seed(0)
    decoder = AttentionLSTMDecoder(20, 8, DecoderConfig(embed_dim=8, attention_dim=8, hidden_dim=8, dropout=0.0))
    memory = torch.randn(2, 4, 8)
    captions = torch.tensor([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
    logits, alphas = decoder(memory, captions)
    assert logits.shape == (2, 5, 20) and alphas.shape == (2, 5, 4)
    assert alphas[0, 3:].abs().sum() == 0 and alphas[1, 2:].abs().sum() == 0  # padded steps
    total, ce = caption_loss(logits, alphas, captions, attention_reg=0.0)
    assert total == ce
    total, ce = caption_loss(logits, alphas, captions, attention_reg=2.0)
    coverage = alphas.sum(dim=1)  # padded steps are zero
    assert (total - ce).item() == pytest.approx(2.0 * ((1 - coverage) ** 2).mean().item(), rel=1e-5)
