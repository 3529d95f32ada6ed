"""What a caption may never say, applied the same way by beam search, sampling and SCST's re-scoring."""

from __future__ import annotations

import functools

import torch

from caption.data.vocab import SpecialTokens


@functools.lru_cache(maxsize=16)
def _index(ids: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``ids`` as an index tensor on ``device``, made once: beam search asks for it every step. Made
    outside inference mode even when first asked for inside it, so training may use it too."""
    with torch.inference_mode(False):
        return torch.tensor(ids, dtype=torch.long, device=device)


def allowed_logits(logits: torch.Tensor, special: SpecialTokens, first_step: int = 0) -> torch.Tensor:
    """Logits (R, T, V) of decoding steps ``first_step`` .. ``first_step`` + T - 1, in fp32, with the banned
    words (<pad>, <bos>, <unk>) removed everywhere and <eos> removed as the first word (step 0): a caption
    has at least one word."""
    logits = logits.float()  # (R, T, V)
    logits = logits.index_fill(-1, _index(special.banned, logits.device), float("-inf"))
    if first_step == 0:
        logits[:, 0, special.eos] = float("-inf")
    return logits  # (R, T, V)
