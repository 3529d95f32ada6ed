"""Self-critical sequence training (Rennie et al. 2017): sample captions, reward them with CIDEr-D
against the image's references (less penalties for degenerate ones and for objects the references do not
name), and raise the log-probability of those that beat the baseline."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from caption.config import ScstConfig
from caption.data.vocab import Vocabulary
from caption.decoding.beam import beam_search
from caption.decoding.sample import sample, sampling_log_probs
from caption.evaluation.chair import caption_objects, image_objects
from caption.evaluation.degenerate import is_degenerate
from caption.models.captioner import CaptionModel
from caption.training.losses import scst_loss
from caption.training.rewards import CiderD
from caption.training.stats import StepStats


def hallucinated_objects(words: list[str], truth: set[str]) -> int:
    """How many distinct COCO objects a caption names that are not among the image's ``truth`` categories."""
    return len({category for category, _ in caption_objects(" ".join(words))} - truth)


class SelfCritical:
    """One SCST loss per batch. ``forward`` is what the gradient flows through: the model itself, or its
    DistributedDataParallel wrapper (rewards are then computed per rank, on that rank's images)."""

    def __init__(self, model: CaptionModel, forward: nn.Module, vocab: Vocabulary, cfg: ScstConfig,
                 training_references: list[list[list[int]]], autocast: Callable[[], AbstractContextManager]):
        self.model, self.forward, self.vocab, self.cfg, self.autocast = model, forward, vocab, cfg, autocast
        # Document frequencies from every training reference as the decoder sees them (vocabulary words,
        # <unk> for rare ones): the corpus mode of self-critical.pytorch's CiderD.
        eos = vocab.words[vocab.eos_id] if cfg.eos_in_reward else None
        self.reward = CiderD([[self.words(tokens) for tokens in refs] for refs in training_references],
                             eos=eos)

    def words(self, tokens) -> list[str]:
        return self.vocab.decode(tokens).split()

    def loss(self, inputs: torch.Tensor, captions: torch.Tensor,
             item_index: torch.Tensor) -> tuple[torch.Tensor, StepStats]:
        """``inputs`` (B, ...) features or images, their reference ``captions`` (M, L) and the row of each
        (M,). Returns the loss and the step's statistics: means over the B*K sampled captions, and the
        seconds spent computing rewards (``reward_time_s``)."""
        cfg, special = self.cfg, self.vocab.special
        decoding = cfg.decoding
        B, K = inputs.shape[0], decoding.samples
        with torch.no_grad(), self.autocast():
            features = self.model.decoder_features(inputs)  # (B, N, C)
            samples = sample(self.model.decoder, features, None, decoding, special)  # (B*K, T)
            greedy = (beam_search(self.model.decoder, features, None, replace(decoding, beam_size=1), special)
                      if cfg.baseline == "greedy" else None)

        started = time.perf_counter()
        references: list[list[list[str]]] = [[] for _ in range(B)]
        for row, tokens in zip(item_index.tolist(), captions.tolist()):
            references[row].append(self.words(tokens))
        keys = [tuple(map(tuple, refs)) for refs in references]  # names each image's references for the cache
        candidates = [[self.vocab.words[t] for t in samples.words(r)] for r in range(B * K)]
        owner = [r // K for r in range(B * K)]
        rewards = self.reward.scores(candidates, [references[i] for i in owner],  # (B*K,)
                                     [keys[i] for i in owner])
        degenerate = np.array([is_degenerate(words) for words in candidates], dtype=np.float64)  # (B*K,)
        rewards = rewards - cfg.degenerate_penalty * degenerate
        truth = [image_objects(" ".join(words) for words in refs) for refs in references]
        hallucinated = np.array([hallucinated_objects(words, truth[i])
                                 for words, i in zip(candidates, owner)],
                                dtype=np.float64)  # (B*K,) wrong objects named by each sample
        rewards = rewards - cfg.hallucination_penalty * hallucinated
        if greedy is not None:
            greedy_words = [[self.vocab.words[t] for t in beams[0].tokens] for beams in greedy]
            greedy_rewards = (  # (B,)
                self.reward.scores(greedy_words, references, keys)
                - cfg.degenerate_penalty * np.array([is_degenerate(words) for words in greedy_words],
                                                    dtype=np.float64)
                - cfg.hallucination_penalty * np.array(
                    [hallucinated_objects(words, truth[i]) for i, words in enumerate(greedy_words)],
                    dtype=np.float64))
            baseline = np.repeat(greedy_rewards, K)  # (B*K,)
        else:  # the mean reward of the image's other samples
            per_item = rewards.reshape(B, K)  # (B, K)
            baseline = ((per_item.sum(1, keepdims=True) - per_item) / (K - 1)).reshape(-1)  # (B*K,)
        reward_seconds = time.perf_counter() - started
        advantages = torch.as_tensor(rewards - baseline, dtype=torch.float32, device=inputs.device)  # (B*K,)

        sampled = F.pad(samples.tokens, (1, 0), value=special.bos)  # (B*K, T+1) <bos> words [<eos>] <pad>..
        sample_index = torch.arange(B, device=inputs.device).repeat_interleave(K)  # (B*K,)
        with self.autocast():
            logits, _ = self.forward(inputs, sampled, sample_index)  # (B*K, T, V)
        loss = scst_loss(sampling_log_probs(logits, decoding, special), sampled, advantages,
                         pad_id=special.pad)
        return loss, StepStats(B * K, means={
            "reward": float(rewards.mean()),
            "baseline": float(baseline.mean()),
            "entropy": float(samples.entropy),
            "ended": float(samples.ended.float().mean()),
            "sample_length": float(samples.lengths.float().mean()),
            "degenerate": float(degenerate.mean()),
            "hallucinated": float((hallucinated > 0).mean()),
        }, seconds={"reward_time_s": reward_seconds})
