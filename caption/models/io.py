"""Save and load models as safetensors weights plus JSON (config and vocabulary): no pickles, no code.

A model directory holds ``model.safetensors``, ``config.json`` and ``vocab.json``. A frozen encoder whose
weights come from a named source (the Lite0 package, timm) is not stored: only the decoder is.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from caption.config import ConfigError, DecoderConfig, EncoderConfig, _apply
from caption.data.vocab import Vocabulary
from caption.features.pretrained import LITE0_PACKAGE
from caption.models.captioner import CaptionModel
from caption.utils.io import atomic_write, atomic_write_json, read_json

MODEL_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
REPRODUCIBLE_WEIGHTS = ("timm", LITE0_PACKAGE)


def stores_encoder(encoder_cfg: EncoderConfig) -> bool:
    """A fine-tuned encoder, or one whose weights came from a local file, must travel with the model."""
    return encoder_cfg.finetune_stages > 0 or encoder_cfg.weights not in REPRODUCIBLE_WEIGHTS


def model_state(model: CaptionModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    if stores_encoder(model.encoder_cfg):
        state.update({f"encoder.{k}": v for k, v in model.encoder.state_dict().items()})
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.contiguous()
    return out


def save_model(model: CaptionModel, vocab: Vocabulary, directory: str | Path, *,
               dtype: torch.dtype | None = None, extra: dict | None = None) -> Path:
    """Write the three model files into ``directory``, each atomically."""
    directory = Path(directory)
    state = model_state(model, dtype)
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(state, str(tmp), metadata={"format": str(MODEL_FORMAT)}))
    vocab.save(directory / VOCAB_FILE)
    atomic_write_json(directory / CONFIG_FILE, {
        "format": MODEL_FORMAT,
        "encoder": dataclasses.asdict(model.encoder_cfg),
        "decoder": dataclasses.asdict(model.decoder_cfg),
        "vocab_size": len(vocab),
        "feature_dim": model.encoder.feature_dim,
        "encoder_weights_included": stores_encoder(model.encoder_cfg),
        **(extra or {}),
    })
    return directory


def is_model_dir(path: str | Path) -> bool:
    path = Path(path)
    return all((path / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE))


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[CaptionModel, Vocabulary, dict]:
    """Rebuild a model from its directory; a missing or mismatched file is a clear error."""
    directory = Path(directory)
    if not is_model_dir(directory):
        missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE) if not (directory / n).is_file()]
        raise FileNotFoundError(f"{directory} is not a model directory: missing {', '.join(missing)}")
    meta = read_json(directory / CONFIG_FILE, "model config")
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE}: model format {meta.get('format')!r} is not {MODEL_FORMAT}")
    encoder_cfg, decoder_cfg = EncoderConfig(), DecoderConfig()
    try:
        _apply(encoder_cfg, meta["encoder"], "encoder.")
        _apply(decoder_cfg, meta["decoder"], "decoder.")
    except (ConfigError, KeyError) as err:
        raise ValueError(f"{directory / CONFIG_FILE}: {err}") from None
    vocab = Vocabulary.load(directory / VOCAB_FILE)
    if len(vocab) != meta["vocab_size"]:
        raise ValueError(f"{directory}: vocab.json has {len(vocab)} words but config.json says {meta['vocab_size']}")
    included = bool(meta.get("encoder_weights_included"))
    model = CaptionModel(encoder_cfg, decoder_cfg, len(vocab), load_encoder_weights=not included)
    state = load_file(str(directory / WEIGHTS_FILE))
    decoder_state = {k.removeprefix("decoder."): v.float() for k, v in state.items() if k.startswith("decoder.")}
    model.decoder.load_state_dict(decoder_state, strict=True)
    if included:
        encoder_state = {k.removeprefix("encoder."): v.float() if v.is_floating_point() else v
                         for k, v in state.items() if k.startswith("encoder.")}
        model.encoder.load_state_dict(encoder_state, strict=True)
    return model.to(device).eval(), vocab, meta


def describe_model(directory: str | Path) -> str:
    meta = read_json(Path(directory) / CONFIG_FILE, "model config")
    return json.dumps({k: meta[k] for k in ("encoder", "decoder", "vocab_size") if k in meta})
