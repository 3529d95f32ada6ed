"""CHAIR (object hallucination): hand-written cases for the word matching, and real COCO and Flickr8k
captions."""

from __future__ import annotations

import json

import pytest

from caption.evaluation.chair import (
    SYNONYMS,
    caption_objects,
    chair,
    image_objects,
    instance_categories,
    singular,
)
from tests.conftest import DATA, require


def categories(caption: str) -> list[str]:
    return [category for category, _ in caption_objects(caption)]


def test_the_80_coco_categories_are_covered():
    assert len(SYNONYMS) == 80
    assert {"person", "hot dog", "teddy bear", "fire hydrant", "hair drier", "dining table"} <= set(SYNONYMS)


@pytest.mark.parametrize("caption, expected", [
    ("A giraffe standing next to a tree.", ["giraffe"]),
    ("two giraffes and three zebras", ["giraffe", "zebra"]),  # plurals
    # irregular plurals; dedup is chair()'s
    ("Men and women walking their dogs", ["person", "person", "dog"]),
    ("a hot dog with mustard", ["hot dog"]),  # the phrase, never a dog
    ("two hot dogs and a dog", ["hot dog", "dog"]),
    ("it is a hot day on the beach", []),  # "hot" alone names nothing
    ("a teddy bear on a bed", ["teddy bear", "bed"]),  # never a bear
    ("a brown bear in the river", ["bear"]),
    ("a man on a motor bike", ["person", "motorcycle"]),  # a two-word synonym
    ("a fire hydrant on the sidewalk", ["fire hydrant"]),
    ("a baby elephant walks with its mother", ["elephant", "person"]),  # "baby" before an animal is its age
    ("a baby sits in a high chair", ["person", "chair"]),
    ("an orange cat on the couch", ["cat", "couch"]),  # a colour
    ("an orange and white cat", ["cat"]),
    ("oranges and apples in a bowl", ["orange", "apple", "bowl"]),  # the fruit
    ("a plate with a burger and fries", ["sandwich"]),  # a synonym
    ("A MAN, holding an umbrella!", ["person", "umbrella"]),  # case and punctuation
    ("a laptop, a mouse and a keyboard on a desk", ["laptop", "mouse", "keyboard", "dining table"]),
])
def test_objects_are_found_by_their_synonyms(caption, expected):
    assert categories(caption) == expected


@pytest.mark.parametrize("word, base", [("buses", "bus"), ("benches", "bench"), ("knives", "knife"),
                                        ("ponies", "pony"), ("glass", "glass"), ("skis", "ski"),
                                        ("dogs", "dog"), ("grass", "grass"), ("sheep", "sheep"),
                                        ("people", "person")])
def test_singular(word, base):
    assert singular(word) == base


def test_chair_counts_captions_and_mentions():
    references = {
        1: ["a dog runs on the grass", "a brown dog plays with a ball"],
        2: ["a pizza on a table", "a cheese pizza sits on a plate on the table"],
        3: ["a man rides a wave on a surfboard"],
    }
    predictions = {
        1: "a dog catches a frisbee",  # frisbee: not in the references
        2: "a pizza and a hot dog on a table",  # hot dog: not in the references
        3: "a surfer riding a wave",  # surfer is a person; a man is in the references
    }
    result = chair(predictions, references)
    assert result.captions == 3 and result.captions_with_hallucination == 2
    assert result.chair_s == pytest.approx(2 / 3)
    # dog, frisbee, pizza, hot dog, table, person
    assert result.mentions == 6 and result.hallucinated_mentions == 2
    assert result.chair_i == pytest.approx(2 / 6)
    assert result.hallucinated == {1: ["frisbee"], 2: ["hot dog"]}
    # COCO instance annotations are ground truth too: a frisbee labelled in the photo is no hallucination.
    with_instances = chair(predictions, references, {1: {"frisbee"}})
    assert with_instances.hallucinated == {2: ["hot dog"]}


def test_instance_annotations_are_read_from_a_coco_instances_file():
    instances = {"categories": [{"id": 18, "name": "dog"}, {"id": 34, "name": "frisbee"}],
                 "annotations": [{"image_id": 1, "category_id": 18}, {"image_id": 1, "category_id": 34},
                                 {"image_id": 2, "category_id": 18}, {"image_id": 3, "category_id": 99}]}
    assert instance_categories(instances) == {1: {"dog", "frisbee"}, 2: {"dog"}}


def _references(path) -> dict[int, list[str]]:
    data = json.loads(require(path).read_text())
    refs: dict[int, list[str]] = {}
    for ann in data["annotations"]:
        refs.setdefault(ann["image_id"], []).append(ann["caption"])
    return refs


def test_real_coco_references_against_each_other():
    refs = _references(DATA / "coco" / "annotations" / "captions_val2017_subset_dev.json")
    # A photo's own first reference, scored against its other four: real captions name real objects, and the
    # rare misses are objects only one annotator named.
    own = chair({i: texts[0] for i, texts in refs.items()}, {i: texts[1:] for i, texts in refs.items()})
    assert own.mentions > 300 and own.chair_s < 0.25
    # Another photo's caption: the objects are mostly wrong.
    ids = sorted(refs)
    shifted = chair({i: refs[ids[(k + 1) % len(ids)]][0] for k, i in enumerate(ids)}, refs)
    assert shifted.chair_s > 0.6 and shifted.chair_s > 3 * own.chair_s
    # Every photo of the split names some COCO object in its references.
    assert sum(1 for texts in refs.values() if image_objects(texts)) / len(refs) > 0.95


def test_real_flickr8k_captions(flickr_splits):
    refs = _references(flickr_splits["dev"])
    own = chair({i: texts[0] for i, texts in refs.items()}, {i: texts[1:] for i, texts in refs.items()})
    assert own.captions == 1000 and own.chair_s < 0.25
    # "A dog runs through the grass" on a photo whose references say only people: a hallucinated dog.
    people_only = next(i for i, texts in refs.items()
                       if {c for t in texts for c, _ in caption_objects(t)} == {"person"})
    assert chair({people_only: "a dog runs through the grass"}, refs).hallucinated == {people_only: ["dog"]}
