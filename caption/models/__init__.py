"""Models: the decoders and the encoder + decoder captioner built from a config, and their files."""

# The shipped model that Captioner.load(), `caption predict` and `make demo` use unless told otherwise
# (models/<name>; its README is the model card). Here so the command line can name it without importing torch.
DEFAULT_MODEL = "everyday-lite2"
