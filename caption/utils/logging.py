"""The package logger; the CLI sends it to stderr, libraries using us decide for themselves."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("caption")


def setup_logging(level: int = logging.INFO) -> None:
    if any(getattr(h, "_caption_handler", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler._caption_handler = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
