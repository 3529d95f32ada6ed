"""Video caption data sets (MSVD, MSR-VTT) converted to COCO caption JSON, one "image" entry per video."""

import csv
import json
import logging

import pytest

from caption.data.coco import read_caption_set
from caption.data.convert import convert_msrvtt, convert_msvd
from tests.conftest import DATA, require

MSVD = DATA / "msvd"
REAL_CLIPS = {184: "3qqEKTPxLNs_1_15", 950: "UXs3eq68ZjE_250_255", 1025: "WTf5EgVY5uU_124_128"}


@pytest.fixture(scope="module")
def msvd_annotations():
    return require(MSVD / "annotations")


def msvd_form_a(annotations, out, **kwargs):
    sentences = [annotations / f"sents_{split}_lc_nopunc.txt" for split in ("train", "val")]
    return convert_msvd(out, mapping_file=annotations / "youtube_video_to_id_mapping.txt",
                        sentence_files=sentences, **kwargs)


def test_msvd_preprocessed_release_on_the_real_files(msvd_annotations, tmp_path):
    written = msvd_form_a(msvd_annotations, tmp_path)
    assert sorted(written) == ["train", "val"]
    train, val = (json.loads(written[split].read_text()) for split in ("train", "val"))
    assert (len(train["images"]), len(train["annotations"])) == (1200, 48774)
    assert (len(val["images"]), len(val["annotations"])) == (100, 4290)
    assert {i["id"] for i in train["images"]} == set(range(1, 1201))
    assert {i["id"] for i in val["images"]} == set(range(1201, 1301))
    assert train["images"][0] == {"id": 1, "file_name": "-4wsuPCjDBc_5_15.avi"}
    # vid184 is 3qqEKTPxLNs_1_15, with every caption of its lines in the train file, in order.
    assert {"id": 184, "file_name": "3qqEKTPxLNs_1_15.avi"} in train["images"]
    lines = (msvd_annotations / "sents_train_lc_nopunc.txt").read_text().splitlines()
    expected = [line.split("\t", 1)[1] for line in lines if line.startswith("vid184\t")]
    assert expected[:2] == ["a baby teethes on a pacifier", "a baby is on a bed"]
    assert [a["caption"] for a in train["annotations"] if a["image_id"] == 184] == expected
    assert [a["id"] for a in train["annotations"]] == list(range(1, 48775))
    # It reads back through the COCO loader (no video folder: no file check).
    split = read_caption_set(written["val"])
    assert len(split) == 100 and split.file_names[0] == "bQJQGoJF7_k_162_169.avi"


def test_msvd_video_dir_names_the_files_present(msvd_annotations, tmp_path, caplog):
    videos = require(MSVD / "videos")
    with caplog.at_level(logging.WARNING, logger="caption"):
        written = msvd_form_a(msvd_annotations, tmp_path / "real", video_dir=videos)
    assert "1297 clip(s) have no video file there" in caplog.text
    split = read_caption_set(written["train"], videos)
    assert dict(zip(split.image_ids, split.file_names)) == {
        n: f"{clip}.avi" for n, clip in REAL_CLIPS.items()
    }
    assert all(path.is_file() for path in split.paths())
    assert split.captions[184][0] == "a baby teethes on a pacifier"

    # Another container is found by the clip name; clips without a file keep clip + video_ext.
    other = tmp_path / "videos"
    other.mkdir()
    (other / "3qqEKTPxLNs_1_15.webm").touch()
    written = msvd_form_a(msvd_annotations, tmp_path / "webm", video_dir=other, video_ext=".mp4")
    names = {i["id"]: i["file_name"] for i in json.loads(written["train"].read_text())["images"]}
    assert (names[184], names[950]) == ("3qqEKTPxLNs_1_15.webm", "UXs3eq68ZjE_250_255.mp4")


def test_msvd_malformed_lines_are_reported_and_skipped(tmp_path, caplog):
    mapping = tmp_path / "youtube_video_to_id_mapping.txt"
    mapping.write_text("clipA_1_5 vid1\nnot a mapping line\nclipB_2_9 vid2\n\n")
    sentences = tmp_path / "sents_test_lc_nopunc.txt"
    sentences.write_text("vid1\ta dog runs\nvid1 no tab but fine\ngarbage\nvid2\t\nvid7\ta cat\n\n"
                         "vid2\ta man sings\n")
    with caplog.at_level(logging.WARNING, logger="caption"):
        written = convert_msvd(tmp_path / "out", mapping_file=mapping, sentence_files=[sentences])
    assert f"{mapping}:2: expected '<clip> vid<N>'" in caplog.text
    assert f"{sentences}:3: expected 'vid<N><TAB><caption>'" in caplog.text
    assert f"{sentences}:4: expected 'vid<N><TAB><caption>'" in caplog.text
    assert f"{sentences}:5: vid7 is not in the mapping file" in caplog.text
    data = json.loads(written["test"].read_text())
    assert data["images"] == [{"id": 1, "file_name": "clipA_1_5.avi"},
                              {"id": 2, "file_name": "clipB_2_9.avi"}]
    assert [(a["image_id"], a["caption"]) for a in data["annotations"]] == [
        (1, "a dog runs"), (1, "no tab but fine"), (2, "a man sings")]


