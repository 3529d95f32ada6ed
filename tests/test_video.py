"""Videos: frame sampling (seek and the sequential fallback), bad files, scenes and subtitles, zero-shot
captions of the real MSVD clips, and videos in the batch job and the web demo."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from caption.api import Captioner
from caption.cli import main
from caption.data import video
from caption.data.synthetic import write_moving_shape_video
from caption.data.video import VideoLoadError, detect_scenes, read_frames
from caption.serving.subtitles import to_srt, to_webvtt
from tests.conftest import DATA, require, require_java

MSVD = DATA / "msvd" / "videos"


@pytest.fixture(scope="module")
def clips() -> list[Path]:
    return sorted(require(MSVD).glob("*.avi"))


@pytest.fixture(scope="module")
def captioner() -> Captioner:
    return Captioner.load()


def spy_on_sequential_reads(monkeypatch) -> list[list[int]]:
    """The frame indices of every call to the sequential fallback, which still runs as before."""
    calls: list[list[int]] = []
    read_sequentially = video._read_sequentially

    def spy(capture, indices, max_side):
        calls.append(list(indices))
        return read_sequentially(capture, indices, max_side)

    monkeypatch.setattr(video, "_read_sequentially", spy)
    return calls


def two_scene_video(path: Path, seconds: float = 3.0, fps: float = 10.0) -> Path:
    """A blue square on dark grey, then a cut to a red circle on white."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (160, 120))
    for i in range(int(2 * seconds * fps)):
        second_scene = i >= seconds * fps
        frame = np.full((120, 160, 3), 235 if second_scene else 40, dtype=np.uint8)  # (H, W, 3)
        x = 20 + i * 2 % 120
        if second_scene:
            cv2.circle(frame, (x, 60), 20, (0, 0, 230), -1)
        else:
            cv2.rectangle(frame, (x - 20, 40), (x + 20, 80), (230, 60, 0), -1)
        writer.write(frame)
    writer.release()
    return path


def test_frames_are_sampled_uniformly_or_by_time_and_seeking_reads_the_same_frames(clips, monkeypatch):
    clip = clips[0]  # 3qqEKTPxLNs_1_15.avi: 421 frames at 30 fps
    sequential_reads = spy_on_sequential_reads(monkeypatch)
    frames = read_frames(clip, 8)
    assert not sequential_reads  # the frames came from seeking
    assert frames.info.frame_count == 421 and len(frames.images) == 8
    assert frames.indices == [int((i + 0.5) * 421 / 8) for i in range(8)]
    assert frames.times == [round(i / 30, 3) for i in frames.indices]
    sequential = read_frames(clip, 8, seek=False)
    assert sequential_reads == [frames.indices] and sequential.indices == frames.indices
    for a, b in zip(frames.images, sequential.images):
        assert np.array_equal(np.asarray(a), np.asarray(b))  # seeking lands on exactly the same frames
    every = read_frames(clip, every_seconds=2.0, max_side=128)
    assert len(every.images) == 7 and max(every.images[0].size) == 128  # 14 s: one frame per 2 s
    assert np.diff(every.times).min() == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("suffix, codec", [(".mp4", "mp4v"), (".avi", "MJPG"), (".webm", "VP80"),
                                           (".mov", "mp4v"), (".mkv", "mp4v")])
def test_every_accepted_format_is_read(tmp_path, suffix, codec):
    path = write_moving_shape_video(tmp_path / f"move{suffix}", codec=codec)  # 2 s at 10 fps
    frames = read_frames(path, 4)
    assert frames.info.frame_count == 20 and frames.indices == [2, 7, 12, 17]
    sequential = read_frames(path, 4, seek=False)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(frames.images, sequential.images))
    assert video.is_video(path)


def test_when_the_container_cannot_seek_the_frames_come_from_one_sequential_pass(tmp_path, monkeypatch):
    path = write_moving_shape_video(tmp_path / "move.mp4", seconds=3.0)
    expected = read_frames(path, 5)
    monkeypatch.setattr(video, "_read_by_seeking", lambda *args: None)  # e.g. a seek that lands elsewhere
    sequential_reads = spy_on_sequential_reads(monkeypatch)
    fallback = read_frames(path, 5)
    assert sequential_reads == [expected.indices] and fallback.indices == expected.indices
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(fallback.images, expected.images))


def test_bad_videos_get_an_error_naming_the_file_and_the_others_keep_going(clips, captioner, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    no_frames = tmp_path / "no_frames.avi"
    cv2.VideoWriter(str(no_frames), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48)).release()
    truncated = tmp_path / "truncated.avi"
    data = clips[1].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    long_clip = write_moving_shape_video(tmp_path / "long.mp4", seconds=4.0)

    for path, reason in [(not_video, "not a video file: it is a text file"), (empty, r"empty \(0 bytes\)"),
                         (no_frames, "no frames|cannot be opened"), (truncated, "truncated")]:
        with pytest.raises(VideoLoadError, match=reason) as raised:
            read_frames(path, 8)
        assert str(raised.value).startswith(str(path))
    with pytest.raises(VideoLoadError, match="over the limit of 2 s"):
        read_frames(long_clip, 8, max_seconds=2.0)

    results = captioner.caption([str(not_video), str(clips[2]), str(truncated), str(long_clip)],
                                skip_errors=True)
    assert [r.ok for r in results] == [False, True, False, True]
    assert results[0].source == str(not_video) and "truncated" in results[2].error


