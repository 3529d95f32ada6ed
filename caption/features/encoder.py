"""Any timm model as an encoder that turns images into a set of feature vectors (B, N, C)."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json

import timm
import torch
import torch.nn.functional as F
from torch import nn

from caption.config import ConfigError, EncoderConfig
from caption.features.pretrained import (
    LITE_BN_EPS,
    LITE_MEAN,
    LITE_STD,
    apply_pretrained,
    set_batchnorm_eps,
    uses_lite_normalisation,
    weights_identity,
)

CACHE_FORMAT = 1


def _fold_batchnorm(backbone: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d that comes right after a Conv2d (in module order, same channels)
    into it; a timm BatchNormAct2d leaves its activation behind. Returns how many were folded."""
    from timm.layers import BatchNormAct2d

    modules = dict(backbone.named_modules())
    pairs, last_conv = [], None
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Conv2d):
            last_conv = module
        elif isinstance(module, nn.BatchNorm2d):
            if (last_conv is not None and module.track_running_stats and module.affine
                    and module.num_features == last_conv.out_channels):
                pairs.append((last_conv, name, module))
            last_conv = None
    for conv, name, norm in pairs:
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)  # (C_out,)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)  # (C_out,)
        conv.weight = nn.Parameter((conv.weight * scale.view(-1, 1, 1, 1)).detach())  # (C_out, C_in/g, k, k)
        conv.bias = nn.Parameter(((bias - norm.running_mean) * scale + norm.bias).detach())  # (C_out,)
        rest = nn.Sequential(norm.drop, norm.act) if isinstance(norm, BatchNormAct2d) else nn.Identity()
        parent, _, attribute = name.rpartition(".")
        setattr(modules[parent] if parent else backbone, attribute, rest)
    return len(pairs)


def resolve_encoder_config(cfg: EncoderConfig) -> EncoderConfig:
    """A copy of ``cfg`` with what the weights imply (``mean``, ``std``, ``bn_eps``) filled in where it is
    left empty; ``cfg`` itself is not changed.

    The resolved values are saved with every checkpoint, so a model loads without its original weights file.
    """
    bn_eps = cfg.bn_eps
    if uses_lite_normalisation(cfg.weights):
        mean, std = LITE_MEAN, LITE_STD
        bn_eps = bn_eps or LITE_BN_EPS
    else:
        pretrained = timm.models.get_pretrained_cfg(cfg.name)
        mean = getattr(pretrained, "mean", None) or timm.data.IMAGENET_DEFAULT_MEAN
        std = getattr(pretrained, "std", None) or timm.data.IMAGENET_DEFAULT_STD
    return dataclasses.replace(
        cfg, bn_eps=bn_eps, mean=[float(m) for m in cfg.mean or mean], std=[float(s) for s in cfg.std or std]
    )


