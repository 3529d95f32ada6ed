"""Every registered decoder through the one ``Decoder`` protocol: teacher forcing, batched beam search, greedy
decoding and sampling. Structural tests run on synthetic features (no data needed); the protocol's
log-probability agreement and memorisation run on real Flickr8k images."""

import dataclasses

import numpy as np
import pytest
import torch

from caption.config import DecodingConfig
from caption.data.datasets import pad_captions
from caption.data.vocab import Vocabulary
from caption.decoding.beam import beam_search
from caption.decoding.constraints import allowed_logits
from caption.decoding.sample import sample, sampling_log_probs
from caption.models.base import Decoder, DecoderBase
from caption.models.registry import DECODERS, build_decoder, decoder_config, register_decoder
from caption.models.sat import AttentionLSTMDecoder, SatConfig
from caption.training.losses import caption_loss

# Decoders with their own fused beam step, which must give what the generic one gives.
FUSED = [name for name, entry in DECODERS.items() if entry.decoder.beam_step is not DecoderBase.beam_step]
SPECIAL = Vocabulary(["<pad>", "<bos>", "<eos>", "<unk>"]).special


def _beams(decoder, memory, mask=None, beam_size=3, max_length=16, length_penalty=1.0):
    return beam_search(decoder, memory, mask, DecodingConfig(beam_size, max_length, length_penalty), SPECIAL)


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


def _decoder(kind: str, vocab_size: int, feature_dim: int, size: int, seed: int):
    """Decoder ``kind`` with every width ``size`` (the hidden state twice that), whatever its config has."""
    torch.manual_seed(seed)
    sizes = {"embed_dim": size, "attention_dim": size, "hidden_dim": 2 * size, "dropout": 0.0}
    fields = {f.name for f in dataclasses.fields(DECODERS[kind].config)}
    cfg = decoder_config(kind, **{name: value for name, value in sizes.items() if name in fields})
    return build_decoder(vocab_size, feature_dim, cfg)


def _teacher_forced_log_prob(decoder, memory, tokens):
    """log p(tokens, <eos>) by teacher forcing, under the distribution decoding draws from: what a caption may
    never say removed (the banned words, <eos> as the first word)."""
    caption = torch.tensor([[1, *tokens, 2]])  # <bos> words <eos>
    with torch.no_grad():
        logits, _ = decoder(memory, caption)  # (1, T, V)
    log_probs = allowed_logits(logits, SPECIAL).log_softmax(-1)  # (1, T, V)
    return log_probs.gather(2, caption[:, 1:, None]).sum().item()


@pytest.fixture(scope="module", params=list(DECODERS))
def synthetic(request):
    """A decoder briefly trained on random features with two plausible captions each: its beams compete."""
    torch.manual_seed(5)
    B, N, C, V = 6, 12, 32, 30
    memory = torch.randn(B, N, C)  # (B, N, C)
    captions = pad_captions([[1, *torch.randint(4, V, (int(n),)).tolist(), 2]
                             for n in torch.randint(3, 9, (2 * B,))])  # (2B, L)
    decoder = _decoder(request.param, V, C, 16, seed=1)
    _train(decoder, memory, captions, torch.arange(B).repeat(2), steps=30, lr=3e-3)
    return decoder, memory


def test_every_registered_decoder_implements_the_protocol(synthetic):
    decoder, _ = synthetic
    assert isinstance(decoder, Decoder)


def test_the_registry_builds_each_decoder_from_its_own_config_and_refuses_mistakes():
    assert {"sat", "updown"} <= set(DECODERS) and "sat" in FUSED
    for name, entry in DECODERS.items():
        cfg = decoder_config(name, embed_dim=8, hidden_dim=8)
        assert type(cfg) is entry.config and cfg.type == name
        decoder = build_decoder(11, 6, cfg)
        assert type(decoder) is entry.decoder and decoder.embedding.padding_idx == Vocabulary.pad_id
        assert decoder.output.out_features == 11
    with pytest.raises(ValueError, match="two decoders are registered as 'sat'"):
        register_decoder("sat", SatConfig)(AttentionLSTMDecoder)
    with pytest.raises(ValueError, match="not the decoder's name 'other'"):
        register_decoder("other", SatConfig)
    from caption.config import ConfigError

    with pytest.raises(ConfigError, match=f"choose one of: {', '.join(DECODERS)}"):
        decoder_config("transformer")


