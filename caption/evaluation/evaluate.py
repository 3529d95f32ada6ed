"""Caption a split with a model and score it, or score a COCO results JSON, against COCO references."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from caption.config import DataSetConfig, DecodingConfig
from caption.data.coco import CaptionSet, load_coco_json, read_caption_set
from caption.data.video import VideoTransform, is_video
from caption.decoding.predictor import Predictor
from caption.evaluation.chair import chair
from caption.evaluation.degenerate import degenerate_share
from caption.evaluation.metrics import METRIC_NAMES, compute_metrics
from caption.features.batching import iter_image_batches
from caption.features.cache import CachedFeatures
from caption.utils.io import atomic_write_json, read_json
from caption.utils.logging import logger


def predict_split(
    predictor: Predictor,
    captions: CaptionSet,
    decoding: DecodingConfig,
    *,
    features: CachedFeatures | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool = True,
) -> tuple[dict[int, str], dict[str, str]]:
    """Caption every image of a split (from cached ``features`` when given); returns ({image_id: caption},
    {file: error} for unreadable ones)."""
    predictions: dict[int, str] = {}
    errors: dict[str, str] = {}
    bar = tqdm(total=len(captions), desc="captioning", unit="img", disable=not progress, dynamic_ncols=True)

    def write(rows: list[int], batch: torch.Tensor) -> None:
        for row, text in zip(rows, predictor.captions(batch, None, decoding)):
            predictions[captions.image_ids[row]] = text
        bar.update(len(rows))

    if features is not None:
        rows = [i for i in range(len(captions)) if features.valid[i]]
        errors.update(features.errors)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            write(chunk,
                  torch.from_numpy(np.asarray(features.features[chunk], dtype=np.float32)))  # (B, N, C)
        bar.update(len(captions) - len(rows))
    else:
        paths = [str(p) for p in captions.paths()]
        transform = predictor.transform
        if any(is_video(path) for path in paths):
            transform = VideoTransform(transform, predictor.frames_per_video)
        batches = iter_image_batches(paths, transform, device=predictor.device, batch_size=batch_size,
                                     num_workers=num_workers)
        for indices, images, failed in batches:
            errors.update({paths[i]: err.reason for i, err in failed.items()})
            bar.update(len(failed))
            if images is not None:
                write(list(indices), predictor.encode(images))  # (B, N, C)
    bar.close()
    return predictions, errors


def results_list(predictions: dict[int, str]) -> list[dict]:
    """The COCO results format: ``[{"image_id": ..., "caption": ...}]``."""
    return [{"image_id": image_id, "caption": text} for image_id, text in sorted(predictions.items())]


def read_results(path: str | Path) -> dict[int, str]:
    data = read_json(path, "COCO results file")
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a COCO results file: expected a list of {{'image_id', 'caption'}}")
    predictions = {}
    for i, item in enumerate(data):
        if not isinstance(item, dict) or "image_id" not in item or not isinstance(item.get("caption"), str):
            raise ValueError(f"{path}: entry {i} needs 'image_id' and a 'caption' string, got {item!r:.200}")
        if item["image_id"] in predictions:
            raise ValueError(f"{path}: image_id {item['image_id']} has more than one caption (entry {i})")
        predictions[item["image_id"]] = item["caption"]
    return predictions


def references(annotations: str | Path) -> dict[int, list[str]]:
    data = load_coco_json(annotations)
    refs: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        if isinstance(ann["caption"], str) and ann["caption"].strip():
            refs.setdefault(ann["image_id"], []).append(ann["caption"])
    return refs


def split_report(
    references: dict[int, list[str]], predictions: dict[int, str], metrics: Iterable[str]
) -> dict:
    """Everything one split is scored by: the caption metrics, CHAIR, and the variety of the captions."""
    empty = sum(not text.strip() for text in predictions.values())
    if empty:
        logger.warning("%d of %d captions are empty (each scores as wrong)%s", empty, len(predictions),
                       ": every caption is empty, so every score is 0" if empty == len(predictions) else "")
    scores, _, skipped = compute_metrics(references, predictions, metrics)
    hallucination = chair(predictions, references)
    return {
        "images_scored": len(predictions),
        "scores": scores,
        "chair": hallucination.summary(),
        "empty_captions": empty,
        "distinct_captions": len(set(predictions.values())),
        "distinct_words": len({word for text in predictions.values() for word in text.split()}),
        "degenerate_share": degenerate_share(predictions.values()),
        "skipped": skipped,
    }


def evaluate(
    annotations: str | Path,
    out_dir: str | Path,
    *,
    predictor: Predictor | None = None,
    decoding: DecodingConfig | None = None,
    images: str | Path | None = None,
    results_file: str | Path | None = None,
    metrics: Iterable[str] = METRIC_NAMES,
    batch_size: int = 32,
    num_workers: int | None = None,
    max_images: int = 0,
) -> dict:
    """Score a model (captioning ``images``) or an existing results file; writes results.json and
    metrics.json."""
    out_dir = Path(out_dir)
    refs = references(annotations)
    errors: dict[str, str] = {}
    if results_file is not None:
        predictions = read_results(results_file)
    else:
        if predictor is None or decoding is None or images is None:
            raise ValueError("evaluate needs either a results file, or a model, its decoding settings and "
                             "an image folder")
        split = read_caption_set(annotations, images)
        if max_images:
            split = split.subset(list(range(min(max_images, len(split)))))
        predictions, errors = predict_split(predictor, split, decoding, batch_size=batch_size,
                                            num_workers=num_workers)
        atomic_write_json(out_dir / "results.json", results_list(predictions))
    report = {"annotations": str(annotations), **split_report(refs, predictions, metrics),
              "unreadable_images": errors}
    if results_file is not None:
        report["results"] = str(results_file)
    else:
        report["decoding"] = dataclasses.asdict(decoding)
    atomic_write_json(out_dir / "metrics.json", report)
    return report


def evaluate_splits(
    splits: list[DataSetConfig],
    out_dir: str | Path,
    *,
    predictor: Predictor,
    decoding: DecodingConfig,
    metrics: Iterable[str] = METRIC_NAMES,
    batch_size: int = 32,
    num_workers: int | None = None,
    max_images: int = 0,
) -> dict:
    """Score a model on several splits, each on its own (its CIDEr uses its own document frequencies):
    ``<out_dir>/<name>/`` holds each split's results.json and metrics.json, ``<out_dir>/metrics.json`` all of
    them and their weighted mean CIDEr (the split weights of the config)."""
    out_dir = Path(out_dir)
    reports = {
        split.name: evaluate(split.annotations, out_dir / split.name, predictor=predictor, decoding=decoding,
                             images=split.images, metrics=metrics, batch_size=batch_size,
                             num_workers=num_workers, max_images=max_images)
        for split in splits
    }
    summary = {"splits": reports, "decoding": dataclasses.asdict(decoding)}
    weights = {split.name: split.weight for split in splits}
    if "CIDEr" in next(iter(reports.values()))["scores"] and sum(weights.values()) > 0:
        summary["mean_CIDEr"] = (sum(weights[name] * r["scores"]["CIDEr"] for name, r in reports.items())
                                 / sum(weights.values()))
        summary["weights"] = weights
    atomic_write_json(out_dir / "metrics.json", summary)
    return summary
