"""Save and load models as safetensors weights plus JSON (config and vocabulary): no pickles, no code.

A model directory holds ``model.safetensors``, ``config.json`` and ``vocab.json``. A frozen encoder whose
weights come from a named source (a Lite package, timm) is not stored: only the decoder is. A training
run directory names its checkpoints (model directories) in ``best.json`` and ``latest.json``;
``resolve_run_dir`` follows them.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from caption.config import ConfigError, EncoderConfig, apply_values, default_decoder_config
from caption.data.vocab import Vocabulary
from caption.features.pretrained import LITE_PACKAGES
from caption.models.captioner import CaptionModel
from caption.utils.io import atomic_write, atomic_write_json, final_path, no_space_error, read_json

MODEL_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
REPRODUCIBLE_WEIGHTS = ("timm", *LITE_PACKAGES.values())
# Models saved before the position embeddings moved out of the decoder (shared by every decoder now).
LEGACY_KEYS = {"decoder.temporal.weight": "positions.temporal.weight",
               "decoder.cells.weight": "positions.cells.weight"}


def stores_encoder(encoder_cfg: EncoderConfig) -> bool:
    """A fine-tuned encoder, or one whose weights came from a local file, must travel with the model."""
    return encoder_cfg.finetune_stages > 0 or encoder_cfg.weights not in REPRODUCIBLE_WEIGHTS


def model_state(model: CaptionModel, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    state.update({f"positions.{k}": v for k, v in model.positions.state_dict().items()})
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
    atomic_write(directory / WEIGHTS_FILE,
                 lambda tmp: write_safetensors(state, tmp, metadata={"format": str(MODEL_FORMAT)}))
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


def load_model(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[CaptionModel, Vocabulary, dict]:
    """Rebuild a model from its directory; a missing or mismatched file is a clear error."""
    directory = Path(directory)
    if not is_model_dir(directory):
        missing = [n for n in (WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE) if not (directory / n).is_file()]
        raise FileNotFoundError(f"{directory} is not a model directory: missing {', '.join(missing)}")
    meta = read_json(directory / CONFIG_FILE, "model config")
    if meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE}: model format {meta.get('format')!r} "
                         f"is not {MODEL_FORMAT}")
    encoder_cfg = EncoderConfig()
    try:
        apply_values(encoder_cfg, meta["encoder"], "encoder.")
        decoder_cfg = default_decoder_config().variant(meta["decoder"])  # its type's config
        apply_values(decoder_cfg, meta["decoder"], "decoder.")
        vocab_size = int(meta["vocab_size"])
    except (AttributeError, ConfigError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{directory / CONFIG_FILE}: missing or bad field ({err})") from None
    vocab = Vocabulary.load(directory / VOCAB_FILE)
    if len(vocab) != vocab_size:
        raise ValueError(f"{directory}: vocab.json has {len(vocab)} words but config.json says {vocab_size}")
    included = bool(meta.get("encoder_weights_included"))
    model = CaptionModel(encoder_cfg, decoder_cfg, len(vocab), load_encoder_weights=not included)
    load_weights(model, directory)
    return model.to(device).eval(), vocab, meta


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path,
                      metadata: dict | None = None) -> None:
    """Write a safetensors file; a failed write (a full disk, most often) is an error naming the file."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except (SafetensorError, OSError) as err:
        needed = sum(t.numel() * t.element_size() for t in tensors.values())
        if shutil.disk_usage(Path(path).parent).free < needed:
            raise no_space_error(path, needed) from None
        raise OSError(f"{final_path(path)}: writing it failed ({err})") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or foreign file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be truncated (a copy "
                         "cut short, a full disk): copy or export it again") from None


# How far below <unk>'s logit a word added to a vocabulary starts: a new word is e^8 (about 3,000) times
# less likely than <unk> (which decoding never writes), so the captions of the data the model knows do not
# change, while its output row, a copy of <unk>'s, already fires where a word the model did not know fits.
NEW_WORD_LOGIT_GAP = 8.0
VOCAB_ROWS = ("embedding.weight", "output.weight", "output.bias")  # the decoder weights, one row per word


