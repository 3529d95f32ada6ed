"""The one-call API and the command line with the shipped default model, on real photos and bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from caption.api import Captioner
from caption.config import DecodingConfig
from caption.data.coco import read_caption_set
from caption.data.images import ImageLoadError, load_image
from caption.decoding.beam import beam_search
from tests.conftest import DATA, REPO, jpeg_bytes, require, require_java, write_subset

SHIPPED_MODELS = sorted(p.name for p in (REPO / "models").iterdir() if (p / "model.safetensors").is_file())
COCO_DEV = DATA / "coco" / "annotations" / "captions_val2017_subset_dev.json"


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    return Captioner.load()


@pytest.fixture(scope="module")
def photos(flickr_dir) -> list[str]:
    return [str(p) for p in sorted((require(flickr_dir / "photos_fullres")).glob("*.jpg"))]


def _bad_files(tmp_path, photo: str):
    truncated = tmp_path / "truncated.jpg"
    data = Path(photo).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # a real JPEG cut off half-way
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    return [truncated, empty, text, tmp_path / "missing.jpg"]


def test_caption_one_photo_and_a_mixed_list(captioner, photos):
    result = captioner.caption(photos[0], beam_size=3)
    assert result.ok and len(result.words) >= 3 and result.text == " ".join(result.words)
    rows, cols = result.grid  # the encoder's grid: 7 x 7 for Lite0 at 224 px, 9 x 9 for Lite2 at 260
    assert result.grid == captioner.grid and result.attention.shape == (len(result.words), rows * cols)
    assert len(result.beams) == 3 and result.beams[0]["text"] == result.text
    assert "<unk>" not in result.text

    pil = Image.open(photos[1])
    array = np.asarray(Image.open(photos[2]).convert("RGB"))
    results = captioner.caption([photos[1], pil, array], beam_size=2)
    assert [r.ok for r in results] == [True, True, True]
    assert results[0].text == results[1].text  # the same photo as a path and as a PIL image
    assert results[2].source.startswith("array(")


def test_a_corrupt_file_in_a_batch_is_named_and_the_others_are_captioned(captioner, photos, tmp_path):
    bad = _bad_files(tmp_path, photos[3])
    inputs = [photos[0], str(bad[0]), photos[1], str(bad[1]), str(bad[2]), str(bad[3]), photos[2]]
    results = captioner.caption(inputs, skip_errors=True, batch_size=4)
    assert [r.ok for r in results] == [True, False, True, False, False, False, True]
    assert "truncated.jpg" in results[1].source and "corrupt or truncated" in results[1].error
    assert "empty (0 bytes)" in results[3].error
    assert "not an image file" in results[4].error
    assert "file not found" in results[5].error
    with pytest.raises(ImageLoadError, match="truncated.jpg: the image data is corrupt or truncated"):
        captioner.caption([photos[0], str(bad[0])])


@pytest.mark.slow
def test_predict_command_prints_captions_and_names_bad_files(photos, tmp_path):
    bad = _bad_files(tmp_path, photos[3])
    command = [sys.executable, "-m", "caption.cli", "predict", photos[0], str(bad[0]), photos[1],
               "--workers", "0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [photos[0], photos[1]]
    assert all(len(line.split("\t")[1].split()) >= 3 for line in lines)
    assert f"error: {bad[0]}: the image data is corrupt or truncated" in result.stderr
    assert "2 captioned, 1 could not be read" in result.stderr

    command = [sys.executable, "-m", "caption.cli", "predict", photos[0], "--format", "json", "--attention",
               "--beam-size", "2", "--workers", "0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (item,) = json.loads(result.stdout)
    assert item["source"] == photos[0] and len(item["beams"]) == 2
    assert np.asarray(item["attention"]).shape == (len(item["caption"].split()), np.prod(item["grid"]))


def test_awkward_but_valid_images_are_read_upright_in_rgb(photos, tmp_path):
    photo = Image.open(photos[0]).convert("RGB")  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored = photo.transpose(Image.Transpose.ROTATE_90)  # what a phone held upright stores
    rotated = tmp_path / "rotated.jpg"
    rotated.write_bytes(jpeg_bytes(stored, exif=exif))
    assert load_image(rotated).size == photo.size

    grey = tmp_path / "grey.png"
    photo.convert("L").save(grey)
    cmyk = tmp_path / "cmyk.jpg"
    photo.convert("CMYK").save(cmyk)
    alpha = tmp_path / "alpha.png"
    rgba = photo.convert("RGBA")
    rgba.putalpha(0)
    rgba.save(alpha)
    for path in (grey, cmyk, alpha):
        assert load_image(path).mode == "RGB"
    assert load_image(alpha).getpixel((0, 0)) == (255, 255, 255)  # transparent shows as white


@pytest.mark.slow
def test_batched_beam_search_matches_per_image_on_the_shipped_model(
    captioner, flickr_splits, flickr_dir, tmp_path
):
    dev = write_subset(flickr_splits["dev"], tmp_path / "dev.json", 6)
    paths = [str(flickr_dir / "images" / image["file_name"])
             for image in json.loads(dev.read_text())["images"]]
    memory = captioner.encode(torch.stack([captioner.transform.load(p) for p in paths]))  # (6, N, 1280)
    decoder, decoding, special = captioner.model.decoder, DecodingConfig(3, 20), captioner.vocab.special
    batched = beam_search(decoder, memory, None, decoding, special)
    for i in range(len(paths)):
        single = beam_search(decoder, memory[i : i + 1], None, decoding, special)[0]
        assert batched[i][0].tokens == single[0].tokens
        assert batched[i][0].score == pytest.approx(single[0].score, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("model", SHIPPED_MODELS)
def test_shipped_models_caption_32_dev_photos_as_when_they_were_shipped(model, flickr_splits, flickr_dir):
    """Captions and scores each shipped model wrote when it was exported (tests/data/dev32_<model>.json): the
    first 32 photos of Flickr8k dev and, for models written since COCO photos came, of the COCO dev subset.
    In fp32, forced (what ``auto`` is on a CPU), with the encoder's BatchNorm folded as ``load`` does."""
    expected = json.loads((Path(__file__).parent / "data" / f"dev32_{model}.json").read_text())
    splits = {"flickr8k": read_caption_set(flickr_splits["dev"], flickr_dir / "images")}
    if "coco" in expected:
        splits["coco"] = read_caption_set(require(COCO_DEV), DATA / "coco" / "val2017")
    captioner = Captioner.load(model, precision="fp32")
    for name, split in splits.items():
        golden = expected.get(name, expected)  # the older files hold Flickr8k's captions at the top
        paths = [str(p) for p in split.paths()[:32]]
        for beam in (1, 3):
            for result in captioner.caption(paths, beam_size=beam):
                want = golden[f"beam{beam}"][Path(result.source).name]
                assert result.text == want["caption"], (name, beam, result.source)
                assert result.score == pytest.approx(want["score"], abs=1e-4)


