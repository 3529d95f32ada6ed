"""Models: the attention LSTM decoder and the encoder + decoder captioner built from a config."""
