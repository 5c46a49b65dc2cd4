"""The text encoder interface: the packaged default, a local BERT folder (BioBERT stand-in), and mismatches."""
from __future__ import annotations

import pytest
import torch

from xray_generator.models.text_encoder import FrozenTextEncoder, TextEncoderError
from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "right", "lower", "lobe", "pneumonia", "normal", "chest", "effusion"]


def make_tiny_bert_folder(folder, hidden_size=48, safetensors=True):
    """A randomly initialised BERT with its own vocabulary, saved like a downloaded BioBERT folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(WORDS), hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=safetensors)
    return folder


def test_default_encoder_is_offline_and_meaningful():
    encoder = FrozenTextEncoder()
    states, mask = encoder.encode(["right lower lobe pneumonia", "normal chest radiograph", ""])
    assert states.shape == (3, encoder.max_length, 384) and encoder.hidden_size == 384
    assert mask[0].sum() > mask[2].sum()
    assert not any(p.requires_grad for p in encoder.model.parameters())
    pooled = [(s[m].mean(0)) for s, m in zip(states, mask)]
    assert not torch.allclose(pooled[0], pooled[1])


def test_local_bert_folder_plugs_in(tmp_path):
    encoder = FrozenTextEncoder(make_tiny_bert_folder(tmp_path / "biobert-standin"), max_length=16)
    states, mask = encoder.encode(["right lower lobe pneumonia"])
    assert states.shape == (1, 16, 48) and encoder.name == "biobert-standin"


def test_folder_without_safetensors_is_refused(tmp_path):
    folder = make_tiny_bert_folder(tmp_path / "pickled", safetensors=False)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(TextEncoderError, match="pickle"):
        FrozenTextEncoder(folder)


def test_unknown_hub_id_is_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextEncoderError, match="offline"):
        FrozenTextEncoder("dmis-lab/biobert-base-cased-v1.1")


def test_encoder_width_mismatch_is_a_clear_error(tiny_pipeline_dir, tmp_path):
    folder = make_tiny_bert_folder(tmp_path / "wide", hidden_size=64)
    with pytest.raises(TextEncoderError, match="width 384"):
        XRayDiffusionPipeline.from_pretrained(tiny_pipeline_dir, text_encoder=folder)
