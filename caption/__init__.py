"""Image and video captioning: a timm CNN encoder and an attention LSTM decoder (Show, Attend and Tell, or
Anderson et al.'s Up-Down; caption.models.registry lists them).

    from caption import Captioner
    captioner = Captioner.load()            # the shipped default model
    print(captioner.caption("photo.jpg").text)
"""

from caption.api import Captioner, CaptionResult
from caption.config import DecodingConfig

__all__ = ["Captioner", "CaptionResult", "DecodingConfig"]
__version__ = "0.1.0"
