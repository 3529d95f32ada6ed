"""``caption batch``: folders with good and bad files, the three output formats, and resuming after a kill."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caption.cli import main
from caption.serving.batch import Journal, coco_image_id
from caption.serving.inputs import InputError, discover
from tests.conftest import REPO, problem_files, require


@pytest.fixture(scope="module")
def dev_photos(flickr_dir) -> list[Path]:
    names = require(flickr_dir / "Flickr_8k.devImages.txt").read_text().split()
    return [flickr_dir / "images" / name for name in names[:40]]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_mixed_folder_gives_a_caption_for_every_good_file_and_a_reason_for_every_bad_one(
        dev_photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for photo in dev_photos[:3]:
        shutil.copy(photo, folder / "nested" / photo.name)  # test-time copies of real photos
    good, bad = problem_files(folder, dev_photos[3])
    (folder / "readme.txt").write_text("not an image by its extension: left out")

    out = tmp_path / "captions.jsonl"
    assert main(["batch", str(folder), "--out", str(out), "--batch-size", "4",
                 "--no-progress"]) == 1  # bad files
    records = {Path(r["source"]).name: r for r in read_jsonl(out)}
    expected_good = {p.name for p in dev_photos[:3]} | set(good)
    # every image-named file, recursively; readme.txt left out
    assert set(records) == expected_good | set(bad)
    for name in expected_good:
        assert records[name]["caption"] and records[name]["beams"][0]["text"] == records[name]["caption"]
    for name in bad:
        assert "caption" not in records[name] and records[name]["error"]
    assert "empty (0 bytes)" in records["empty.jpg"]["error"]
    assert "truncated" in records["truncated.jpg"]["error"]
    assert "not an image" in records["notes.jpg"]["error"]

    summary = capsys.readouterr().err
    assert f"{len(expected_good)} captioned" in summary and f"{len(bad)} could not be read" in summary
    assert all(f"bad file: {folder / name}" in summary for name in bad)
    assert "left out 1 file" in summary

    # CSV from a glob plus a file list; the COCO results JSON takes the ids from the file names.
    file_list = tmp_path / "list.txt"
    file_list.write_text(f"# photos\n{dev_photos[4]}\n\n{folder / 'notes.jpg'}\n")
    table = tmp_path / "captions.csv"
    assert main(["batch", str(folder / "nested" / "*.jpg"), "--file-list", str(file_list),
                 "--out", str(table), "--no-progress"]) == 1
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 5 and sum(bool(r["caption"]) for r in rows) == 4 and rows[-1]["error"]
    coco = tmp_path / "results.json"
    assert main(["batch", str(folder / "nested"), "--out", str(coco), "--no-progress"]) == 0
    results = json.loads(coco.read_text())
    assert sorted(r["image_id"] for r in results) == sorted(p.stem for p in dev_photos[:3])


def test_inputs_and_image_ids(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        discover([str(tmp_path / "missing")])
    with pytest.raises(InputError, match="matches no files"):
        discover([str(tmp_path / "*.jpg")])
    (tmp_path / "a.JPG").write_bytes(b"x")
    found = discover([str(tmp_path), str(tmp_path / "a.JPG")])
    assert found.files == [str(tmp_path / "a.JPG")]  # given twice, captioned once
    assert coco_image_id("val/COCO_val2014_000000391895.jpg") == 391895
    assert coco_image_id("000000000139.jpg") == 139
    assert coco_image_id("a/1000268201_693b08cb0e.jpg") == "1000268201_693b08cb0e"
    assert coco_image_id("x/b.jpg", {"b.jpg": 7}) == 7
    assert coco_image_id("cat_1.jpg") == "cat_1"  # only COCO-style names give numbers


def test_one_batch_job_checks_its_settings_up_front_and_writes_every_format_for_both_engines(tmp_path):
    """BatchJob is what the local and the Ray engine share: the checks before any work, the output."""
    from caption.errors import ParameterError
    from caption.serving.batch import BatchJob

    with pytest.raises(ParameterError, match="beam size 0 is not allowed"):
        BatchJob.plan(["a.jpg"], tmp_path / "out.jsonl", decoding={"beam_size": 0})
    with pytest.raises(ValueError, match="cannot tell the output format"):
        BatchJob.plan(["a.jpg"], tmp_path / "out.txt")
    files = ["x/000000000139.jpg", "x/000000000285.jpg"]
    records = [{"source": files[0], "caption": "a cat", "score": -1.0, "beams": []},
               {"source": files[1], "error": "damaged", "error_kind": "corrupt"},
               {"source": "other/7.jpg", "caption": "a file of another job"}]
    job = BatchJob.plan(files, tmp_path / "out.json", decoding={"beam_size": 2, "max_length": None})
    assert (job.fmt, job.decoding) == ("coco", {"beam_size": 2})
    assert job.image_ids == {files[0]: 139, files[1]: 285}
    job.write_journal(records)
    assert json.loads((tmp_path / "out.json").read_text()) == [{"image_id": 139, "caption": "a cat"}]
    assert read_jsonl(tmp_path / "out.json.progress.jsonl") == records
    BatchJob.plan(files, tmp_path / "out.jsonl").write_journal(records)
    assert read_jsonl(tmp_path / "out.jsonl") == records
    BatchJob.plan(files, tmp_path / "out.csv").write_journal(records)
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert rows[0] == "source,caption,score,error" and rows[2] == f"{files[1]},,,damaged"


def test_coco_results_refuse_files_that_would_share_an_image_id(dev_photos, tmp_path, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat_1.jpg", "dog_1.jpg", "000001.png", "1.jpg"):
        shutil.copy(dev_photos[0], folder / name)
    out = tmp_path / "results.json"
    assert main(["batch", str(folder), "--out", str(out), "--no-progress"]) == 2  # refused before captioning
    assert not out.exists() and not out.with_name("results.json.progress.jsonl").exists()
    assert ("share an id" in caplog.text
            and f"{folder / '000001.png'} and {folder / '1.jpg'} are both image 1" in caplog.text)
    (folder / "1.jpg").unlink()
    assert main(["batch", str(folder), "--out", str(out), "--no-progress"]) == 0
    assert sorted(map(str, (r["image_id"] for r in json.loads(out.read_text())))) == ["1", "cat_1", "dog_1"]


def test_folder_search_follows_linked_folders_once_and_keeps_bad_links(tmp_path, dev_photos):
    root = tmp_path / "photos"
    (root / "real").mkdir(parents=True)
    shutil.copy(dev_photos[0], root / "real" / "a.jpg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(dev_photos[1], elsewhere / "b.jpg")
    (root / "linked").symlink_to(elsewhere)  # a linked folder: searched
    (root / "real" / "up").symlink_to(root)  # a link back to a parent: not searched again
    (root / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")  # kept, to be reported as a bad file
    (root / "loop.jpg").symlink_to(root / "loop2.jpg")
    (root / "loop2.jpg").symlink_to(root / "loop.jpg")
    (root / "notes").symlink_to(tmp_path / "nowhere")  # not an image's name: left out, and counted
    found = discover([str(root)])
    names = [Path(p).relative_to(root).as_posix() for p in found.files]
    assert names == ["broken.jpg", "linked/b.jpg", "loop.jpg", "loop2.jpg", "real/a.jpg"]
    assert found.ignored == 1
    assert [Path(folder).name for folder, _ in found.skipped_folders] == ["up"]
    assert "searched already" in found.skipped_folders[0][1]
    direct = discover([str(root / "loop.jpg")])  # a looping link named on the command line is a bad file,
    assert direct.files == [str(root / "loop.jpg")]  # not a typo that stops the run


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_repeating_a_file(dev_photos, tmp_path):
    out = tmp_path / "captions.jsonl"
    command = [sys.executable, "-m", "caption.cli", "batch", *map(str, dev_photos), "--out", str(out),
               "--batch-size", "4", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 8:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    captioned_before = len(read_jsonl(out))
    assert 8 <= captioned_before < len(dev_photos), "the run should have been killed part-way"
    with out.open("a") as handle:  # as if the kill had come half-way through writing a record
        handle.write('{"source": "half a rec')

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr  # every file captioned
    assert f"{captioned_before} already in" in second.stderr
    records = read_jsonl(out)  # the half record is gone, every line parses
    assert [r["source"] for r in records] == [str(p) for p in dev_photos]  # each file once, in order
    assert all(r.get("caption") for r in records)
    assert len(list(Journal(out, "jsonl").records())) == len(dev_photos)


@pytest.mark.slow
def test_a_long_run_holds_one_batch_of_results_not_all_of_them(tmp_path):
    """10,000 files must not mean 10,000 results in memory (scripts/bench_batch.py measures the real thing).
    While 160 synthetic images (every tenth one bad) are captioned, at most one batch of results is alive, the
    traced Python memory stays flat, and no image tensor ever waits in a reference cycle for the garbage
    collector (a bad file's traceback once held its whole batch of images that way: +460 MB over 10,000)."""
    import gc
    import tracemalloc
    import warnings

    import numpy as np
    import torch
    from PIL import Image

    from caption.api import Captioner, CaptionResult
    from caption.serving.batch import caption_files

    rng = np.random.default_rng(0)
    files = []
    for i in range(160):
        path = tmp_path / f"img_{i:04d}.jpg"
        if i % 10 == 9:
            path.write_text("not a photo")
        else:
            Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    captioner = Captioner.load()
    captions = captioner.iter_captions
    samples: list[tuple[int, float]] = []

    def counted(*args, **kwargs):
        for number, result in enumerate(captions(*args, **kwargs), 1):
            yield result
            if number % 40 == 0:
                with warnings.catch_warnings():  # isinstance() on every object wakes deprecated torch names
                    warnings.simplefilter("ignore", FutureWarning)
                    alive = sum(isinstance(o, CaptionResult) for o in gc.get_objects())
                samples.append((alive, tracemalloc.get_traced_memory()[0] / 2**20))

    captioner.iter_captions = counted
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector frees is kept in gc.garbage, to be looked at
    tracemalloc.start()
    try:
        summary = caption_files(captioner, files, tmp_path / "out.jsonl", batch_size=16,
                               decoding=captioner.resolve_decoding(beam_size=1), progress=False)
        gc.collect()
        in_cycles = sum(isinstance(o, torch.Tensor) for o in gc.garbage)
    finally:
        tracemalloc.stop()
        gc.set_debug(0)
        gc.garbage.clear()
    assert (summary.captioned, len(summary.failed), len(samples)) == (144, 16, 4)
    assert max(alive for alive, _ in samples) <= 2 * 16, samples
    assert max(mb for _, mb in samples) - samples[0][1] < 1.0, samples
    assert in_cycles == 0
