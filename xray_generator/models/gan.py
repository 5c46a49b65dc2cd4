"""DCGAN and its class-conditional variant at 256×256; the LSGAN uses the same networks.

Generator (Radford et al. 2016): z ∈ R^100 (plus a label embedding when conditional) → a dense
layer to a `base_size`² × channels[0] map → one stride-2 transposed convolution per entry of
`channels`, each with BatchNorm and ReLU except the last, which maps to one channel → tanh.
The issue's schedule starts from 8×8×256; the shipped configs start from 8×8×128 and halve the
channels at each stage ([128, 64, 32, 16, 8]), because the dense layer alone is 100·8·8·C weights
(a 256-channel start would be 6.5 MB of the ~5 MB budget) and the 128² and 256² stages dominate
the CPU time of a step (the discriminator mirrors them: [8, 16, 32, 64, 128]).

Discriminator: stride-2 convolutions with LeakyReLU(0.2) and dropout (no batch normalisation, so
the real and fake halves of a step never share batch statistics), then a linear score; with
`spectral_norm` every convolution and the score layer are spectrally normalised (Miyato et al. 2018),
which bounds how sharply the score can change. The dropout is
spatial (`Dropout2d`: whole feature maps), because drawing an element-wise mask over the 128² maps
took a fifth of a CPU training step and a per-channel mask costs next to nothing
(`python benchmarks/bench_gan_step.py` measures both in one run). Conditional
discriminators add a projection term (Miyato & Koyama 2018): ⟨embed(y), pooled features⟩ (unless
`projection` is false), and/or with `auxiliary_classifier` a class head on the pooled features
(AC-GAN, Odena et al. 2017), which the trainer fits on real films and the generator must satisfy.

The objective (BCE for DCGAN, least squares for LSGAN) lives in the trainer; the networks return
raw scores. Images are in [-1, 1].

    model_config = {"z_dim": 100, "image_size": 256, "base_size": 8, "channels": [128, 64, 32, 16, 8],
                    "disc_channels": [8, 16, 32, 64, 128], "dropout": 0.2, "spectral_norm": True, "embed_dim": 16, "classes": []}
"""
from __future__ import annotations

import torch
from torch import nn

from xray_generator.models.generator_parts import check_classes, check_stages, dcgan_init, parameter_count

GAN_FAMILIES = ("dcgan", "dcgan_conditional", "lsgan")


class DCGANGenerator(nn.Module):
    """z (B, z_dim) [+ class index (B,)] → image (B, 1, S, S) in [-1, 1]."""

    def __init__(self, z_dim: int, image_size: int, base_size: int, channels: list[int], n_classes: int = 0, embed_dim: int = 32):
        super().__init__()
        check_stages(image_size, base_size, len(channels))
        self.z_dim, self.n_classes, self.base_size, self.base_channels = z_dim, n_classes, base_size, channels[0]
        self.embed = nn.Embedding(n_classes, embed_dim) if n_classes else None
        in_features = z_dim + (embed_dim if n_classes else 0)
        self.project = nn.Sequential(
            nn.Linear(in_features, base_size * base_size * channels[0], bias=False),
            nn.BatchNorm1d(base_size * base_size * channels[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers += [nn.ConvTranspose2d(channels[-1], 1, 4, stride=2, padding=1), nn.Tanh()]
        self.upsample = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ValueError("a conditional generator needs class indices")
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.project(z).view(-1, self.base_channels, self.base_size, self.base_size)
        return self.upsample(h)

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """n images from noise drawn with `generator` (the only randomness)."""
        z = torch.randn(n, self.z_dim, generator=generator)
        return self(z, labels)

    def sampling_parameter_count(self) -> int:
        return parameter_count(self)


class DCGANDiscriminator(nn.Module):
    """Image (B, 1, S, S) [+ class index] → raw score (B,) [and class logits (B, n_classes)]."""

    def __init__(self, image_size: int, channels: list[int], dropout: float = 0.3, n_classes: int = 0, spectral_norm: bool = False,
                 auxiliary_classifier: bool = False, projection: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True), nn.Dropout2d(dropout)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        final_size = image_size // 2 ** len(channels)
        check_stages(image_size, final_size, len(channels))
        self.score = nn.Linear(c_in * final_size * final_size, 1)
        self.embed = nn.Embedding(n_classes, c_in) if n_classes and projection else None
        self.classify = nn.Linear(c_in, n_classes) if n_classes and auxiliary_classifier else None
        self.apply(dcgan_init)
        if spectral_norm:
            # Which objective needs it is measured, not assumed: see xray_generator.training.train_gan.
            for parent in (self.features, self):
                for name, layer in parent.named_children():
                    if isinstance(layer, (nn.Conv2d, nn.Linear)):
                        setattr(parent, name, nn.utils.parametrizations.spectral_norm(layer))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, with_class_logits: bool = False):
        """The score; with `with_class_logits` also the auxiliary classifier's logits (AC-GAN), a tuple."""
        h = self.features(x)
        out = self.score(h.flatten(1)).squeeze(1)
        if self.embed is not None:
            # Projection: the class enters as an inner product with the pooled features.
            out = out + (self.embed(labels) * h.sum(dim=(2, 3))).sum(dim=1)
        if not with_class_logits:
            return out
        if self.classify is None:
            raise ValueError("this discriminator has no auxiliary classifier (model.auxiliary_classifier)")
        return out, self.classify(h.mean(dim=(2, 3)))


def build_gan_generator(model_config: dict) -> DCGANGenerator:
    classes = check_classes(model_config.get("classes", []))
    return DCGANGenerator(
        z_dim=model_config["z_dim"],
        image_size=model_config["image_size"],
        base_size=model_config["base_size"],
        channels=list(model_config["channels"]),
        n_classes=len(classes),
        embed_dim=model_config.get("embed_dim", 32),
    )


def build_gan_discriminator(model_config: dict) -> DCGANDiscriminator:
    classes = check_classes(model_config.get("classes", []))
    return DCGANDiscriminator(
        image_size=model_config["image_size"],
        channels=list(model_config["disc_channels"]),
        dropout=model_config.get("dropout", 0.3),
        n_classes=len(classes),
        spectral_norm=model_config.get("spectral_norm", False),
        auxiliary_classifier=model_config.get("auxiliary_classifier", False),
        projection=model_config.get("projection", True),
    )