@pytest.mark.parametrize("beam_size", [1, 3, 5])
def test_batched_beam_search_matches_one_item_at_a_time(synthetic, beam_size):
    decoder, memory = synthetic
    batched = _beams(decoder, memory, beam_size=beam_size)
    for i in range(memory.shape[0]):
        single = _beams(decoder, memory[i : i + 1], beam_size=beam_size)[0]
        assert [h.tokens for h in batched[i]] == [h.tokens for h in single]
        np.testing.assert_allclose([h.score for h in batched[i]], [h.score for h in single], atol=1e-4)


def test_beam_size_one_is_greedy_argmax_on_the_protocol(synthetic):
    decoder, memory = synthetic
    hyp = _beams(decoder, memory[:1], beam_size=1, max_length=12)[0][0]
    memory_, state = decoder.init_state(memory[:1])
    token, tokens = torch.tensor([1]), []
    with torch.no_grad():
        for t in range(12):
            logits, state, _ = decoder.step(token, state, memory_)
            logits[:, list(SPECIAL.banned)] = float("-inf")
            if t == 0:
                logits[:, 2] = float("-inf")  # a caption has at least one word
            token = logits.argmax(-1)
            if int(token) == 2:
                break
            tokens.append(int(token))
    assert hyp.tokens == tokens


def test_beams_are_sorted_distinct_and_bounded_by_max_length(synthetic):
    decoder, memory = synthetic
    for beams in _beams(decoder, memory, beam_size=4, max_length=5):
        scores = [h.score for h in beams]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in beams}) == 4
        assert all(len(h.tokens) <= 5 for h in beams)
        # score is the log-probability normalised by the length including <eos>
        for h in beams:
            assert h.score == pytest.approx(h.log_prob / (len(h.tokens) + 1), rel=1e-5)


def test_every_beam_log_prob_is_its_captions_teacher_forced_log_prob(synthetic):
    """Follows the back-pointers of every beam of every item (items leave the batch at different steps)."""
    decoder, memory = synthetic
    for i, beams in enumerate(_beams(decoder, memory, beam_size=3)):
        for h in beams:
            assert h.log_prob == pytest.approx(_teacher_forced_log_prob(decoder, memory[i : i + 1], h.tokens),
                                               abs=1e-3)


def test_masked_positions_are_never_attended(synthetic):
    """Padding the memory with masked rows (as video batches do) changes nothing."""
    decoder, memory = synthetic
    padded = torch.cat([memory, torch.randn(memory.shape[0], 5, memory.shape[2])], dim=1)  # (B, N + 5, C)
    mask = torch.ones(padded.shape[:2], dtype=torch.bool)
    mask[:, memory.shape[1]:] = False
    plain = _beams(decoder, memory, beam_size=3, max_length=12)
    masked = _beams(decoder, padded, mask, beam_size=3, max_length=12)
    for a, b in zip(plain, masked):
        assert a[0].tokens == b[0].tokens
        assert np.abs(b[0].attention[:, memory.shape[1]:]).max() == 0.0