def test_the_image_model_captions_the_real_msvd_clips_zero_shot(clips, captioner):
    for clip in clips:
        [result] = captioner.caption_video(clip)
        assert result.ok and len(result.words) >= 3 and "<unk>" not in result.text
        assert (len(result.times) == 8
                and result.attention.shape == (len(result.words), 8 * np.prod(result.grid)))
        assert result.to_dict()["frame_times"] == result.times
    assert captioner.caption(str(clips[0])).text  # the same through the one-call API


def test_scenes_become_valid_webvtt_and_srt(captioner, tmp_path, capsys):
    path = two_scene_video(tmp_path / "two_scenes.mp4")
    scenes = detect_scenes(path, min_seconds=1.0)
    assert len(scenes) == 2 and scenes[0][0] == 0.0 and scenes[1][0] == pytest.approx(3.0, abs=0.5)
    assert scenes[1][1] == pytest.approx(6.0, abs=0.2) and scenes[0][1] == scenes[1][0]

    results = captioner.caption_video(path, scenes=True, num_frames=4)
    assert [r.segment for r in results] == detect_scenes(path)
    vtt, srt = to_webvtt(results), to_srt(results)
    assert vtt.startswith("WEBVTT\n\n") and vtt.endswith("\n") and srt.endswith("\n")
    for text, separator in [(vtt.removeprefix("WEBVTT\n\n"), "."), (srt, ",")]:
        blocks = text.strip("\n").split("\n\n")
        assert len(blocks) == len(results)
        for number, block in enumerate(blocks, 1):
            index, timing, caption = block.split("\n")
            stamp = rf"\d{{2}}:\d{{2}}:\d{{2}}\{separator}\d{{3}}"
            assert index == str(number) and caption == results[number - 1].text
            assert re.fullmatch(rf"{stamp} --> {stamp}", timing), timing
    assert "00:00:00.000 --> 00:00:03.000" in vtt and "00:00:03,000 --> 00:00:06,000" in srt

    assert main(["predict", str(path), "--format", "srt", "--frames", "4"]) == 0
    assert capsys.readouterr().out == srt
    assert main(["predict", str(path), "--format", "json", "--frames", "4"]) == 0
    [whole] = json.loads(capsys.readouterr().out)
    assert whole["caption"] and len(whole["frame_times"]) == 4


def test_batch_folders_mix_images_and_videos(clips, tmp_path, flickr_dir):
    folder = tmp_path / "media"
    folder.mkdir()
    write_moving_shape_video(folder / "move.mp4")
    (folder / "bad.webm").write_text("not a video")
    photo = sorted(require(flickr_dir / "photos_fullres").glob("*.jpg"))[0]
    (folder / "photo.jpg").write_bytes(photo.read_bytes())
    out = tmp_path / "captions.jsonl"
    assert main(["batch", str(folder), str(clips[2]), "--out", str(out), "--no-progress"]) == 1  # bad.webm
    records = {Path(r["source"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {"move.mp4", "bad.webm", "photo.jpg", clips[2].name}
    assert records["move.mp4"]["caption"] and len(records["move.mp4"]["frame_times"]) == 8
    assert "not a video file: it is a text file" in records["bad.webm"]["error"]
    assert records["photo.jpg"]["caption"] and "frame_times" not in records["photo.jpg"]


def test_the_demo_service_captions_a_video_and_shows_its_frames(clips, captioner, tmp_path):
    pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -e '.[demo]'")
    from caption.serving.service import CaptionService, Limits
    from caption.serving.web import render

    service = CaptionService(captioner, Limits(max_video_seconds=10.0))
    bad = tmp_path / "clip.mp4"
    bad.write_text("nope")
    results = [service.caption(path, 3, 20) for path in (str(clips[2]), str(clips[0]), str(bad))]
    assert results[0]["caption"] and len(results[0]["frame_times"]) == 8
    assert "over the limit of 10 s" in results[1]["error"] and results[1]["error"].startswith(clips[0].name)
    assert results[2]["error"] == "clip.mp4: not a video file: it is a text file"
    status, caption, preview, beams, by_word, by_frame = render(service, str(clips[2]), results[0])
    assert status == "" and caption == results[0]["caption"] and preview is not None
    assert len(by_word) == len(results[0]["words"]) and len(by_frame) == 8
    assert all(" · frame " in label for _, label in by_word)


def test_evaluate_scores_videos_against_their_references(clips, tmp_path):
    require_java()
    from caption.data.convert import convert_msvd

    annotations = DATA / "msvd" / "annotations"
    splits = convert_msvd(tmp_path / "msvd", mapping_file=annotations / "youtube_video_to_id_mapping.txt",
                          sentence_files=[annotations / "sents_train_lc_nopunc.txt"], video_dir=MSVD)
    data = json.loads(splits["train"].read_text())
    present = {clip.name for clip in clips}
    images = [image for image in data["images"] if image["file_name"] in present]  # the 3 clips that are here
    ids = {image["id"] for image in images}
    subset = tmp_path / "three_clips.json"
    subset.write_text(json.dumps({"images": images,
                                  "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}))
    assert main(["evaluate", "--annotations", str(subset), "--images", str(MSVD),
                 "--out", str(tmp_path / "eval"), "--metrics", "BLEU", "CIDEr"]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(report["scores"]) >= {"Bleu_4", "CIDEr"} and report["scores"]["Bleu_1"] > 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert sorted(r["image_id"] for r in results) == sorted(ids)  # vid184, vid950, vid1025
