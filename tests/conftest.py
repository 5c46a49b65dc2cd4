"""Shared fixtures: tiny untrained models built from the tiny configs, so tests run in seconds."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Passive OpenMP workers: when another job (a training run) holds a core, spinning workers make
# every torch call many times slower instead of just sharing the CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402  (after the OpenMP setting, which is read at import)

REPO = Path(__file__).resolve().parent.parent
torch.set_num_threads(int(os.environ.get("CXR_TEST_THREADS", "2")))


def build_tiny_pipeline(seed: int = 0):
    from diffusers import DDPMScheduler

    from xray_generator.models.autoencoder import build_autoencoder
    from xray_generator.models.text_encoder import FrozenTextEncoder, TextProjection
    from xray_generator.models.unet import build_unet
    from xray_generator.pipelines.latent_diffusion import XRayDiffusionPipeline

    torch.manual_seed(seed)
    vae_cfg = json.loads((REPO / "configs" / "vae_tiny.json").read_text())["model"]
    ldm_cfg = json.loads((REPO / "configs" / "ldm_tiny.json").read_text())
    encoder = FrozenTextEncoder(ldm_cfg["text_encoder"], max_length=ldm_cfg["text_max_length"])
    pipe = XRayDiffusionPipeline(
        vae=build_autoencoder(vae_cfg).eval(),
        unet=build_unet(ldm_cfg["unet"]).eval(),
        text_projection=TextProjection(encoder.name, encoder.hidden_size, ldm_cfg["unet"]["cross_attention_dim"]).eval(),
        scheduler=DDPMScheduler(**ldm_cfg["scheduler"]),
        text_encoder=encoder,
    )
    pipe.generation_defaults.update(ldm_cfg["generation_defaults"])
    pipe.model_name = "ldm-tiny"
    return pipe


@pytest.fixture(scope="session")
def tiny_weights_root(tmp_path_factory) -> Path:
    """A weights root holding an untrained tiny `ldm/` pipeline folder (with MANIFEST.json)."""
    root = tmp_path_factory.mktemp("weights")
    build_tiny_pipeline().save_pretrained(root / "ldm")
    return root


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_weights_root) -> Path:
    return tiny_weights_root / "ldm"


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    """A verified folder holding an untrained tiny finding classifier (configs/classifier_tiny.json)."""
    from safetensors.torch import save_file

    from xray_generator.models.classifier import build_classifier
    from xray_generator.weights import write_manifest

    folder = tmp_path_factory.mktemp("classifier_root") / "classifier"
    folder.mkdir()
    config = json.loads((REPO / "configs" / "classifier_tiny.json").read_text())
    torch.manual_seed(0)
    save_file(build_classifier(config).state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))
    write_manifest(folder)
    return folder
