"""An Up-Down model through everything a SAT model goes through: saved and loaded, photos with per-word
attention maps, videos (frames x cells), `caption batch` and the demo service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from caption.api import Captioner
from caption.cli import main
from caption.config import EncoderConfig
from caption.data.datasets import pad_captions
from caption.data.vocab import Vocabulary
from caption.models.captioner import CaptionModel
from caption.models.io import load_model, save_model
from caption.models.updown import UpDownConfig, UpDownDecoder
from tests.conftest import DATA, require

pytestmark = pytest.mark.slow  # trains an Up-Down model on real images


@pytest.fixture(scope="module")
def updown_dir(few_real_images, tmp_path_factory):
    """An Up-Down model that has memorised one caption for each of eight real photos."""
    split, features = few_real_images
    texts = [split.captions[image_id][0] for image_id in split.image_ids]
    vocab = Vocabulary.build(texts, min_count=1, max_length=20)
    captions = pad_captions([vocab.encode(t) for t in texts])  # (8, L)
    torch.manual_seed(0)
    model = CaptionModel(EncoderConfig(), UpDownConfig(embed_dim=128, attention_dim=128,
                                                        hidden_dim=256, dropout=0.0), len(vocab))
    optimizer = torch.optim.AdamW(model.decoder.parameters(), lr=3e-3, weight_decay=0)
    memory = torch.from_numpy(np.asarray(features.features, dtype=np.float32))  # (8, 49, 1280)
    for _ in range(150):
        logits, _ = model(memory, captions, torch.arange(8))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, len(vocab)), captions[:, 1:].reshape(-1),
                                                 ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    directory = save_model(model.eval(), vocab, tmp_path_factory.mktemp("updown") / "model")
    return directory, split, texts


def test_an_updown_model_saves_loads_and_captions_photos_with_attention_maps(updown_dir):
    directory, split, texts = updown_dir
    model, vocab, meta = load_model(directory)
    assert isinstance(model.decoder, UpDownDecoder) and meta["decoder"]["type"] == "updown"
    captioner = Captioner.load(directory)
    results = captioner.caption([str(p) for p in split.paths()], beam_size=3)
    assert [r.text for r in results] == [vocab.decode(vocab.encode(t)) for t in texts]
    for result in results:
        assert result.attention.shape == (len(result.words), 49)
        np.testing.assert_allclose(result.attention.sum(axis=1), 1.0, atol=1e-5)
        assert len(result.beams) == 3


def test_an_updown_model_captions_videos_in_batch_and_in_the_demo(updown_dir, tmp_path):
    directory, split, _ = updown_dir
    clip = sorted(require(DATA / "msvd" / "videos").glob("*.avi"))[2]
    photo = str(split.paths()[0])
    captioner = Captioner.load(directory)
    [video] = captioner.caption_video(clip, num_frames=4)
    assert video.text and video.attention.shape == (len(video.words), 4 * 49) and len(video.times) == 4

    out = tmp_path / "captions.jsonl"
    assert main(["batch", photo, str(clip), "--model", str(directory), "--out", str(out),
                 "--no-progress"]) == 0
    records = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert records[Path(photo).name]["caption"] == captioner.caption(photo).text
    assert records[clip.name]["caption"] and len(records[clip.name]["frame_times"]) == 8

    pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -e '.[demo]'")
    from caption.serving.service import CaptionService
    from caption.serving.web import render

    service = CaptionService(captioner)
    answer = service.caption(photo, 3, 20)
    assert answer["caption"] == captioner.caption(photo, beam_size=3, max_length=20).text
    status, caption, preview, beams, by_word, by_frame = render(service, photo, answer)
    assert status == "" and caption == answer["caption"] and len(by_word) == len(answer["words"])
