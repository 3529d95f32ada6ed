"""Converters from the common caption-data layouts into COCO caption JSON, one file per split."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from caption.utils.io import atomic_write_json, read_json
from caption.utils.logging import logger

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def coco_caption_json(split: str, source: str, images: list[dict], annotations: list[dict]) -> dict:
    return {
        "info": {"description": f"{source}, {split} split, converted by caption prepare"},
        "licenses": [],
        "type": "captions",
        "images": images,
        "annotations": annotations,
    }


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


def convert_flickr8k(token_file: str | Path, splits: dict[str, str | Path], out_dir: str | Path) -> dict[str, Path]:
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
                logger.warning("%s:%d: expected '<image>#<n><TAB><caption>', skipped: %r", token_file, line_no, line[:80])
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
        out = Path(out_dir) / f"captions_{split}.json"
        atomic_write_json(out, coco_caption_json(split, "Flickr8k", images, annotations))
        logger.info("wrote %s: %d images, %d captions", out, len(images), len(annotations))
        written[split] = out
    return written


def convert_karpathy(dataset_json: str | Path, out_dir: str | Path, *, restval_to_train: bool = True) -> dict[str, Path]:
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
            raise ValueError(f"{dataset_json}: images[{i}] lacks a field of the Karpathy format ({err!r})") from None
        if split == "restval" and restval_to_train:
            split = "train"
        images, annotations = per_split[split]
        images.append({"id": image_id, "file_name": name})
        for text in sentences:
            if isinstance(text, str) and text.strip():
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": text.strip()})
    written = {}
    for split, (images, annotations) in sorted(per_split.items()):
        out = Path(out_dir) / f"captions_{split}.json"
        atomic_write_json(out, coco_caption_json(split, source, images, annotations))
        logger.info("wrote %s: %d images, %d captions", out, len(images), len(annotations))
        written[split] = out
    return written
