"""The temporal model learns what one frame cannot show: which way a shape moves (synthetic videos)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from caption.api import Captioner
from caption.config import load_config
from caption.data.synthetic import COLOURS, DIRECTIONS, SHAPES, moving_shape_caption, write_moving_shape_video
from caption.training.trainer import train

FRAMES = 4


def make_split(folder: Path, variants: range, seed: int) -> Path:
    """Every colour x shape x direction, ``len(variants)`` times with different start points and speeds.

    Each video has FRAMES x (an odd number) frames, so the FRAMES sampled ones sit symmetrically in time and
    a shape moving left visits exactly the places one moving right does: without knowing the frames' order,
    a model cannot tell the direction. Frames are coded one by one (MJPG): the mp4v codec's motion
    compensation leaves trails behind the shape, which show the direction in a single frame."""
    rng = random.Random(seed)
    images, annotations = [], []
    for colour in COLOURS:
        for shape in SHAPES:
            for direction in DIRECTIONS:
                for variant in variants:
                    name = f"{colour}_{shape}_{direction}_{variant}.avi"
                    write_moving_shape_video(folder / name, colour, shape, direction,
                                             seconds=FRAMES * rng.choice([3, 5, 7]) / 8,
                                             fps=8, start=rng.uniform(0.05, 0.25), codec="MJPG")
                    image_id = len(images) + 1
                    images.append({"id": image_id, "file_name": name})
                    annotations.append({"id": image_id, "image_id": image_id,
                                        "caption": moving_shape_caption(colour, shape, direction)})
    out = folder / "captions.json"
    out.write_text(json.dumps({"images": images, "annotations": annotations}))
    return out


def direction_accuracy(
    tmp_path: Path, videos: Path, train_json: Path, held_out: Path, temporal: bool,
) -> float:
    run = tmp_path / f"run_temporal_{temporal}"
    config = load_config(None, [
        f"data.train_annotations={train_json}", f"data.train_images={videos}", f"data.num_frames={FRAMES}",
        "data.min_word_count=1", f"decoder.temporal_positions={FRAMES if temporal else 0}",
        "decoder.cell_positions=true",
        "decoder.embed_dim=64",
        "decoder.attention_dim=64", "decoder.hidden_dim=128", "decoder.dropout=0.1",
        "train.epochs=60", "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=10",
        f"train.output_dir={run}", f"train.cache_dir={tmp_path / 'cache'}", "train.seed=0",
        "val.every_epochs=0",
    ])
    train(config)
    captioner = Captioner.load(run)
    data = json.loads(held_out.read_text())
    truth = {image["file_name"]: ann["caption"] for image, ann in zip(data["images"], data["annotations"])}
    results = [captioner.caption_video(held_out.parent / name, num_frames=FRAMES)[0] for name in truth]
    assert all(r.ok for r in results)
    right = [r.words[-1] == truth[Path(r.source).name].split()[-1] for r in results]
    return sum(right) / len(results)


@pytest.mark.slow
def test_the_temporal_model_learns_the_direction_of_motion_and_an_orderless_one_cannot(tmp_path):
    videos = tmp_path / "videos"
    train_json = make_split(videos, range(4), seed=0)  # 64 videos
    held_out = make_split(tmp_path / "held_out", range(1), seed=1)  # 16 unseen videos
    temporal = direction_accuracy(tmp_path, videos, train_json, held_out, temporal=True)
    orderless = direction_accuracy(tmp_path, videos, train_json, held_out, temporal=False)
    print(f"direction accuracy on unseen videos: temporal {temporal:.0%}, orderless {orderless:.0%}")
    assert temporal >= 0.85, f"the temporal model got the direction of {temporal:.0%} of unseen videos right"
    assert orderless <= 0.75, f"a model without frame order got {orderless:.0%}: the task leaks the direction"
