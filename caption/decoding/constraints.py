"""What a caption may never say, applied the same way by beam search, sampling and SCST's re-scoring."""

from __future__ import annotations

import torch

from caption.data.vocab import SpecialTokens


def allowed_logits(logits: torch.Tensor, special: SpecialTokens, first_step: int = 0) -> torch.Tensor:
    """Logits (R, T, V) of decoding steps ``first_step`` .. ``first_step`` + T - 1, in fp32, with the banned
    words (<pad>, <bos>, <unk>) removed everywhere and <eos> removed as the first word (step 0): a caption
    has at least one word."""
    logits = logits.float()  # (R, T, V)
    logits = logits.index_fill(-1, torch.tensor(special.banned, device=logits.device), float("-inf"))
    if first_step == 0:
        logits[:, 0, special.eos] = float("-inf")
    return logits  # (R, T, V)
