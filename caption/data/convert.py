"""Converters from the common caption-data layouts into COCO caption JSON, one file per split."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from pathlib import Path

from caption.data.video import VIDEO_EXTENSIONS
from caption.utils.io import atomic_write_json, read_json
from caption.utils.logging import logger

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MSVD_TRAIN, MSVD_VAL = 1200, 100  # the standard MSVD split: 1,200 train, 100 val, the remaining 670 test
SPLIT_NAMES = {"validate": "val"}  # MSR-VTT's name for its validation split


def coco_caption_json(split: str, source: str, images: list[dict], annotations: list[dict]) -> dict:
    return {
        "info": {"description": f"{source}, {split} split, converted by caption prepare"},
        "licenses": [],
        "type": "captions",
        "images": images,
        "annotations": annotations,
    }


def _write_split(
    out_dir: str | Path, split: str, source: str, images: list[dict], annotations: list[dict],
) -> Path:
    out = Path(out_dir) / f"captions_{split}.json"
    atomic_write_json(out, coco_caption_json(split, source, images, annotations))
    logger.info("wrote %s: %d images, %d captions", out, len(images), len(annotations))
    return out


def _image_ids(file_names: list[str]) -> dict[str, int]:
    """Flickr photo ids (the number before the first '_') when they are unique, else 1..n in name order."""
    ids = {}
    for name in file_names:
        match = re.match(r"(\d+)_", name)
        if not match:
            break
        ids[name] = int(match.group(1))
    if len(ids) == len(file_names) and len(set(ids.values())) == len(ids):
        return ids
    return {name: i + 1 for i, name in enumerate(sorted(file_names))}


def convert_flickr8k(
    token_file: str | Path, splits: dict[str, str | Path], out_dir: str | Path,
) -> dict[str, Path]:
    """``Flickr8k.token.txt`` (``<image>#<n>\\t<caption>``) plus split lists -> ``captions_<split>.json``.

    Lines that cannot be parsed, names that are not image files (the data set's ``...jpg.1`` entry) and
    split images without captions are reported with the file and line, and skipped.
    """
    token_file = Path(token_file)
    captions: dict[str, list[str]] = defaultdict(list)
    first_line: dict[str, int] = {}
    bad_names: dict[str, list[int]] = defaultdict(list)
    with open(token_file, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            key, tab, text = line.partition("\t")
            name = key.rsplit("#", 1)[0]
            if not tab or "#" not in key or not text.strip():
                logger.warning("%s:%d: expected '<image>#<n><TAB><caption>', skipped: %r",
                               token_file, line_no, line[:80])
                continue
            if not name.lower().endswith(IMAGE_SUFFIXES):
                bad_names[name].append(line_no)
                continue
            first_line.setdefault(name, line_no)
            captions[name].append(text.strip())
    for name, lines in bad_names.items():
        logger.warning(
            "%s:%d: %r is not an image file name (a known quirk of this file); its %d caption(s) are skipped",
            token_file, lines[0], name, len(lines),
        )

    ids = _image_ids(sorted(captions))
    written = {}
    for split, list_file in splits.items():
        list_file = Path(list_file)
        names = [n.strip() for n in list_file.read_text(encoding="utf-8").splitlines() if n.strip()]
        images, annotations, uncaptioned = [], [], []
        for name in names:
            if name not in captions:
                uncaptioned.append(name)
                continue
            images.append({"id": ids[name], "file_name": name})
            for text in captions[name]:
                annotations.append({"id": len(annotations) + 1, "image_id": ids[name], "caption": text})
        if uncaptioned:
            logger.warning("%s: %d image(s) have no caption in %s and are skipped: %s",
                           list_file, len(uncaptioned), token_file, ", ".join(uncaptioned[:5]))
        written[split] = _write_split(out_dir, split, "Flickr8k", images, annotations)
    return written


def convert_karpathy(
    dataset_json: str | Path, out_dir: str | Path, *, restval_to_train: bool = True,
) -> dict[str, Path]:
    """Karpathy's ``dataset_{coco,flickr8k,flickr30k}.json`` -> ``captions_{train,val,test}.json``.

    COCO's ``restval`` images join the training split, as in the usual Karpathy-split training recipe.
    """
    dataset_json = Path(dataset_json)
    data = read_json(dataset_json, "Karpathy split file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{dataset_json} is not a Karpathy split file: it needs a top-level 'images' list")
    source = f"Karpathy split of {data.get('dataset', 'unknown')}"
    per_split: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
    for i, item in enumerate(data["images"]):
        try:
            split = item["split"]
            name = f"{item['filepath']}/{item['filename']}" if item.get("filepath") else item["filename"]
            image_id = int(item["cocoid"] if "cocoid" in item else item["imgid"])
            sentences = [s["raw"] for s in item["sentences"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{dataset_json}: images[{i}] lacks a field of the Karpathy format ({err!r})"
            ) from None
        if split == "restval" and restval_to_train:
            split = "train"
        images, annotations = per_split[split]
        images.append({"id": image_id, "file_name": name})
        for text in sentences:
            if isinstance(text, str) and text.strip():
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "caption": text.strip()}
                )
    written = {}
    for split, (images, annotations) in sorted(per_split.items()):
        written[split] = _write_split(out_dir, split, source, images, annotations)
    return written


def _write_videos(
    out_dir: str | Path, source: str, splits: dict[str, dict[str, list[str]]], ids: dict[str, int],
    names: dict[str, str],
) -> dict[str, Path]:
    """``{split: {clip: captions}}`` -> ``captions_<split>.json``; each video is an "image" entry."""
    written = {}
    for split, videos in splits.items():
        images, annotations = [], []
        for clip, texts in videos.items():
            images.append({"id": ids[clip], "file_name": names[clip]})
            for text in texts:
                annotations.append({"id": len(annotations) + 1, "image_id": ids[clip], "caption": text})
        written[split] = _write_split(out_dir, split, source, images, annotations)
    return written


def _read_msvd_mapping(path: Path) -> dict[int, str]:
    """``youtube_video_to_id_mapping.txt`` (``<clip> vidN`` lines) -> ``{N: clip}``."""
    clips: dict[int, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            match = re.fullmatch(r"(\S+)\s+vid(\d+)", line.strip())
            if not match:
                if line.strip():
                    logger.warning("%s:%d: expected '<clip> vid<N>', skipped: %r",
                                   path, line_no, line.strip()[:80])
                continue
            if int(match.group(2)) in clips:
                logger.warning("%s:%d: vid%s is mapped twice, skipped", path, line_no, match.group(2))
                continue
            clips[int(match.group(2))] = match.group(1)
    if not clips:
        raise ValueError(f"{path} is not an MSVD mapping file: no '<clip> vid<N>' lines")
    return clips


def _read_msvd_sentences(path: Path, clips: dict[int, str]) -> dict[str, list[str]]:
    """``sents_<split>_lc_nopunc.txt`` (``vidN<TAB><caption>`` lines) -> ``{clip: captions}``
    in file order."""
    captions: dict[str, list[str]] = defaultdict(list)
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            match = re.fullmatch(r"vid(\d+)\s+(\S.*)", line.strip())
            if not match:
                logger.warning("%s:%d: expected 'vid<N><TAB><caption>', skipped: %r",
                               path, line_no, line.strip()[:80])
            elif int(match.group(1)) not in clips:
                logger.warning("%s:%d: vid%s is not in the mapping file, skipped",
                               path, line_no, match.group(1))
            else:
                captions[clips[int(match.group(1))]].append(match.group(2))
    return captions


def _read_msvd_csv(path: Path) -> dict[str, list[str]]:
    """The English descriptions of ``MSR Video Description Corpus.csv`` -> ``{VideoID_Start_End: captions}``.

    The file is read as UTF-8 with undecodable bytes replaced (with a warning); a description split by
    unquoted commas is joined back, since it is the last column; blank descriptions and rows without a
    clip are reported with the file and line, and skipped.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        logger.warning("%s: not valid UTF-8 (byte offset %d); undecodable bytes are replaced",
                       path, err.start)
        text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="_extra")
    reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
    missing = {"VideoID", "Start", "End", "Language", "Description"} - set(reader.fieldnames)
    if missing:
        raise ValueError(
            f"{path} is not the MSVD corpus CSV: it lacks the column(s) {', '.join(sorted(missing))}"
        )
    captions: dict[str, list[str]] = defaultdict(list)
    blank = []
    for row in reader:
        if (row["Language"] or "").strip() != "English":
            continue
        video, start, end = ((row[key] or "").strip() for key in ("VideoID", "Start", "End"))
        description = ",".join([row["Description"] or "", *row.get("_extra", [])]).strip()
        if not video or not start.isdigit() or not end.isdigit():
            logger.warning("%s:%d: expected VideoID, integer Start and End, skipped: %r",
                           path, reader.line_num, f"{video},{start},{end}"[:80])
        elif not description:
            blank.append(reader.line_num)
        else:
            captions[f"{video}_{start}_{end}"].append(description)
    if blank:
        logger.warning("%s:%d: %d blank English description(s) skipped (lines %s)",
                       path, blank[0], len(blank),
                       ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else ""))
    return captions


