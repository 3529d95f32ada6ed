"""COCO caption metrics on a tiny case checked by hand, and the clear errors around Java and SPICE."""

import json
import math

import pytest

from caption.evaluation import metrics
from caption.evaluation.evaluate import evaluate
from caption.evaluation.metrics import MetricError, compute_metrics, spice_unavailable_reason
from tests.conftest import require_java

REFERENCES = {1: ["A dog is running on the grass."], 2: ["a man rides a red bike"]}
PREDICTIONS = {1: "a dog runs on the grass", 2: "two cats sleep"}


def test_scores_match_hand_computed_values():
    require_java()
    scores, per_item, skipped = compute_metrics(REFERENCES, PREDICTIONS,
                                                ["BLEU", "ROUGE_L", "CIDEr", "METEOR"])
    # Image 1: 5 of the 6 hypothesis words appear in the 7-word reference ("runs" does not);
    # brevity penalty exp(1 - 7/6). BLEU-1 = 5/6 * exp(-1/6).
    assert per_item["Bleu_1"][0] == pytest.approx(5 / 6 * math.exp(1 - 7 / 6), rel=1e-6)
    # Bigrams: a-dog, on-the, the-grass match of 5 -> BLEU-2 = sqrt(5/6 * 3/5) * BP.
    assert per_item["Bleu_2"][0] == pytest.approx(math.sqrt(5 / 6 * 3 / 5) * math.exp(1 - 7 / 6), rel=1e-6)
    # ROUGE-L: LCS "a dog on the grass" = 5, P = 5/6, R = 5/7, beta = 1.2.
    p, r, beta2 = 5 / 6, 5 / 7, 1.2**2
    assert per_item["ROUGE_L"][0] == pytest.approx((1 + beta2) * p * r / (r + beta2 * p), rel=1e-6)
    # Image 2 shares nothing with its reference.
    assert per_item["ROUGE_L"][1] == 0.0 and per_item["CIDEr"][1] == 0.0
    assert scores["ROUGE_L"] == pytest.approx(sum(per_item["ROUGE_L"]) / 2)
    assert 0.0 < scores["METEOR"] < 1.0 and per_item["METEOR"][1] == 0.0
    assert skipped == {}


def test_cider_of_an_exact_match_in_a_two_image_corpus_is_ten():
    """Every n-gram of image 1 occurs in one of the two documents, so all idf weights are equal
    and the cosine similarity is exactly 1 at every n: CIDEr-D = 10 x 1; image 2 scores 0."""
    require_java()
    scores, per_item, _ = compute_metrics(
        {1: ["a dog is running on the grass ."], 2: ["A man rides a red bike"]},
        {1: "a dog is running on the grass", 2: "two cats sleep"}, ["CIDEr", "BLEU"])
    assert per_item["CIDEr"] == pytest.approx([10.0, 0.0])
    assert scores["CIDEr"] == pytest.approx(5.0)
    assert per_item["Bleu_4"][0] == pytest.approx(1.0, rel=1e-6)


def test_spice_is_skipped_with_a_one_line_reason_when_its_jars_are_missing(monkeypatch):
    require_java()
    monkeypatch.setattr(metrics, "spice_unavailable_reason", lambda: "SPICE skipped: jars missing")
    scores, _, skipped = compute_metrics(REFERENCES, PREDICTIONS, ["BLEU", "SPICE"])
    assert "SPICE" not in scores and skipped == {"SPICE": "SPICE skipped: jars missing"}
    reason = spice_unavailable_reason()
    assert reason is None or ("\n" not in reason and "stanford-corenlp-3.6.0" in reason)


def test_missing_java_is_reported_up_front(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(MetricError, match="Java is not installed or not on PATH.*default-jre-headless"):
        compute_metrics(REFERENCES, PREDICTIONS, ["BLEU"])


def test_predictions_without_references_are_refused():
    with pytest.raises(ValueError, match="have no references"):
        compute_metrics(REFERENCES, {3: "a caption"}, ["BLEU"])


def test_evaluate_a_results_file_writes_metrics(tmp_path):
    require_java()
    annotations = tmp_path / "refs.json"
    annotations.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "caption": REFERENCES[1][0]},
                        {"id": 2, "image_id": 2, "caption": REFERENCES[2][0]}],
    }))
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": k, "caption": v} for k, v in PREDICTIONS.items()]))
    report = evaluate(annotations, tmp_path / "out", results_file=results, metrics=["BLEU", "CIDEr"])
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["scores"] == report["scores"] and written["images_scored"] == 2
    assert written["scores"]["Bleu_1"] > 0
    words = {word for text in PREDICTIONS.values() for word in text.split()}
    assert written["distinct_captions"] == 2 and written["distinct_words"] == len(words)

    results.write_text(json.dumps([{"image_id": 1}]))
    with pytest.raises(ValueError, match="entry 0 needs 'image_id' and a 'caption' string"):
        evaluate(annotations, tmp_path / "out", results_file=results)