def grow_vocabulary(part: dict[str, torch.Tensor], rows: int, unk_id: int) -> dict[str, torch.Tensor]:
    """A decoder's saved weights for a vocabulary of ``rows`` words that extends theirs (the old words keep
    their ids): each new word's embedding and output row start as <unk>'s (the model saw every word it did
    not know as <unk>), its output bias ``NEW_WORD_LOGIT_GAP`` below."""
    grown = dict(part)
    for key in VOCAB_ROWS:
        old = part[key]  # (V_old, ...) or (V_old,)
        extra = old[unk_id : unk_id + 1].expand(rows - len(old), *old.shape[1:]).clone()  # (V_new - V_old, .)
        if key == "output.bias":
            extra -= NEW_WORD_LOGIT_GAP
        grown[key] = torch.cat([old, extra])  # (V_new, ...)
    return grown


def load_weights(model: CaptionModel, directory: str | Path, *, grow_vocab: bool = False) -> None:
    """Copy a model directory's weights into ``model`` (the decoder, and the encoder when stored).
    ``grow_vocab``: ``model`` has a vocabulary that extends the directory's (``Vocabulary.extended``); its
    new words start as ``grow_vocabulary`` says."""
    path = Path(directory) / WEIGHTS_FILE
    state = {LEGACY_KEYS.get(key, key): value for key, value in read_safetensors(path).items()}
    for prefix, module in (("decoder.", model.decoder), ("positions.", model.positions),
                           ("encoder.", model.encoder)):
        part = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        if prefix == "encoder." and not part:
            continue  # a frozen encoder from a named source is not stored
        own = module.state_dict()
        part = {k: v.to(own[k].dtype) if k in own else v for k, v in part.items()}  # fp16 files load as fp32
        if grow_vocab and prefix == "decoder." and len(part["output.bias"]) < len(own["output.bias"]):
            part = grow_vocabulary(part, len(own["output.bias"]), Vocabulary.unk_id)
        try:
            module.load_state_dict(part, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{path}: the {prefix[:-1]} weights do not fit its config.json "
                             f"({str(err)[:300]})") from None


def read_pointer(run_dir: str | Path, which: str) -> Path | None:
    """The checkpoint a training run's ``<which>.json`` pointer ("best" or "latest") names; None without
    one."""
    path = Path(run_dir) / f"{which}.json"
    if not path.is_file():
        return None
    pointer = read_json(path, f"{which} checkpoint pointer")
    if not isinstance(pointer, dict) or "checkpoint" not in pointer:
        raise ValueError(f"{path} is not a checkpoint pointer (it needs a 'checkpoint' field)")
    target = Path(run_dir) / pointer["checkpoint"]
    if is_model_dir(target):
        return target
    # A kill between the two renames of a rewrite leaves the complete previous copy at <name>.old.
    previous = target.with_name(target.name + ".old")
    if is_model_dir(previous):
        return previous
    raise FileNotFoundError(f"{path} points to {target}, which is not a complete checkpoint")


def resolve_run_dir(path: str | Path) -> Path:
    """A run directory's best checkpoint (or its latest, before any validation); a model directory as is."""
    path = Path(path)
    if is_model_dir(path):
        return path
    for which in ("best", "latest"):
        target = read_pointer(path, which)
        if target is not None:
            return target
    model_files = (WEIGHTS_FILE, CONFIG_FILE, VOCAB_FILE)
    missing = [name for name in model_files if not (path / name).is_file()]
    if len(missing) < len(model_files):  # a model folder with a file missing says which
        raise FileNotFoundError(f"{path} is a model directory without {', '.join(missing)}: copy or export "
                                "the model again")
    raise FileNotFoundError(f"{path} is neither a model directory nor a training run with a checkpoint")