def convert_msvd(
    out_dir: str | Path,
    *,
    mapping_file: str | Path | None = None,
    sentence_files: list[str | Path] | None = None,
    corpus_csv: str | Path | None = None,
    video_dir: str | Path | None = None,
    video_ext: str = ".avi",
) -> dict[str, Path]:
    """MSVD (YouTube2Text) -> ``captions_<split>.json``, one "image" entry per video clip.

    Form A, the common preprocessed release: ``mapping_file`` (``youtube_video_to_id_mapping.txt``)
    plus ``sentence_files`` (``sents_<split>_lc_nopunc.txt``, the split named by the file); ids are the N
    of ``vidN``. Form B: the original ``corpus_csv`` (``MSR Video Description Corpus.csv``), English
    descriptions only, split the standard way (1,200 train, 100 val, the rest test) in the mapping's
    vid order when a mapping is given (ids are then the N of ``vidN``), else in the CSV's clip order
    (ids 1..n). File names are ``<clip><video_ext>``, or the clip's file in ``video_dir`` when it has one.
    """
    if bool(sentence_files) == (corpus_csv is not None):
        raise ValueError(
            "MSVD: give either sentence_files (with mapping_file) or corpus_csv, not both or neither"
        )
    clips = _read_msvd_mapping(Path(mapping_file)) if mapping_file else {}
    splits: dict[str, dict[str, list[str]]] = defaultdict(dict)
    if sentence_files:
        if not clips:
            raise ValueError(
                "MSVD sentence files name videos vidN: mapping_file (youtube_video_to_id_mapping.txt) "
                "is needed"
            )
        for sentence_file in map(Path, sentence_files):
            match = re.match(r"sents_([A-Za-z]+)", sentence_file.name)
            if not match:
                raise ValueError(
                    f"{sentence_file}: cannot tell the split, expected a name like sents_train_lc_nopunc.txt"
                )
            splits[SPLIT_NAMES.get(match.group(1), match.group(1))].update(
                _read_msvd_sentences(sentence_file, clips)
            )
        ids = {clip: n for n, clip in clips.items()}
    else:
        captions = _read_msvd_csv(Path(corpus_csv))
        order = [clips[n] for n in sorted(clips)] if clips else list(captions)
        rank = {clip: i for i, clip in enumerate(order)}
        ids = (
            {clip: n for n, clip in clips.items()} if clips
            else {clip: i + 1 for i, clip in enumerate(order)}
        )
        unmapped = [clip for clip in captions if clip not in rank]
        if unmapped:
            logger.warning("%s: %d clip(s) are not in the mapping file %s and are skipped: %s",
                           corpus_csv, len(unmapped), mapping_file, ", ".join(unmapped[:5]))
        for clip in sorted(captions.keys() & rank.keys(), key=rank.get):
            split = (
                "train" if rank[clip] < MSVD_TRAIN
                else "val" if rank[clip] < MSVD_TRAIN + MSVD_VAL
                else "test"
            )
            splits[split][clip] = captions[clip]
    present: dict[str, str] = {}
    if video_dir is not None:
        if not Path(video_dir).is_dir():
            raise ValueError(f"MSVD video folder {video_dir} is not a folder")
        present = {
            p.stem: p.name for p in sorted(Path(video_dir).iterdir()) if p.suffix.lower() in VIDEO_EXTENSIONS
        }
        absent = [clip for videos in splits.values() for clip in videos if clip not in present]
        if absent:
            logger.warning("%s: %d clip(s) have no video file there, named <clip>%s: %s",
                           video_dir, len(absent), video_ext, ", ".join(absent[:5]))
    names = {clip: present.get(clip, clip + video_ext) for videos in splits.values() for clip in videos}
    return _write_videos(out_dir, "MSVD", splits, ids, names)


