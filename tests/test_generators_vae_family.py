"""VAE family (VAE, GMVAE, supervised GMVAE): the trainer resumes and exports, the loader verifies
the weights and generates to the protocol the registry relies on; the priors' KL terms are right."""
from __future__ import annotations

import math

import pytest
import torch

from tests.noise_generator_checks import CLASSES, check_exported_folder, tiny_config, train_resume_export
from xray_generator.models.vae_family import build_vae_family
from xray_generator.pipelines.gan import load_gan
from xray_generator.pipelines.vae_family import load_vae_family
from xray_generator.training import train_vae_family

VARIANTS = {
    "vae": {"prior": "standard"},
    "gmvae": {"prior": "mixture"},
    "gmvae_supervised": {"prior": "class_mixture", "classes": CLASSES},
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def exported(request, tmp_path_factory):
    family = request.param
    config = tiny_config("vae_family_tiny.json", family, **VARIANTS[family])
    folder = train_resume_export(train_vae_family.train_vae_family, train_vae_family.export_vae_family, config, tmp_path_factory.mktemp(family))
    return family, folder


def test_exported_vae_family_loads_to_the_protocol_and_refuses_damage(exported, tmp_path):
    family, folder = exported
    check_exported_folder(load_vae_family, load_gan, family, folder, tuple(VARIANTS[family].get("classes", ())), tmp_path)


def test_vae_family_config_must_match_its_family():
    with pytest.raises(ValueError, match="model.prior"):
        train_vae_family.check_vae_family_config(tiny_config("vae_family_tiny.json", "vae", prior="mixture"))
    with pytest.raises(ValueError, match="class_mixture prior needs"):
        build_vae_family(tiny_config("vae_family_tiny.json", "gmvae_supervised", prior="class_mixture")["model"])


def test_mixture_kl_estimate_matches_the_closed_form_for_one_standard_component():
    """With one N(0, I) component, the GMVAE's Monte Carlo KL averages to the VAE's closed form."""
    torch.manual_seed(0)
    model_cfg = tiny_config("vae_family_tiny.json", "gmvae", components=1)["model"]
    mixture = build_vae_family(model_cfg)
    standard = build_vae_family({**model_cfg, "prior": "standard"})
    with torch.no_grad():
        mixture.prior_means.zero_()
        mixture.prior_logvars.zero_()
    mean, logvar = torch.randn(1, 8).expand(50_000, 8), torch.full((50_000, 8), math.log(0.5))
    z = mean + (0.5 * logvar).exp() * torch.randn(50_000, 8)
    closed = standard.kl(mean, logvar, z)[0].item()
    assert mixture.kl(mean, logvar, z).mean().item() == pytest.approx(closed, abs=0.05)


def test_supervised_kl_is_zero_when_the_posterior_is_the_class_component():
    model = build_vae_family(tiny_config("vae_family_tiny.json", "gmvae_supervised", prior="class_mixture", classes=CLASSES)["model"])
    labels = torch.tensor([0, 1, 2])
    mean, logvar = model.prior_means[labels].detach(), model.prior_logvars[labels].detach()
    assert torch.allclose(model.kl(mean, logvar, mean, labels), torch.zeros(3), atol=1e-5)