@pytest.mark.slow
def test_shipped_model_quality_on_the_dev_split(captioner, flickr_splits, flickr_dir, tmp_path):
    """A regression guard on 100 dev images (the full dev-split figures are in the model card)."""
    require_java()
    from caption.evaluation.evaluate import evaluate

    dev = write_subset(flickr_splits["dev"], tmp_path / "dev.json", 100)
    report = evaluate(dev, tmp_path / "eval", predictor=captioner.predictor, images=flickr_dir / "images",
                      metrics=["BLEU", "CIDEr"], decoding=captioner.resolve_decoding(beam_size=3))
    assert report["images_scored"] == 100
    assert report["scores"]["Bleu_4"] > 0.15
    assert report["scores"]["CIDEr"] > 0.35
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len({r["caption"] for r in results}) > 40  # not one caption for everything


@pytest.mark.slow
def test_shipped_model_knows_everyday_scenes(captioner, tmp_path):
    """A regression guard on 100 photos of the COCO dev subset: food, animals, vehicles and rooms, which a
    Flickr8k-only model mistakes for people and dogs (CIDEr 0.44, CHAIRs 34% on the whole subset)."""
    require_java()
    from caption.evaluation.evaluate import evaluate

    dev = write_subset(require(COCO_DEV), tmp_path / "coco_dev.json", 100)
    report = evaluate(dev, tmp_path / "eval", predictor=captioner.predictor, images=DATA / "coco" / "val2017",
                      metrics=["BLEU", "CIDEr"], decoding=captioner.resolve_decoding(beam_size=3))
    assert report["images_scored"] == 100
    assert report["scores"]["CIDEr"] > 0.5
    assert report["chair"]["CHAIRs"] < 0.32


def test_decoding_settings_go_by_name_and_one_to_dict_serves_every_surface(captioner, photos):
    """Any public DecodingConfig field is a keyword of caption(); the result's JSON is the same everywhere."""
    by_name = captioner.caption(photos[0], beam_size=2, length_penalty=0.0)
    decoding = DecodingConfig(beam_size=2, max_length=captioner.decoding.max_length, length_penalty=0.0)
    given = captioner.caption(photos[0], decoding=decoding)
    assert (by_name.text, by_name.score) == (given.text, given.score) and len(by_name.beams) == 2
    with pytest.raises(TypeError, match="unknown decoding setting.*: choose from beam_size"):
        captioner.caption(photos[0], beam=2)
    record = by_name.to_dict()
    assert set(record) == {"source", "caption", "score", "beams"}
    assert record["score"] == round(by_name.score, 4)
    full = by_name.to_dict(attention=True)
    assert full["words"] == by_name.words and full["grid"] == list(captioner.grid)
    assert np.array(full["attention"]).shape == (len(by_name.words), captioner.grid[0] * captioner.grid[1])
    missing = captioner.caption([photos[0], "/no/such/photo.jpg"], skip_errors=True)[1].to_dict()
    assert set(missing) == {"source", "error", "error_kind"} and missing["error_kind"] == "missing"


def test_export_records_decoding_defaults_from_the_same_options_and_validator(tmp_path):
    from caption.cli import main

    out = tmp_path / "exported"
    assert main(["export", "flickr8k-lite0", str(out), "--beam-size", "5", "--length-penalty", "0.5"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["decoding"]["beam_size"] == 5 and meta["decoding"]["length_penalty"] == 0.5
    assert Captioner.load(out).decoding.beam_size == 5
    assert main(["export", "flickr8k-lite0", str(tmp_path / "refused"), "--beam-size", "0"]) == 2
    assert not (tmp_path / "refused").exists()
