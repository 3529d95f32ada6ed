"""Serving captions: the batch job over files, and the pieces the web demo is built from."""
