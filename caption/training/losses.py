"""Training objectives: cross-entropy with the attention regulariser, and the self-critical policy
gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def caption_loss(
    logits: torch.Tensor,
    alphas: torch.Tensor,
    captions: torch.Tensor,
    *,
    pad_id: int = 0,
    label_smoothing: float = 0.0,
    attention_reg: float = 1.0,
    memory_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy on the words plus the doubly stochastic attention regulariser.

    The regulariser, lambda * mean_i (1 - sum_t alpha_ti)^2, pushes the decoder to look at every
    position at some point of the caption. Returns (total loss, cross-entropy alone).
    """
    targets = captions[:, 1:]  # (B, T)
    valid = targets != pad_id  # (B, T)
    ce = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
        ignore_index=pad_id, label_smoothing=label_smoothing,
    )
    if attention_reg == 0:
        return ce, ce
    coverage = (alphas.float() * valid.unsqueeze(-1)).sum(dim=1)  # (B, N)
    penalty = (1.0 - coverage) ** 2  # (B, N)
    if memory_mask is not None:
        penalty = (penalty * memory_mask).sum() / memory_mask.sum().clamp(min=1)
    else:
        penalty = penalty.mean()
    return ce + attention_reg * penalty, ce


def scst_loss(
    log_probs: torch.Tensor, captions: torch.Tensor, advantages: torch.Tensor, *, pad_id: int = 0
) -> torch.Tensor:
    """REINFORCE with a baseline (Rennie et al. 2017): -(reward - baseline) * log p(word), averaged over
    the sampled words (as self-critical.pytorch does).

    ``log_probs`` (M, T, V) is the sampling distribution re-computed with teacher forcing over the sampled
    ``captions`` (M, L) = <bos> w1 .. wn [<eos>] <pad>..; ``advantages`` (M,) = reward - baseline.
    Sampling itself ran without autograd and the trainer re-scores here: a caption's graph then holds only
    its own steps (sampling with autograd would keep every step of every row until the longest caption
    ended), the re-scoring pass is the model's ordinary forward (so DistributedDataParallel syncs the
    gradients and a fine-tuned encoder is trained as in cross-entropy), and the sampled log-probabilities
    are exactly these (both run in eval mode: no dropout, see the trainer).
    """
    targets = captions[:, 1:]  # (M, T)
    valid = (targets != pad_id).float()  # (M, T)
    picked = log_probs.gather(2, targets.unsqueeze(-1)).squeeze(-1)  # (M, T)
    picked = picked.masked_fill(valid == 0, 0.0)  # padded steps are -inf for banned <pad>
    return -(advantages.unsqueeze(1) * picked * valid).sum() / valid.sum().clamp(min=1)