class ImageEncoder(nn.Module):
    """A timm backbone whose last feature map is pooled to a ``grid_size`` x ``grid_size`` set of vectors.

    ``load_weights=False`` builds the architecture only, from an already resolved config, for when a
    checkpoint supplies the weights. ``self.cfg`` is the encoder's own (resolved) copy of ``cfg``.
    """

    def __init__(self, cfg: EncoderConfig, load_weights: bool = True):
        super().__init__()
        if not timm.is_model(cfg.name):
            close = difflib.get_close_matches(cfg.name, timm.list_models(), n=5)
            raise ConfigError(f"config field 'encoder.name' is {cfg.name!r}, which timm does not know"
                              + (f"; close names: {', '.join(close)}" if close else ""))
        if load_weights:
            cfg = resolve_encoder_config(cfg)
        elif not (cfg.mean and cfg.std):
            raise ValueError("an encoder built without its weights needs a resolved config (mean and std)")
        else:
            cfg = dataclasses.replace(cfg, mean=list(cfg.mean), std=list(cfg.std))
        self.cfg = cfg
        self.backbone = timm.create_model(
            cfg.name, pretrained=load_weights and cfg.weights == "timm", num_classes=0,
        )
        if cfg.bn_eps:
            set_batchnorm_eps(self.backbone, cfg.bn_eps)
        if load_weights:
            apply_pretrained(self.backbone, cfg.name, cfg.weights)
        # Channels-last runs the depthwise convolutions of CNNs about 2x faster on CPU, and suits AMP on GPU.
        self.backbone.to(memory_format=torch.channels_last)
        self.feature_dim = int(self.backbone.num_features)
        self.grid_size = cfg.grid_size
        self.num_positions = cfg.grid_size * cfg.grid_size
        self._set_trainable(cfg.finetune_stages)

    def _set_trainable(self, stages: int) -> None:
        for param in self.backbone.parameters():
            param.requires_grad_(False)
        if stages == 0:
            return
        groups = timm.models.group_parameters(self.backbone, self.backbone.group_matcher(coarse=True))
        trainable = set()
        for group in sorted(groups)[-stages:]:
            trainable.update(groups[group])
        for name, param in self.backbone.named_parameters():
            if name in trainable:
                param.requires_grad_(True)

    @property
    def frozen(self) -> bool:
        return self.cfg.finetune_stages == 0

    def fold_batchnorm(self) -> int:
        """For inference: fold each BatchNorm that follows a convolution into that convolution's weights and
        bias, so the encoder makes one pass fewer over its activations per layer (Lite2 on a CPU: 1.45x the
        images/s; ``scripts/bench_cpu.py``). Pairs are found in module order (a convolution, then a
        BatchNorm of as many channels); the folded encoder is kept only if it gives the same features as
        before on a probe image (to float rounding), else nothing changes. Returns the number folded. A
        folded encoder cannot be trained any more."""
        if self.training:
            raise RuntimeError("fold_batchnorm is for inference: call eval() first")
        folded = copy.deepcopy(self.backbone)
        count = _fold_batchnorm(folded)
        if not count:
            return 0
        probe = torch.randn(1, 3, self.cfg.image_size, self.cfg.image_size,
                            generator=torch.Generator().manual_seed(0))  # (1, 3, S, S)
        probe = probe.to(next(self.backbone.parameters()).device)
        with torch.inference_mode():
            before = self.backbone.forward_features(probe)
            after = folded.forward_features(probe)
        if not torch.allclose(before, after, rtol=1e-3, atol=1e-3 * float(before.abs().max())):
            return 0
        self.backbone = folded
        self.inference_only = True
        return count

    def train(self, mode: bool = True) -> ImageEncoder:
        """Frozen parts stay in eval mode, so their BatchNorm statistics never drift."""
        if mode and getattr(self, "inference_only", False):
            raise RuntimeError("this encoder's BatchNorm layers were folded for inference: it cannot train")
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                params = list(module.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
        features = self.backbone.forward_features(images)
        if features.ndim == 3:  # transformer tokens (B, P + h*w, C)
            tokens = features[:, getattr(self.backbone, "num_prefix_tokens", 0):]  # (B, h*w, C)
            side = int(round(tokens.shape[1] ** 0.5))
            features = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)  # (B, C, h, w)
        elif getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
            features = features.permute(0, 3, 1, 2)  # (B, C, h, w)
        if features.shape[-1] != self.grid_size or features.shape[-2] != self.grid_size:
            features = F.adaptive_avg_pool2d(features, self.grid_size)  # (B, C, g, g)
        return features.flatten(2).transpose(1, 2)  # (B, N = g*g, C)

    def cache_key(self) -> str:
        """Everything that changes the features, hashed: a stale cache can never match."""
        description = {
            "format": CACHE_FORMAT,
            "encoder": self.cfg.name,
            "weights": weights_identity(self.cfg.name, self.cfg.weights),
            "image_size": self.cfg.image_size,
            "grid_size": self.cfg.grid_size,
            "mean": self.cfg.mean,
            "std": self.cfg.std,
            "timm": timm.__version__,
        }
        blob = json.dumps(description, sort_keys=True).encode()
        return f"{self.cfg.name}-{hashlib.sha256(blob).hexdigest()[:16]}"
