"""Inference pipelines and the registry that maps a model family name to its loader."""