def test_msvd_wrong_arguments_and_files_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="either sentence_files"):
        convert_msvd(tmp_path)
    with pytest.raises(ValueError, match="mapping_file"):
        convert_msvd(tmp_path, sentence_files=[tmp_path / "sents_train_lc_nopunc.txt"])
    mapping = tmp_path / "mapping.txt"
    mapping.write_text("clipA_1_5 vid1\n")
    odd = tmp_path / "captions.txt"
    odd.write_text("vid1\ta dog\n")
    with pytest.raises(ValueError, match="captions.txt: cannot tell the split"):
        convert_msvd(tmp_path, mapping_file=mapping, sentence_files=[odd])
    bad_csv = tmp_path / "corpus.csv"
    bad_csv.write_text("VideoID,Start,End,Description\nabc,1,2,a dog\n")
    with pytest.raises(ValueError,
                       match="corpus.csv is not the MSVD corpus CSV: it lacks the column.s. Language"):
        convert_msvd(tmp_path, corpus_csv=bad_csv)


CSV_HEADER = ["VideoID", "Start", "End", "WorkerID", "Source", "AnnotationTime", "Language", "Description"]


def write_corpus_csv(path, clips):
    """One English description per clip, in the given order, then the CSV's quirks."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_HEADER)
        for video, start, end in clips:
            writer.writerow([video, start, end, 1, "clean", 10, "English", f"clip {video} plays"])
    video, start, end = clips[0]
    quirks = (
        # quoted commas and quotes
        f'{video},{start},{end},2,clean,11,English,"a man, a dog and a ""ball"""\n'
        f"{video},{start},{end},3,clean,12,French,un homme\n"  # not English: dropped
        f"{video},{start},{end},4,clean,13,English,\n"  # blank description
        f"{video},{start},{end},5,clean,14,English,a dog, unquoted, runs\n"  # unquoted commas
        f"{video},x,{end},6,clean,15,English,bad start\n"
    ).encode() + f"{video},{start},{end},7,clean,16,English,caf\xe9 scene\n".encode("latin-1")
    with open(path, "ab") as handle:
        handle.write(quirks)
    return path


def test_msvd_corpus_csv_standard_split_and_quirks(tmp_path, caplog):
    clips = [(f"yt{i:04d}", i, i + 5) for i in range(1305)]
    corpus = write_corpus_csv(tmp_path / "MSR Video Description Corpus.csv", clips)
    with caplog.at_level(logging.WARNING, logger="caption"):
        written = convert_msvd(tmp_path / "out", corpus_csv=corpus)
    assert "not valid UTF-8" in caplog.text
    assert f"{corpus}:1309: 1 blank English description(s) skipped" in caplog.text
    assert f"{corpus}:1311: expected VideoID, integer Start and End" in caplog.text
    data = {split: json.loads(path.read_text()) for split, path in written.items()}
    assert {split: len(d["images"]) for split, d in data.items()} == {"train": 1200, "val": 100, "test": 5}
    assert data["train"]["images"][0] == {"id": 1, "file_name": "yt0000_0_5.avi"}
    assert data["val"]["images"][0] == {"id": 1201, "file_name": "yt1200_1200_1205.avi"}
    assert [a["caption"] for a in data["train"]["annotations"] if a["image_id"] == 1] == [
        "clip yt0000 plays", 'a man, a dog and a "ball"', "a dog, unquoted, runs", "caf\ufffd scene"]
    assert read_caption_set(written["test"]).file_names[-1] == "yt1304_1304_1309.avi"