@pytest.mark.parametrize("kind", FUSED)
def test_the_fused_beam_step_equals_the_generic_one(kind):
    """A decoder's own fused beam step is an optimisation: the protocol's select-then-step gives the same
    beams."""
    torch.manual_seed(5)
    memory = torch.randn(6, 12, 32)  # (B, N, C)
    captions = pad_captions([[1, *torch.randint(4, 30, (int(n),)).tolist(), 2]
                             for n in torch.randint(3, 9, (12,))])  # (2B, L)
    decoder = _decoder(kind, 30, 32, 16, seed=1)
    _train(decoder, memory, captions, torch.arange(6).repeat(2), steps=30, lr=3e-3)
    fused = _beams(decoder, memory, beam_size=3)
    decoder.beam_step = DecoderBase.beam_step.__get__(decoder)
    try:
        plain = _beams(decoder, memory, beam_size=3)
    finally:
        del decoder.beam_step
    for a, b in zip(fused, plain):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        np.testing.assert_allclose([h.log_prob for h in a], [h.log_prob for h in b], atol=1e-4)
        np.testing.assert_allclose(a[0].attention, b[0].attention, atol=1e-5)


def test_sampler_respects_max_length_eos_masks_and_temperature(synthetic):
    decoder, memory = synthetic
    B = memory.shape[0]
    torch.manual_seed(0)
    drawn = sample(decoder, memory, None, DecodingConfig(max_length=4, samples=7), SPECIAL)
    assert drawn.tokens.shape[0] == B * 7 and drawn.tokens.shape[1] <= 4
    for row in range(B * 7):
        tokens = drawn.tokens[row].tolist()
        n = int(drawn.lengths[row])
        assert not set(tokens[:n]) & {0, 1, 3}  # never <pad>, <bos> or <unk> while writing
        assert tokens[0] != 2  # at least one word
        assert all(t == 0 for t in tokens[n:])  # <pad> after the end
        assert bool(drawn.ended[row]) == (tokens[n - 1] == 2)
        assert len(drawn.words(row)) <= 4 and 2 not in drawn.words(row)
    # Masked positions are never read: padding the memory changes no sample under the same seed.
    padded = torch.cat([memory, torch.randn(B, 5, memory.shape[2])], dim=1)  # (B, N + 5, C)
    mask = torch.ones(padded.shape[:2], dtype=torch.bool)
    mask[:, memory.shape[1]:] = False
    torch.manual_seed(0)
    again = sample(decoder, padded, mask, DecodingConfig(max_length=4, samples=7), SPECIAL)
    assert torch.equal(drawn.tokens, again.tokens)
    # Temperature: near 0 every sample is the greedy caption; high temperature spreads them out.
    cold = sample(decoder, memory, None, DecodingConfig(max_length=16, samples=4, temperature=1e-4), SPECIAL)
    greedy = _beams(decoder, memory, beam_size=1, max_length=16)
    for row in range(B * 4):
        assert cold.words(row) == greedy[row // 4][0].tokens
    hot = sample(decoder, memory, None, DecodingConfig(max_length=16, samples=4, temperature=5.0), SPECIAL)
    assert hot.entropy > drawn.entropy > cold.entropy


def test_loss_ignores_padding_and_weights_the_attention_regulariser():
    torch.manual_seed(0)
    decoder = AttentionLSTMDecoder(20, 8, SatConfig(embed_dim=8, attention_dim=8, hidden_dim=8, dropout=0.0))
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


# --------------------------------------------------------------------------------- on real images
@pytest.fixture(scope="module", params=list(DECODERS))
def overfit(request, few_real_images):
    """A decoder trained to memorise one caption for each of eight real images."""
    split, features = few_real_images
    texts = [split.captions[image_id][0] for image_id in split.image_ids]
    vocab = Vocabulary.build(texts, min_count=1, max_length=20)
    captions = pad_captions([vocab.encode(t) for t in texts])  # (8, L)
    decoder = _decoder(request.param, len(vocab), 1280, 128, seed=0)
    loss = _train(decoder, _memory(features), captions, torch.arange(8), steps=150, lr=3e-3)
    return decoder, vocab, texts, _memory(features), loss


@pytest.mark.slow
def test_decoder_overfits_real_images_and_greedy_decoding_reproduces_the_captions(overfit):
    decoder, vocab, texts, memory, loss = overfit
    assert loss < 0.05  # cross-entropy per word
    results = _beams(decoder, memory, beam_size=1, max_length=25)
    assert [vocab.decode(r[0].tokens) for r in results] == [vocab.decode(vocab.encode(t)) for t in texts]


@pytest.mark.slow
def test_attention_maps_cover_every_word(overfit):
    decoder, vocab, texts, memory, _ = overfit
    best = _beams(decoder, memory, beam_size=3, max_length=25)[0][0]
    assert best.attention.shape == (len(best.tokens), 49)
    np.testing.assert_allclose(best.attention.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module", params=list(DECODERS))
def real_ambiguous(request, few_real_images):
    """A briefly trained decoder on all five captions of eight real images."""
    split, features = few_real_images
    texts = [t for image_id in split.image_ids for t in split.captions[image_id]]
    vocab = Vocabulary.build(texts, min_count=1)
    captions = pad_captions([vocab.encode(t) for t in texts])
    item_index = torch.tensor([i for i, image_id in enumerate(split.image_ids)
                               for _ in split.captions[image_id]])
    decoder = _decoder(request.param, len(vocab), 1280, 64, seed=1)
    _train(decoder, _memory(features), captions, item_index, steps=40, lr=3e-3)
    return decoder, _memory(features)


@pytest.mark.slow
def test_beam_greedy_and_sampling_log_probs_equal_teacher_forcing_on_real_images(real_ambiguous):
    decoder, memory = real_ambiguous
    for beam_size in (1, 3):
        for i, beams in enumerate(_beams(decoder, memory, beam_size=beam_size)):
            for h in beams:
                assert h.log_prob == pytest.approx(
                    _teacher_forced_log_prob(decoder, memory[i : i + 1], h.tokens), abs=1e-3)
    decoding = DecodingConfig(max_length=8, samples=5, temperature=0.7)
    torch.manual_seed(3)
    drawn = sample(decoder, memory, None, decoding, SPECIAL)
    sampled = torch.nn.functional.pad(drawn.tokens, (1, 0), value=1)  # <bos> words [<eos>] <pad>..
    with torch.no_grad():
        logits, _ = decoder(memory, sampled, item_index=torch.arange(memory.shape[0]).repeat_interleave(5))
    log_probs = sampling_log_probs(logits, decoding, SPECIAL)  # (B*K, T, V)
    targets = sampled[:, 1:]
    picked = log_probs.gather(2, targets.unsqueeze(-1)).squeeze(-1).masked_fill(targets == 0, 0.0)  # (B*K, T)
    np.testing.assert_allclose(picked.sum(1).numpy(), drawn.log_probs.numpy(), atol=1e-3)


def test_a_video_model_saved_before_positions_left_the_decoder_still_loads(tmp_path):
    """Folders written when the frame/cell embeddings were decoder.temporal/decoder.cells load unchanged."""
    from safetensors.torch import load_file, save_file

    from caption.config import EncoderConfig
    from caption.models.captioner import CaptionModel
    from caption.models.io import load_model, save_model

    torch.manual_seed(0)
    cfg = SatConfig(embed_dim=8, attention_dim=8, hidden_dim=8, temporal_positions=4, cell_positions=True)
    vocab = Vocabulary.build(["a dog runs"], min_count=1)
    model = CaptionModel(EncoderConfig(weights="none", mean=[0.5] * 3, std=[0.5] * 3), cfg, len(vocab))
    directory = save_model(model, vocab, tmp_path / "model")
    weights = directory / "model.safetensors"
    state = load_file(str(weights))
    state = {key.replace("positions.", "decoder."): value for key, value in state.items()}  # the old layout
    save_file(state, str(weights), metadata={"format": "1"})
    loaded, _, _ = load_model(directory)
    for key, value in model.positions.state_dict().items():
        assert torch.equal(loaded.positions.state_dict()[key], value), key
    features = torch.randn(2, 4 * 49, 1280)  # (B, F*N, C)
    assert torch.equal(loaded.decoder_features(features), model.decoder_features(features))
