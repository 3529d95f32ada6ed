"""Image and video captioning: a timm CNN encoder and an attention LSTM decoder (Show, Attend and Tell, or
Anderson et al.'s Up-Down; caption.models.registry lists them).

    from caption import Captioner
    captioner = Captioner.load()            # the shipped default model
    print(captioner.caption("photo.jpg").text)

Importing ``caption`` sets glibc's heap for tensor work (``caption.utils.memory``) and nothing else: torch
and timm are imported when ``Captioner`` is first used, so ``caption --help`` or ``caption plot`` start
without them.
"""

from caption.utils.memory import tune_malloc

tune_malloc()

__all__ = ["Captioner", "CaptionResult", "DecodingConfig"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("Captioner", "CaptionResult"):
        from caption import api

        return getattr(api, name)
    if name == "DecodingConfig":
        from caption.config import DecodingConfig

        return DecodingConfig
    raise AttributeError(f"module 'caption' has no attribute {name!r}")
