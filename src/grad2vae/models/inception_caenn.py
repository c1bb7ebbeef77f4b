"""Inception-CAENN of Sarafijanovic-Djukic & Davis (DS 2019): an inception-like convolutional
autoencoder whose encoder features are scored by the distance to the nearest normal training
sample, as their code builds it (natasasdj/anomalyDetection, ``cae_models.py: inceptionCAE``
with filters [8, 16, 32]; ``FeaturesExtractor.py``; ``AnomalyDetection.py``).

Inception layer with f filters per branch, four parallel branches concatenated (4f channels)::

    Conv 1x1 (f)                         -> BatchNorm -> LeakyReLU(0.1)
    Conv 3x3 (f)                         -> BatchNorm -> LeakyReLU(0.1)
    Conv 5x5 (f)                         -> BatchNorm -> LeakyReLU(0.1)
    MaxPool 3x3 stride 1 -> Conv 1x1 (f) -> BatchNorm -> LeakyReLU(0.1)

Network (input zero-padded 28 -> 32 inside the model)::

    3 x [inception (8, 16, 32) -> MaxPool 2]      32x32x1 -> 4x4x128
    features = global average pooling of that 4x4x128 map (128-d)
    3 x [inception (32, 16, 8) -> UpSample 2]     -> 32x32x32
    Conv 3x3 (1) -> BatchNorm -> sigmoid

About 0.334 M trainable parameters, the paper's 0.335 M. Loss, L2 penalty, 1-NN scoring and
every shared choice: see ``models/cae.py`` (``SHARED_ASSUMPTIONS``). The feature size is fixed at
128 by the source: ``latent_dim`` is accepted for the common interface and ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from grad2vae.models import register
from grad2vae.models.cae import (
    SHARED_ASSUMPTIONS,
    FeatureDistanceModel,
    conv_bn,
    keras_default_init_,
)

FILTERS = (8, 16, 32)


class InceptionLayer(nn.Module):
    def __init__(self, in_channels: int, filters: int):
        super().__init__()
        self.branch1 = conv_bn(in_channels, filters, 1)
        self.branch3 = conv_bn(in_channels, filters, 3)
        self.branch5 = conv_bn(in_channels, filters, 5)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.branch_pool = conv_bn(in_channels, filters, 1)

    def forward(self, x: Tensor) -> Tensor:
        branches = [
            self.branch1(x),
            self.branch3(x),
            self.branch5(x),
            self.branch_pool(self.pool(x)),
        ]
        return torch.cat(branches, dim=1)


@register
class InceptionCAENN(FeatureDistanceModel):
    name = "inception_caenn"
    assumptions = SHARED_ASSUMPTIONS + (
        "Inception layer = 1x1, 3x3, 5x5 and 3x3-maxpool(stride 1)->1x1 branches, each Conv-BN-"
        "LeakyReLU(0.1), concatenated; filters 8/16/32; 3 x (inception + MaxPool 2) encoder, "
        "3 x (inception + UpSample 2) decoder, Conv3x3-BN-sigmoid output — "
        "natasasdj/anomalyDetection cae_models.py inceptionCAE",
        "Features = global average pooling of the last encoder pooling output (128-d) — "
        "natasasdj/anomalyDetection FeaturesExtractor.py",
    )
    parameter_note = "faithful to [25]'s inceptionCAE (natasasdj/anomalyDetection)"

    def __init__(self, latent_dim: int = 128):
        super().__init__()
        f1, f2, f3 = FILTERS
        self.encoder = nn.Sequential(
            InceptionLayer(1, f1), nn.MaxPool2d(2),
            InceptionLayer(4 * f1, f2), nn.MaxPool2d(2),
            InceptionLayer(4 * f2, f3), nn.MaxPool2d(2),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            InceptionLayer(4 * f3, f3), nn.Upsample(scale_factor=2),
            InceptionLayer(4 * f3, f2), nn.Upsample(scale_factor=2),
            InceptionLayer(4 * f2, f1), nn.Upsample(scale_factor=2),
            nn.Conv2d(4 * f1, 1, 3, padding=1), nn.BatchNorm2d(1, eps=1e-3, momentum=0.01),
            nn.Sigmoid(),
        )  # fmt: skip
        keras_default_init_(self)
        self.train_features: Tensor | None = None

    def forward(self, x32: Tensor) -> tuple[Tensor, Tensor]:
        encoded = self.encoder(x32)
        return encoded.mean(dim=(2, 3)), self.decoder(encoded)