def test_msvd_corpus_csv_follows_the_mapping(tmp_path, caplog):
    """With a mapping, the split follows its vid order (not the CSV's) and ids are the vid numbers."""
    clips = [(f"yt{i:04d}", i, i + 5) for i in range(1302)]
    corpus = write_corpus_csv(tmp_path / "corpus.csv", clips[::-1])
    mapping = tmp_path / "youtube_video_to_id_mapping.txt"
    mapping.write_text("".join(f"{v}_{s}_{e} vid{n}\n" for n, (v, s, e) in enumerate(clips[:-1], start=1)))
    with caplog.at_level(logging.WARNING, logger="caption"):
        written = convert_msvd(tmp_path / "out", corpus_csv=corpus, mapping_file=mapping, video_ext=".mp4")
    assert "1 clip(s) are not in the mapping file" in caplog.text and "yt1301_1301_1306" in caplog.text
    data = {split: json.loads(path.read_text()) for split, path in written.items()}
    assert [i["id"] for i in data["train"]["images"]] == list(range(1, 1201))
    assert data["val"]["images"][-1] == {"id": 1300, "file_name": "yt1299_1299_1304.mp4"}
    assert data["test"]["images"] == [{"id": 1301, "file_name": "yt1300_1300_1305.mp4"}]


def msrvtt_files(tmp_path):
    train_val = {
        "info": {"year": 2016},
        "videos": [
            {"video_id": "video0", "split": "train", "id": 0, "category": 9},
            {"video_id": "video1", "split": "validate", "id": 1},
            {"video_id": "video12", "split": "train"},  # no "id": the digits of video_id
            {"video_id": "video5", "split": "train", "id": 5},  # no caption
        ],
        "sentences": [
            {"video_id": "video0", "caption": "a man is talking", "sen_id": 0},
            {"video_id": "video1", "caption": " a car drives ", "sen_id": 1},
            {"video_id": "video0", "caption": "someone speaks", "sen_id": 2},
            {"video_id": "video12", "caption": "a cat", "sen_id": 3},
            {"video_id": "video12", "caption": "   ", "sen_id": 4},
            {"video_id": "video99", "caption": "nobody lists me", "sen_id": 5},
        ],
    }
    test = {"videos": [{"video_id": "video7010", "split": "test", "id": 7010}],
            "sentences": [{"video_id": "video7010", "caption": "a band plays", "sen_id": 6}]}
    paths = tmp_path / "train_val_videodatainfo.json", tmp_path / "test_videodatainfo.json"
    for path, data in zip(paths, (train_val, test)):
        path.write_text(json.dumps(data))
    return list(paths)


def test_msrvtt_converter_splits_ids_and_names(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="caption"):
        written = convert_msrvtt(msrvtt_files(tmp_path), tmp_path / "out")
    assert "captions of 1 video(s) not listed under 'videos' are skipped: video99" in caplog.text
    assert "1 video(s) without a caption are skipped: video5" in caplog.text
    data = {split: json.loads(path.read_text()) for split, path in written.items()}
    assert list(data) == ["train", "val", "test"]
    assert data["train"]["images"] == [{"id": 0, "file_name": "video0.mp4"},
                                       {"id": 12, "file_name": "video12.mp4"}]
    assert [(a["id"], a["image_id"], a["caption"]) for a in data["train"]["annotations"]] == [
        (1, 0, "a man is talking"), (2, 0, "someone speaks"), (3, 12, "a cat")]
    assert data["val"]["annotations"] == [{"id": 1, "image_id": 1, "caption": "a car drives"}]
    assert data["test"]["images"] == [{"id": 7010, "file_name": "video7010.mp4"}]
    split = read_caption_set(written["train"])
    assert split.captions == {0: ["a man is talking", "someone speaks"], 12: ["a cat"]}


def test_msrvtt_malformed_entries_name_the_file_and_entry(tmp_path):
    info = tmp_path / "train_val_videodatainfo.json"
    info.write_text(json.dumps({"videos": [{"video_id": "video0", "split": "train"}, {"video_id": "video1"}],
                                "sentences": []}))
    with pytest.raises(ValueError,
                       match=r"train_val_videodatainfo.json: videos\[1\] is not an MSR-VTT video entry"):
        convert_msrvtt([info], tmp_path / "out")
    info.write_text(json.dumps({"videos": [{"video_id": "clip", "split": "train"}], "sentences": []}))
    with pytest.raises(ValueError, match=r"videos\[0\] is not an MSR-VTT video entry"):
        convert_msrvtt([info], tmp_path / "out")
    info.write_text(json.dumps({"videos": [{"video_id": "video0", "split": "dev", "id": 0}],
                                "sentences": []}))
    with pytest.raises(ValueError, match=r"videos\[0\] has split 'dev'"):
        convert_msrvtt([info], tmp_path / "out")
    info.write_text(json.dumps({"videos": [{"video_id": "video0", "split": "train", "id": 0}],
                                "sentences": [{"video_id": "video0"}]}))
    with pytest.raises(ValueError, match=r"sentences\[0\] lacks a field"):
        convert_msrvtt([info], tmp_path / "out")
    info.write_text(json.dumps({"videos": []}))
    with pytest.raises(ValueError, match="is not an MSR-VTT videodatainfo file"):
        convert_msrvtt([info], tmp_path / "out")
