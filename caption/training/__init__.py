"""Training: the loop (AMP, DDP), resumable checkpoints and validation with caption metrics."""
