"""Evaluation: per-image descriptors, paired metrics, distribution metrics, fidelity and memorisation."""
