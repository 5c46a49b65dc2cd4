"""CXR Studio core: data, models, pipelines, training and evaluation for synthetic chest X-rays.

Research use only. Not for clinical use.
"""
import os

# Nothing in this package may reach a model hub at run time; a user who wants hub ids can override.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
