"""CHAIR: object hallucination in captions (Rohrbach et al. 2018, "Object Hallucination in Image Captioning").

A caption's mentions of the 80 COCO object categories are found through a synonym list (singular and
plural forms, two-word phrases such as "hot dog" and "teddy bear" matched before their single words); a
mention is hallucinated when the image's ground truth does not hold that category. The ground truth is the
categories its reference captions mention, and, where given, its COCO instance annotations.

    CHAIRs = captions with a hallucinated object / all captions
    CHAIRi = hallucinated object mentions / all object mentions (each category counted once per caption)

As in the paper, words are matched after lower-casing and stripping punctuation, plurals are reduced to
the singular, and a person word right before an animal word ("baby elephant", "adult giraffe") is an age,
not a person. "orange" before another content word is a colour, not the fruit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Category -> the words and phrases that name it (singular; plurals are derived). Phrases are listed with
# the category whose object they are, so "hot dog" is food and never a dog, "teddy bear" never a bear.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "woman", "men", "women", "boy", "girl", "child", "children", "kid",
               "baby", "toddler", "adult", "lady", "guy", "gentleman", "player", "skier", "snowboarder",
               "surfer", "skateboarder", "skater", "rider", "biker", "cyclist", "chef", "cook", "worker",
               "officer", "policeman", "cop", "soldier", "passenger", "pedestrian", "tourist", "student",
               "teenager", "teen", "crowd", "family", "mother", "father", "mom", "dad", "son", "daughter",
               "brother", "sister", "bride", "groom", "batter", "pitcher", "catcher", "umpire", "athlete",
               "cowboy", "male", "female", "youngster", "infant", "spectator", "swimmer", "climber", "hiker",
               "runner", "dancer", "performer", "musician", "tennis player", "baseball player",
               "police officer"),
    "bicycle": ("bicycle", "bike"),
    "car": ("car", "automobile", "van", "minivan", "sedan", "suv", "taxi", "cab", "jeep", "police car"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "motor cycle", "scooter", "moped", "dirt bike"),
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner", "jetliner", "aeroplane", "jumbo jet"),
    "bus": ("bus", "trolley", "double decker", "school bus"),
    "train": ("train", "locomotive", "tram", "subway", "railcar", "freight train", "passenger train"),
    "truck": ("truck", "pickup", "lorry", "firetruck", "fire truck", "pickup truck", "semi truck"),
    "boat": ("boat", "ship", "canoe", "kayak", "sailboat", "yacht", "ferry", "raft", "rowboat", "speedboat"),
    "traffic light": ("traffic light", "stop light", "stoplight", "traffic signal", "street light"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter", "meter"),
    "bench": ("bench", "pew"),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "swan", "parrot", "eagle", "hawk", "owl",
             "crow", "sparrow", "hen", "rooster", "penguin", "pelican", "flamingo"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup", "poodle", "terrier", "retriever", "labrador", "dalmatian", "collie",
            "bulldog", "beagle", "pug", "chihuahua", "husky", "greyhound", "spaniel", "german shepherd"),
    "horse": ("horse", "pony", "foal", "colt", "stallion", "mare"),
    "sheep": ("sheep", "lamb", "ram", "goat"),
    "cow": ("cow", "cattle", "bull", "calf", "ox", "oxen", "steer", "buffalo"),
    "elephant": ("elephant",),
    "bear": ("bear", "polar bear", "grizzly"),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "knapsack", "rucksack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "purse", "bag", "clutch"),
    "tie": ("tie", "necktie", "bow tie"),
    "suitcase": ("suitcase", "luggage", "suit case", "briefcase"),
    "frisbee": ("frisbee", "flying disc"),
    "skis": ("ski", "skis"),
    "snowboard": ("snowboard",),
    "sports ball": ("ball", "soccer ball", "football", "baseball", "basketball", "tennis ball", "volleyball",
                    "softball", "sports ball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board", "boogie board", "paddleboard"),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass", "glass of wine"),
    "cup": ("cup", "mug", "teacup", "coffee cup"),
    "fork": ("fork",),
    "knife": ("knife", "knives"),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger", "cheeseburger", "panini"),
    "orange": ("orange", "tangerine", "clementine"),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog", "chili dog", "corn dog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake", "cheesecake", "birthday cake"),
    "chair": ("chair", "stool", "armchair", "recliner", "highchair"),
    "couch": ("couch", "sofa", "loveseat", "futon"),
    "potted plant": ("potted plant", "house plant", "houseplant", "plant", "flower pot", "flowerpot"),
    "bed": ("bed", "crib", "mattress"),
    "dining table": ("table", "dining table", "desk", "kitchen table", "coffee table"),
    "toilet": ("toilet", "urinal", "commode"),
    "tv": ("tv", "television", "monitor", "tv screen"),
    "laptop": ("laptop", "notebook computer", "macbook", "laptop computer"),
    "mouse": ("mouse", "computer mouse"),
    "remote": ("remote", "remote control", "controller", "wii remote", "game controller"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "phone", "cellphone", "mobile phone", "smartphone", "smart phone", "iphone"),
    "microwave": ("microwave",),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge", "freezer"),
    "book": ("book", "novel", "textbook"),
    "clock": ("clock", "clock tower"),
    "vase": ("vase",),
    "scissors": ("scissors", "shears"),
    "teddy bear": ("teddy bear", "teddy", "stuffed bear", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer", "blowdryer"),
    "toothbrush": ("toothbrush", "tooth brush"),
}

# Plurals the suffix rules get wrong, and words that look plural but are not (left as they are).
IRREGULAR_PLURALS = {
    "men": "man", "women": "woman", "children": "child", "people": "person", "feet": "foot", "mice": "mouse",
    "geese": "goose", "oxen": "ox", "knives": "knife", "calves": "calf", "wolves": "wolf", "loaves": "loaf",
    "leaves": "leaf", "shelves": "shelf", "teeth": "tooth", "policemen": "policeman",
    "gentlemen": "gentleman", "sheep": "sheep", "cattle": "cattle", "buses": "bus", "busses": "bus",
    "glasses": "glass", "benches": "bench", "sandwiches": "sandwich", "couches": "couch", "boxes": "box",
    "dishes": "dish", "ponies": "pony", "puppies": "puppy", "babies": "baby", "ladies": "lady",
    "families": "family", "kitties": "kitty", "teddies": "teddy", "skis": "ski", "scissors": "scissors",
    "shears": "shears", "tomatoes": "tomato", "potatoes": "potato", "luggage": "luggage",
    "broccoli": "broccoli", "species": "species",
    "bus": "bus", "glass": "glass", "grass": "grass", "dress": "dress", "class": "class", "cross": "cross",
}
# Person words that, right before an animal word, give its age ("baby elephant") rather than a person.
AGE_WORDS = {"baby", "adult", "young", "mother", "father", "child", "kid"}
ANIMALS = {"bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe"}
# After "orange", a word that keeps it a noun (the fruit): anything else makes it a colour.
ORANGE_NOUN_FOLLOWERS = {"", "and", "or", "on", "in", "with", "is", "are", "sits", "sitting", "next", "slice",
                         "slices", "peel", "peels", "half", "halves", "wedge", "wedges", "juice", "of", "to",
                         "near", "by", "that", "which", "while", "at", "from", "for"}
COLOURS = {"white", "black", "red", "blue", "green", "yellow", "brown", "pink", "purple", "grey", "gray",
           "orange"}

_WORD = re.compile(r"[a-z]+")


def singular(word: str) -> str:
    """The singular of an English noun, by the usual suffix rules and a list of exceptions."""
    if word in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[word]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _build_lookup() -> tuple[dict[tuple[str, ...], str], int]:
    lookup: dict[tuple[str, ...], str] = {}
    for category, names in SYNONYMS.items():
        for name in names:
            key = tuple(singular(word) for word in name.split())
            if lookup.get(key, category) != category:
                raise ValueError(f"CHAIR synonyms: {name!r} names both {lookup[key]!r} and {category!r}")
            lookup[key] = category
    return lookup, max(len(key) for key in lookup)


_LOOKUP, _LONGEST = _build_lookup()


def _is_colour(words: list[str], after: int) -> bool:
    """Whether "orange" before ``words[after]`` is a colour: another content word follows it, or a conjunction
    and then a colour ("orange and white")."""
    following = words[after] if after < len(words) else ""
    if following not in ORANGE_NOUN_FOLLOWERS:
        return True
    return following in ("and", "or") and after + 1 < len(words) and words[after + 1] in COLOURS


def caption_objects(caption: str) -> list[tuple[str, str]]:
    """(category, the words that named it) for each COCO object a caption mentions, in order of mention;
    the longest phrase at a position wins, so "a hot dog" is one hot dog and no dog."""
    words = _WORD.findall(caption.lower())
    singulars = [singular(word) for word in words]
    found = []
    i = 0
    while i < len(words):
        for size in range(min(_LONGEST, len(words) - i), 0, -1):
            category = _LOOKUP.get(tuple(singulars[i : i + size]))
            if category is None:
                continue
            following = singulars[i + size] if i + size < len(words) else ""
            if (category == "person" and size == 1 and singulars[i] in AGE_WORDS
                    and _LOOKUP.get((following,)) in ANIMALS):
                category = None  # "baby elephant": the elephant's age
            elif category == "orange" and singulars[i] == "orange" and _is_colour(singulars, i + 1):
                category = None  # "an orange cat", "orange and white": a colour
            if category is not None:
                found.append((category, " ".join(words[i : i + size])))
            i += size - 1
            break
        i += 1
    return found


def image_objects(references: Iterable[str], instances: Iterable[str] = ()) -> set[str]:
    """The categories an image holds: those its reference captions mention, plus its instance labels."""
    truth = {category for text in references for category, _ in caption_objects(text)}
    return truth | set(instances)


@dataclass
class ChairResult:
    chair_s: float
    chair_i: float
    captions: int
    mentions: int
    hallucinated_mentions: int
    captions_with_hallucination: int
    # image id -> the hallucinated categories of its caption, for the images that have any.
    hallucinated: dict[int, list[str]] = field(default_factory=dict)

    def summary(self) -> dict[str, float | int]:
        return {"CHAIRs": self.chair_s, "CHAIRi": self.chair_i, "captions": self.captions,
                "object_mentions": self.mentions, "hallucinated_mentions": self.hallucinated_mentions}


def chair(
    predictions: Mapping[int, str],
    references: Mapping[int, list[str]],
    instances: Mapping[int, Iterable[str]] | None = None,
) -> ChairResult:
    """CHAIRs and CHAIRi of ``predictions`` ({image id: caption}) against each image's reference captions
    and, where given, its instance annotations ({image id: category names})."""
    mentions = hallucinated_mentions = flagged = 0
    hallucinated: dict[int, list[str]] = {}
    for image_id, caption in predictions.items():
        truth = image_objects(references.get(image_id, []), (instances or {}).get(image_id, ()))
        named = list(dict.fromkeys(category for category, _ in caption_objects(caption)))
        wrong = [category for category in named if category not in truth]
        mentions += len(named)
        hallucinated_mentions += len(wrong)
        if wrong:
            flagged += 1
            hallucinated[image_id] = wrong
    return ChairResult(
        chair_s=flagged / len(predictions) if predictions else 0.0,
        chair_i=hallucinated_mentions / mentions if mentions else 0.0,
        captions=len(predictions), mentions=mentions, hallucinated_mentions=hallucinated_mentions,
        captions_with_hallucination=flagged, hallucinated=hallucinated,
    )


def instance_categories(instances_json: Mapping) -> dict[int, set[str]]:
    """{image id: category names} from a COCO instances file (``annotations`` with ``category_id`` and
    ``categories`` with ``id`` and ``name``), the paper's second source of ground truth."""
    names = {category["id"]: category["name"] for category in instances_json.get("categories", [])}
    objects: dict[int, set[str]] = {}
    for ann in instances_json.get("annotations", []):
        if ann.get("category_id") in names:
            objects.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    return objects
