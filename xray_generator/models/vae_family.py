"""The VAE family at native 256×256: a baseline VAE, a GMVAE and a fully supervised GMVAE.

All three share one convolutional encoder and one transposed-convolution decoder (the seed found
transposed convolutions the best decoder); they differ only in the prior p(z):

- ``standard`` (baseline VAE, Kingma & Welling 2014): N(0, I); the KL term is closed-form.
- ``mixture`` (GMVAE): Σ_k π_k N(μ_k, diag σ_k²) with K learnable means, variances and weights.
  KL(q(z|x) ‖ p(z)) has no closed form, so it is the one-sample Monte Carlo estimate
  log q(z|x) − log p(z) at the reparameterised z.
- ``class_mixture`` (supervised GMVAE): one component per class, N(μ_y, diag σ_y²), chosen by the
  known label y; the encoder and decoder also see y as a one-hot vector. The KL to the class
  component is closed-form, and sampling a class draws from its component.

Images are in [-1, 1]; the decoder ends in tanh.

    model_config = {"image_size": 256, "channels": [16, 32, 48, 64, 96, 128], "latent_dim": 64,
                    "prior": "mixture", "components": 10, "classes": []}
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xray_generator.models.generator_parts import check_classes, check_stages, dcgan_init, parameter_count

VAE_FAMILIES = ("vae", "gmvae", "gmvae_supervised")
PRIORS = ("standard", "mixture", "class_mixture")
# Which prior each family uses; the config's `prior` must agree with its `family`.
FAMILY_PRIOR = {"vae": "standard", "gmvae": "mixture", "gmvae_supervised": "class_mixture"}
_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(logvar)), summed over the last axis."""
    return -0.5 * (_LOG_2PI + logvar + (z - mean).pow(2) / logvar.exp()).sum(-1)


class VAEFamilyModel(nn.Module):
    """Encoder q(z|x[,y]), decoder p(x|z[,y]) and one of three priors."""

    def __init__(self, image_size: int, channels: list[int], latent_dim: int, prior: str, components: int = 1, n_classes: int = 0):
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if prior == "class_mixture" and n_classes < 2:
            raise ValueError("the class_mixture prior needs the class names")
        if prior != "class_mixture" and n_classes:
            raise ValueError(f"only the class_mixture prior takes classes; got prior {prior!r} with {n_classes} classes")
        self.base_size = image_size // 2 ** len(channels)
        check_stages(image_size, self.base_size, len(channels))
        self.prior, self.latent_dim, self.n_classes, self.top_channels = prior, latent_dim, n_classes, channels[-1]
        flat = channels[-1] * self.base_size**2

        down: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            down += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        self.encoder = nn.Sequential(*down)
        self.posterior = nn.Linear(flat + n_classes, 2 * latent_dim)

        self.project = nn.Sequential(nn.Linear(latent_dim + n_classes, flat, bias=False), nn.BatchNorm1d(flat), nn.ReLU(inplace=True))
        up: list[nn.Module] = []
        reverse = list(reversed(channels))
        for c_in, c_out in zip(reverse, reverse[1:]):
            up += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        up += [nn.ConvTranspose2d(reverse[-1], 1, 4, stride=2, padding=1), nn.Tanh()]
        self.decoder = nn.Sequential(*up)
        self.apply(dcgan_init)

        k = {"standard": 0, "mixture": components, "class_mixture": n_classes}[prior]
        if prior == "mixture" and components < 1:
            raise ValueError(f"a mixture prior needs at least one component, got {components}")
        if k:
            # Means spread at unit scale so the components start apart; unit variances.
            self.prior_means = nn.Parameter(torch.randn(k, latent_dim))
            self.prior_logvars = nn.Parameter(torch.zeros(k, latent_dim))
            self.prior_logits = nn.Parameter(torch.zeros(k), requires_grad=prior == "mixture")

    # ------------------------------------------------------------------ pieces
    def _one_hot(self, labels: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if not self.n_classes:
            return None
        if labels is None or labels.shape != (batch,):
            raise ValueError(f"the supervised GMVAE needs one class index per image ({batch}), got {None if labels is None else tuple(labels.shape)}")
        return F.one_hot(labels, self.n_classes).float()

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, logvar) of q(z | x[, y]), each (B, latent_dim)."""
        h = self.encoder(x).flatten(1)
        one_hot = self._one_hot(labels, x.shape[0])
        if one_hot is not None:
            h = torch.cat([h, one_hot.to(h.dtype)], dim=1)
        mean, logvar = self.posterior(h).chunk(2, dim=1)
        # Bounded so exp(logvar) cannot overflow early in training or under bf16.
        return mean, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        one_hot = self._one_hot(labels, z.shape[0])
        if one_hot is not None:
            z = torch.cat([z, one_hot.to(z.dtype)], dim=1)
        h = self.project(z).view(-1, self.top_channels, self.base_size, self.base_size)
        return self.decoder(h)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, generator: torch.Generator | None = None):
        """Reconstruction, posterior (mean, logvar) and the reparameterised z."""
        # fp32 from here: a bf16 z is too coarse for the GMVAE's log q(z|x) at small posterior widths.
        mean, logvar = (t.float() for t in self.encode(x, labels))
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)
        z = mean + (0.5 * logvar).exp() * eps
        return self.decode(z, labels), mean, logvar, z

    def kl(self, mean: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image KL(q(z|x) ‖ p(z)) in nats, (B,); computed in fp32."""
        mean, logvar, z = mean.float(), logvar.float(), z.float()
        if self.prior == "standard":
            return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        if self.prior == "class_mixture":
            p_mean, p_logvar = self.prior_means[labels], self.prior_logvars[labels]
            return 0.5 * (p_logvar - logvar + (logvar.exp() + (mean - p_mean).pow(2)) / p_logvar.exp() - 1.0).sum(1)
        log_q = gaussian_log_density(z, mean, logvar)
        log_weights = F.log_softmax(self.prior_logits, dim=0)
        log_p = torch.logsumexp(log_weights + gaussian_log_density(z[:, None], self.prior_means[None], self.prior_logvars[None]), dim=1)
        return log_q - log_p

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """n images decoded from prior draws made with `generator` (the only randomness)."""
        eps = torch.randn(n, self.latent_dim, generator=generator)
        if self.prior == "standard":
            z = eps
        else:
            if self.prior == "mixture":
                components = torch.multinomial(F.softmax(self.prior_logits, 0), n, replacement=True, generator=generator)
            else:
                components = labels
            z = self.prior_means[components] + (0.5 * self.prior_logvars[components]).exp() * eps
        return self.decode(z, labels)

    def sampling_parameter_count(self) -> int:
        """Parameters that generate (decoder and prior); the encoder is shipped but only encodes."""
        return parameter_count(self) - parameter_count(self.encoder) - parameter_count(self.posterior)


def build_vae_family(model_config: dict) -> VAEFamilyModel:
    classes = check_classes(model_config.get("classes", []))
    return VAEFamilyModel(
        image_size=model_config["image_size"],
        channels=list(model_config["channels"]),
        latent_dim=model_config["latent_dim"],
        prior=model_config["prior"],
        components=model_config.get("components", 1),
        n_classes=len(classes),
    )