def convert_msrvtt(
    info_files: list[str | Path], out_dir: str | Path, *, video_ext: str = ".mp4",
) -> dict[str, Path]:
    """MSR-VTT ``train_val_videodatainfo.json`` / ``test_videodatainfo.json`` ->
    ``captions_{train,val,test}.json``.

    Ids are each video's ``id`` (else the digits of its ``video_id``); file names are
    ``<video_id><video_ext>``.
    Captions of videos no file lists, and videos without a caption, are reported and skipped.
    """
    split_of: dict[str, str] = {}
    ids: dict[str, int] = {}
    captions: dict[str, list[str]] = defaultdict(list)
    for info_file in map(Path, info_files):
        data = read_json(info_file, "MSR-VTT videodatainfo file")
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("videos"), list)
            or not isinstance(data.get("sentences"), list)
        ):
            raise ValueError(
                f"{info_file} is not an MSR-VTT videodatainfo file: it needs top-level 'videos' and "
                "'sentences' lists"
            )
        for i, video in enumerate(data["videos"]):
            try:
                video_id, split = video["video_id"], video["split"]
                ids[video_id] = int(video.get("id", re.sub(r"\D", "", str(video_id))))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(
                    f"{info_file}: videos[{i}] is not an MSR-VTT video entry (it needs 'video_id', "
                    f"'split' and a numeric 'id' or video_id videoN): {err!r}"
                ) from None
            if split not in ("train", "validate", "test"):
                raise ValueError(
                    f"{info_file}: videos[{i}] has split {split!r}, expected train, validate or test"
                )
            split_of[video_id] = SPLIT_NAMES.get(split, split)
        for i, sentence in enumerate(data["sentences"]):
            try:
                video_id, text = sentence["video_id"], sentence["caption"]
            except (KeyError, TypeError) as err:
                raise ValueError(
                    f"{info_file}: sentences[{i}] lacks a field of the MSR-VTT format ({err!r})"
                ) from None
            if isinstance(text, str) and text.strip():
                captions[video_id].append(text.strip())
    unknown = sorted(captions.keys() - split_of.keys())
    uncaptioned = sorted(split_of.keys() - captions.keys())
    if unknown:
        logger.warning("%s: captions of %d video(s) not listed under 'videos' are skipped: %s",
                       ", ".join(map(str, info_files)), len(unknown), ", ".join(unknown[:5]))
    if uncaptioned:
        logger.warning("%s: %d video(s) without a caption are skipped: %s",
                       ", ".join(map(str, info_files)), len(uncaptioned), ", ".join(uncaptioned[:5]))
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "val": {}, "test": {}}
    for video_id, split in split_of.items():
        if video_id in captions:
            splits[split][video_id] = captions[video_id]
    names = {video_id: video_id + video_ext for video_id in split_of}
    return _write_videos(
        out_dir, "MSR-VTT", {split: videos for split, videos in splits.items() if videos}, ids, names,
    )
