"""``caption prepare table``: the same real COCO photos and captions written at test time as CSV, TSV, JSON
Lines (per caption and per image), an imagefolder (metadata.jsonl and metadata.csv) and Parquet (paths, and
images stored as bytes) all prepare to the same COCO caption JSON as the source; each kind of bad input is
named with its file and line, and nothing is written."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from caption.cli import main
from caption.data.coco import load_coco_json
from caption.data.tables import TableError, prepare_table, split_by_image
from tests.conftest import DATA, require

COCO_DEV = DATA / "coco" / "annotations" / "captions_val2017_subset_dev.json"
IMAGES = DATA / "coco" / "val2017"


@pytest.fixture(scope="module")
def source() -> dict[str, list[str]]:
    """Twelve COCO dev photos and their official captions, by file name."""
    data = load_coco_json(require(COCO_DEV))
    images = {image["id"]: image["file_name"] for image in data["images"][:12]}
    captions: dict[str, list[str]] = {name: [] for name in images.values()}
    for annotation in data["annotations"]:
        if annotation["image_id"] in images:
            captions[images[annotation["image_id"]]].append(" ".join(annotation["caption"].split()))
    for name in captions:
        require(IMAGES / name)
    return captions


def pairs(source: dict[str, list[str]]) -> list[tuple[str, str]]:
    return [(name, text) for name in sorted(source) for text in source[name]]


def prepared_pairs(out: Path, split: str = "train") -> list[tuple[str, str]]:
    data = json.loads((out / f"captions_{split}.json").read_text())
    names = {image["id"]: image["file_name"] for image in data["images"]}
    return [(names[a["image_id"]], a["caption"]) for a in data["annotations"]]


def write_csv(path: Path, header: list[str], rows: list[list], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_every_format_prepares_to_the_source_captions(source, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = pairs(source)
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    for name in source:
        shutil.copy(IMAGES / name, folder / name)
    write_jsonl(folder / "metadata.jsonl", [{"file_name": n, "text": texts} for n, texts in source.items()])
    csv_folder = tmp_path / "imagefolder_csv"
    shutil.copytree(folder, csv_folder)
    (csv_folder / "metadata.jsonl").unlink()
    write_csv(csv_folder / "metadata.csv", ["file_name", "text"], [list(r) for r in rows])
    tables = {
        # Flickr8k's widely shared captions.txt: a CSV of image,caption under a .txt name
        "captions.txt": (write_csv(tmp_path / "captions.txt", ["image", "caption"], [list(r) for r in rows]),
                         {"images": IMAGES}),
        "tsv": (write_csv(tmp_path / "c.tsv", ["file_name", "text"], [list(r) for r in rows], "\t"),
                {"images": IMAGES}),
        "jsonl per caption": (write_jsonl(tmp_path / "a.jsonl",
                                          [{"image": n, "caption": t} for n, t in rows]),
                              {"images": IMAGES}),
        "jsonl per image": (write_jsonl(tmp_path / "b.jsonl", [{"image": n, "captions": texts}
                                                              for n, texts in source.items()]),
                            {"images": IMAGES}),
        "imagefolder, metadata.jsonl": (folder, {}),
        "imagefolder, metadata.csv": (csv_folder, {}),
    }
    pq.write_table(pa.table({"image": [n for n, _ in rows], "text": [t for _, t in rows]}),
                   tmp_path / "paths.parquet")
    tables["parquet of paths"] = (tmp_path / "paths.parquet", {"images": IMAGES})
    # As the datasets library stores an Image column: {bytes, path} structs
    stored = [{"bytes": (IMAGES / n).read_bytes(), "path": n} for n in source]
    pq.write_table(pa.table({"image": stored, "captions": list(source.values())}), tmp_path / "hub.parquet")
    tables["parquet of stored images"] = (tmp_path / "hub.parquet", {"images_out": tmp_path / "written"})

    for kind, (table, options) in tables.items():
        out = tmp_path / "out" / kind
        prepare_table(table, out, dev_fraction=0, **options)
        assert sorted(prepared_pairs(out)) == sorted(rows), kind
        assert [p.name for p in out.iterdir()] == ["captions_train.json"], kind
    written = tmp_path / "written"
    assert sorted(p.name for p in written.iterdir()) == sorted(source)
    assert all((written / n).read_bytes() == (IMAGES / n).read_bytes() for n in source)


def test_splits_come_from_a_split_column_or_by_image_with_a_seed(source, tmp_path):
    names = sorted(source)
    rows = [[n, t, "validation" if n in names[:3] else "train"] for n, t in pairs(source)]
    table = write_csv(tmp_path / "s.csv", ["image", "caption", "split"], rows)
    out = prepare_table(table, tmp_path / "out", images=IMAGES)
    assert sorted(out) == ["dev", "train"]
    assert {n for n, _ in prepared_pairs(tmp_path / "out", "dev")} == set(names[:3])

    split = split_by_image(names, 0.25, seed=3)
    assert split == split_by_image(list(reversed(names)), 0.25, seed=3)  # the seed decides, not the order
    assert sum(s == "dev" for s in split.values()) == 3
    assert split != split_by_image(names, 0.25, seed=4)
    plain = write_csv(tmp_path / "p.csv", ["image", "caption"], [list(r) for r in pairs(source)])
    prepare_table(plain, tmp_path / "seeded", images=IMAGES, dev_fraction=0.25, seed=3)
    dev = {n for n, _ in prepared_pairs(tmp_path / "seeded", "dev")}
    train = {n for n, _ in prepared_pairs(tmp_path / "seeded", "train")}
    assert dev == {n for n, s in split.items() if s == "dev"}
    assert not dev & train  # by image, never by caption


def test_each_bad_input_is_named_and_nothing_is_written(source, tmp_path):
    names = sorted(source)
    good = [[n, t] for n, t in pairs(source)]
    copy = tmp_path / "photos"
    copy.mkdir()
    for name in names:
        shutil.copy(IMAGES / name, copy / name)
    shutil.copy(IMAGES / names[0], copy / "same_photo.jpg")
    cases = {
        "missing image": (write_csv(tmp_path / "m.csv", ["image", "caption"], [*good, ["nope.jpg", "a dog"]]),
                          {}, r"m\.csv:62: image 'nope\.jpg' not found in .*give the folder that holds it"),
        "empty caption": (write_csv(tmp_path / "e.csv", ["image", "caption"], [*good[:3], [names[1], "  "]]),
                          {}, r"e\.csv:5: empty caption for .*: write it or delete the row"),
        "unreadable row": (tmp_path / "u.jsonl", {}, r"u\.jsonl:2: unreadable row: not JSON"),
        "one image under two names": (
            write_csv(tmp_path / "d.csv", ["image", "caption"], [*good, ["same_photo.jpg", "a photo"]]),
            {}, rf"same_photo\.jpg is the same image as {names[0]}.*give each image one name"),
        "a column that does not exist": (
            write_csv(tmp_path / "c.csv", ["image", "caption"], good), {"caption_column": "text"},
            r"no column 'text' for the caption column; its columns are 'image', 'caption'"),
        "no column to guess": (write_csv(tmp_path / "g.csv", ["photo", "words"], good), {},
                               r"cannot tell which column holds the image .*'photo', 'words'"),
        "an image in two splits": (
            write_csv(tmp_path / "t.csv", ["image", "caption", "split"],
                      [[names[0], "a", "train"], [names[0], "b", "test"]]),
            {}, r"t\.csv:3: .* is in split 'test' here but 'train' at .*t\.csv:2"),
    }
    write_jsonl(tmp_path / "u.jsonl", [{"image": names[0], "caption": "a cat"}])
    with open(tmp_path / "u.jsonl", "a") as handle:
        handle.write('{"image": "x.jpg", "caption": \n')
    for kind, (table, options, message) in cases.items():
        out = tmp_path / "out" / kind.replace(" ", "_")
        with pytest.raises(TableError, match=message):
            prepare_table(table, out, images=copy, **options)
        assert not out.exists(), kind

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [{"bytes": b"x", "path": "a.jpg"}], "text": ["a"]}),
                   tmp_path / "h.parquet")
    with pytest.raises(TableError, match="stored in the table: give --images-out"):
        prepare_table(tmp_path / "h.parquet", tmp_path / "out" / "h")


def test_the_command_line_prepares_a_table_and_names_a_bad_one(source, tmp_path, caplog):
    table = write_csv(tmp_path / "c.csv", ["image", "caption"], [list(r) for r in pairs(source)])
    assert main(["prepare", "table", str(table), "--images", str(IMAGES), "--out", str(tmp_path / "o"),
                 "--dev-fraction", "0.2"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["captions_dev.json", "captions_train.json"]
    bad = write_csv(tmp_path / "b.csv", ["image", "caption"], [["nope.jpg", "a dog"]])
    assert main(["prepare", "table", str(bad), "--out", str(tmp_path / "b")]) == 2
    assert "b.csv:2: image 'nope.jpg' not found" in caplog.text and not (tmp_path / "b").exists()
