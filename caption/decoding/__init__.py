"""Decoding: greedy and beam search over a batch of items at once."""
