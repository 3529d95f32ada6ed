"""Read COCO caption JSON (``images`` + ``annotations``), the one format every data set is converted to."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from caption.utils.io import read_json
from caption.utils.logging import logger


@dataclass
class CaptionSet:
    """The images of one split, their files and their reference captions, in file order."""

    source: str
    image_ids: list[int]
    file_names: list[str]
    captions: dict[int, list[str]] = field(default_factory=dict)
    image_root: Path | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def path(self, index: int) -> Path:
        if self.image_root is None:
            return Path(self.file_names[index])
        return self.image_root / self.file_names[index]

    def paths(self) -> list[Path]:
        return [self.path(i) for i in range(len(self))]

    def subset(self, indices: list[int]) -> CaptionSet:
        ids = [self.image_ids[i] for i in indices]
        return CaptionSet(
            source=self.source,
            image_ids=ids,
            file_names=[self.file_names[i] for i in indices],
            captions={i: self.captions[i] for i in ids if i in self.captions},
            image_root=self.image_root,
        )

    def all_captions(self) -> list[str]:
        return [text for image_id in self.image_ids for text in self.captions.get(image_id, [])]


def load_coco_json(path: str | Path) -> dict:
    """Load and check the structure of a COCO caption file, naming the file and entry on any fault."""
    path = Path(path)
    data = read_json(path, "COCO caption file")
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError(
            f"{path} is not a COCO caption file: it needs top-level 'images' and 'annotations' lists"
        )
    owners: dict = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"{path}: images[{i}] needs 'id' and 'file_name', got {image!r:.200}")
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise ValueError(f"{path}: images[{i}] has file_name {image['file_name']!r}: give the image's "
                             "file name (relative to the image folder)")
        first = owners.setdefault(image["id"], i)
        if first != i:  # one id for two entries would give one photo the other's captions
            raise ValueError(f"{path}: images[{i}] ({image['file_name']}) has the id {image['id']!r} of "
                             f"images[{first}] ({data['images'][first]['file_name']}): give each image "
                             "its own id")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise ValueError(f"{path}: annotations[{i}] needs 'image_id' and 'caption', got {ann!r:.200}")
        ann.setdefault("id", i + 1)
    return data


def coco_api(data: dict):
    """A pycocotools ``COCO`` object over already-loaded data (its own loader prints to stdout)."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_caption_set(
    annotations: str | Path,
    image_root: str | Path | None = None,
    *,
    check_files: bool = True,
    require_captions: bool = True,
) -> CaptionSet:
    """Read a split through pycocotools' COCO API.

    Images whose files are missing under ``image_root`` (when ``check_files``) and, when
    ``require_captions``, images with no usable caption are dropped with one warning that names the
    annotation file, how many were dropped and the first few of them.
    """
    annotations = Path(annotations)
    data = load_coco_json(annotations)
    coco = coco_api(data)
    root = Path(image_root) if image_root else None

    image_ids, file_names, captions = [], [], {}
    missing, uncaptioned, empty = [], [], []
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        texts = []
        for ann in coco.imgToAnns.get(image_id, []):
            text = ann["caption"]
            if not isinstance(text, str) or not text.strip():
                empty.append(ann.get("id"))
                continue
            texts.append(text.strip())
        if require_captions and not texts:
            uncaptioned.append(info["file_name"])
            continue
        if check_files and root is not None and not (root / info["file_name"]).is_file():
            missing.append(info["file_name"])
            continue
        image_ids.append(int(image_id))
        file_names.append(info["file_name"])
        captions[int(image_id)] = texts

    orphans = [ann.get("id") for ann in data["annotations"] if ann["image_id"] not in coco.imgs]
    _warn_dropped(annotations, missing, f"images listed but missing under {root}")
    _warn_dropped(annotations, uncaptioned, "images without a caption")
    _warn_dropped(annotations, empty, "empty or non-text captions (annotation ids)")
    _warn_dropped(annotations, orphans, "captions for an image id not in 'images' (annotation ids)")
    if not image_ids:
        raise ValueError(
            f"{annotations}: no usable images (check the image folder {root} and the file names)"
        )
    return CaptionSet(str(annotations), image_ids, file_names, captions, root)


def _warn_dropped(source: Path, items: list, what: str) -> None:
    if items:
        shown = ", ".join(str(x) for x in items[:5]) + (", ..." if len(items) > 5 else "")
        logger.warning("%s: skipped %d %s: %s", source, len(items), what, shown)
