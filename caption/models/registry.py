"""The decoders by name, as timm's model registry: ``@register_decoder("sat", SatConfig)`` on a decoder
class puts it, and the config dataclass of its ``decoder:`` section, in ``DECODERS``, which configs, model
files, the model factory and the tests all read. A new decoder is a module with its class and config,
decorated, plus its import at the end of this file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from caption.config import ConfigError, DecoderConfig

if TYPE_CHECKING:
    from caption.models.base import DecoderBase


@dataclass(frozen=True)
class DecoderEntry:
    decoder: type[DecoderBase]
    config: type[DecoderConfig]
    title: str  # how people name it ("Show, Attend and Tell"): the web page says which decoder looked


DECODERS: dict[str, DecoderEntry] = {}


def register_decoder(
    name: str, config: type[DecoderConfig], title: str = ""
) -> Callable[[type[DecoderBase]], type[DecoderBase]]:
    """Class decorator: ``name`` (the config's ``decoder.type``) builds this decoder from a ``config``;
    ``title`` is how people name it (default: ``name``)."""
    if config.type != name:
        raise ValueError(f"{config.__name__}.type defaults to {config.type!r}, "
                         f"not the decoder's name {name!r}")

    def register(decoder: type[DecoderBase]) -> type[DecoderBase]:
        if name in DECODERS:
            raise ValueError(f"two decoders are registered as {name!r}: "
                             f"{DECODERS[name].decoder.__name__} and {decoder.__name__}")
        DECODERS[name] = DecoderEntry(decoder, config, title or name)
        return decoder

    return register


def decoder_config_class(name: str) -> type[DecoderConfig]:
    if name not in DECODERS:
        raise ConfigError(f"config field 'decoder.type' is {name!r}; choose one of: {', '.join(DECODERS)}")
    return DECODERS[name].config


def decoder_config(name: str = "sat", **values: Any) -> DecoderConfig:
    """The config of decoder ``name`` with ``values`` (``decoder_config("updown", hidden_dim=256)``)."""
    return decoder_config_class(name)(**values)


def build_decoder(vocab_size: int, feature_dim: int, cfg: DecoderConfig) -> DecoderBase:
    """The decoder ``cfg.type`` names, for a vocabulary and features of these sizes."""
    entry = DECODERS.get(cfg.type)
    if entry is None or not isinstance(cfg, entry.config):
        raise ConfigError(f"decoder.type {cfg.type!r} needs its own config ({', '.join(DECODERS)} are "
                          "registered); build it with caption.models.registry.decoder_config")
    return entry.decoder(vocab_size, feature_dim, cfg)


# The built-in decoders, registered as they are imported.
from caption.models import sat, updown  # noqa: E402, F401
