"""Evaluation: COCO caption metrics (pycocoevalcap) and scoring a model on a split."""
