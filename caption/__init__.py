"""Image and video captioning: a timm CNN encoder and a Show, Attend and Tell attention LSTM decoder.

    from caption import Captioner
    captioner = Captioner.load()            # the shipped default model
    print(captioner.caption("photo.jpg").text)
"""

from caption.api import Captioner, CaptionResult
from caption.config import DecodingConfig

__all__ = ["Captioner", "CaptionResult", "DecodingConfig"]
__version__ = "0.1.0"
