"""Baseline CAE of Sarafijanovic-Djukic & Davis (DS 2019), as their code builds it
(natasasdj/anomalyDetection, ``cae_models.py: baselineCAE``), scored by 1-NN feature distance.

Architecture (input zero-padded 28 -> 32 inside the model, as their ``load_data.py``)::

    3 x [Conv 5x5 (32, 64, 128) -> BatchNorm -> LeakyReLU(0.1) -> MaxPool 2]   32 -> 4x4x128
    Flatten 2048 -> Dense 128 -> LeakyReLU(0.1)       = the 128-d code (the features)
    reshape 4x4x8
    3 x [Conv 5x5 (128, 64, 32) -> BatchNorm -> LeakyReLU(0.1) -> UpSample 2]  4 -> 32x32
    Conv 5x5 (1) -> BatchNorm -> sigmoid

Loss = mean squared error over the padded 32x32 image + the L2 penalty 1e-6 * sum of squared
kernels (Keras ``kernel_regularizer=l2(1e-6)`` on every Conv/Dense). Scores: ``"main"`` =
Euclidean distance from a sample's features to the nearest normal training sample's features
(exact 1-NN; features stored by ``fit_scorer``), ``"reconstruction"`` = per-sample MSE.

Size: this counts about 0.80 M trainable parameters, not the 0.266 M the Grad2VAE paper gives
for its "Baseline CAE" (Sect. 4.2). The paper does not describe that network; we build the
baseline of the work it quotes ([25], whose Table 1 numbers it compares with), faithful to that
code, rather than shrink it to an undocumented size. The code size is fixed at 128 by the source:
``latent_dim`` is accepted for the common interface and ignored.

This file also holds what Inception-CAENN (``models/inception_caenn.py``) shares with it:
padding, Conv-BN-LeakyReLU blocks, the L2 penalty, Keras initialisation and the 1-NN scorer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grad2vae.models import register, scoring
from grad2vae.models.base import AnomalyModel

#: Keras kernel_regularizer=l2(1e-6): 1e-6 * sum(w**2), added to the loss
L2 = 1e-6
#: images per forward pass in fit_scorer / scores; test rows per distance block
CHUNK = 512

SHARED_ASSUMPTIONS = (
    "Input zero-padded 28x28 -> 32x32 inside the model; loss and reconstruction score over the "
    "padded 32x32 image — natasasdj/anomalyDetection load_data.py / FeaturesExtractor.py",
    "MSE loss plus the L2 kernel penalty 1e-6*sum(w^2) of every Conv/Dense kernel as a loss term "
    "(Keras kernel_regularizer; not Adam weight decay) — natasasdj/anomalyDetection cae_models.py",
    "BatchNorm with Keras' defaults (momentum 0.99, i.e. torch momentum 0.01; epsilon 1e-3); "
    "Glorot-uniform kernels, zero biases (Keras defaults) — natasasdj/anomalyDetection (Keras)",
    "Main score = Euclidean distance to the nearest normal training feature vector, exact 1-NN "
    "(float64 torch.cdist); the source ranks by the squared distance from faiss IndexFlatL2, a "
    "monotone transform with identical AUC — natasasdj/anomalyDetection AnomalyDetection.py 'nnd'",
    "Features and scores computed in eval mode (BatchNorm running statistics) — Keras predict()",
    "Code size fixed at 128 by the source; latent_dim "
    "(16/32) is ignored — natasasdj/anomalyDetection",
    "Trained with the grid's protocol (config.yaml: Adam 1e-3, batch 128, 100 epochs, x0.01 "
    "after epoch 50), not the source's (Adam, batch 200, lr 1e-4 for 250 epochs then 1e-5 for "
    "100), so Table 1's published Inception-CAENN column (from [25]'s setup) was trained "
    "differently; `model_train` in the config gives a model its own protocol — Grad2VAE paper "
    "Sect. 4 compares the models 'under the same experimental setup'; natasasdj/anomalyDetection "
    "FeaturesExtractor.py",
)


def pad32(x: Tensor) -> Tensor:
    return F.pad(x, (2, 2, 2, 2))


def conv_bn(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """Conv ('same') -> BatchNorm (Keras defaults) -> LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2),
        nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01),
        nn.LeakyReLU(0.1),
    )


def keras_default_init_(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


def l2_penalty(module: nn.Module) -> Tensor:
    kernels = [m.weight for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return L2 * sum(w.square().sum() for w in kernels)


def nearest_neighbour_distance(queries: Tensor, references: Tensor, chunk: int = CHUNK) -> Tensor:
    """Exact Euclidean distance from each query row to its nearest reference row (float64)."""
    references = references.double()
    out = []
    for start in range(0, len(queries), chunk):
        block = queries[start : start + chunk].double()
        out.append(torch.cdist(block, references).min(dim=1).values)
    return torch.cat(out).to(queries.dtype)


class FeatureDistanceModel(AnomalyModel):
    """Shared by the baseline CAE and Inception-CAENN: subclasses define ``forward(x32) ->
    (features (N, 128), reconstruction (N, 1, 32, 32) in [0, 1])``."""

    main_score = "Euclidean distance to the nearest normal training feature vector (1-NN)"

    def supports_seed_vmap(self, device: torch.device) -> bool:
        return True  # BatchNorm's running statistics are stacked and written back by the trainer

    def loss(self, x: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        x32 = pad32(x)
        _, reconstruction = self(x32)
        mse = F.mse_loss(reconstruction, x32)
        l2 = l2_penalty(self)
        return {"reconstruction": mse, "l2": l2, "total": mse + l2}

    @torch.no_grad()
    def fit_scorer(self, train_x: Tensor) -> None:
        self.train_features = torch.cat([self(pad32(xs))[0] for xs in train_x.split(CHUNK)])

    @torch.no_grad()
    def features_and_reconstruction_scores(
        self, x: Tensor
    ) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """(features (N, 128), reconstruction scores, reconstruction (N, 1, 28, 28)):
        ``reconstruction`` = MSE over the padded 32x32 image (the training loss), ``mse`` and
        ``bce_excess`` over the 28x28 image (``models.scoring``; the padding is ours, not the
        image's), and the 28x28 centre of the reconstruction."""
        features, chunks, images = [], [], []
        for xs in x.split(CHUNK):
            x32 = pad32(xs)
            f, reconstruction = self(x32)
            features.append(f)
            centre = reconstruction[..., 2:-2, 2:-2]
            chunks.append(
                {
                    "reconstruction": (reconstruction - x32).square().flatten(1).mean(1),
                    **scoring.from_probabilities(centre, xs),
                }
            )
            images.append(centre)
        scores = {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]}
        return torch.cat(features), scores, torch.cat(images)

    def scores(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return self.score_batch(x, generator)[0]

    @torch.no_grad()
    def score_batch(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``scores`` and the reconstruction (28x28 centre of the padded output)."""
        if getattr(self, "train_features", None) is None:
            raise RuntimeError(f"{self.name}: call fit_scorer(train_x) before scores()")
        features, reconstruction_scores, reconstruction = self.features_and_reconstruction_scores(x)
        distance = nearest_neighbour_distance(features, self.train_features)
        return {"main": distance, **reconstruction_scores}, {"reconstruction": reconstruction}


@register
class BaselineCAE(FeatureDistanceModel):
    name = "cae"
    assumptions = SHARED_ASSUMPTIONS + (
        "Built as the baseline CAE of [25]'s code (about 0.80 M parameters), not the paper's "
        "undescribed 0.266 M network — natasasdj/anomalyDetection cae_models.py baselineCAE",
        "Features = the 128-d Dense code after LeakyReLU — natasasdj/anomalyDetection "
        "FeaturesExtractor.py",
    )
    parameter_note = (
        "faithful to [25]'s baselineCAE (natasasdj/anomalyDetection), which counts ~0.80 M; the "
        "paper's 0.266 M network is not described"
    )

    def __init__(self, latent_dim: int = 128):
        super().__init__()
        self.encoder = nn.Sequential(
            conv_bn(1, 32, 5), nn.MaxPool2d(2),
            conv_bn(32, 64, 5), nn.MaxPool2d(2),
            conv_bn(64, 128, 5), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * 4 * 128, 128), nn.LeakyReLU(0.1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            # Keras reshapes channels-last; equivalent up to a permutation
            nn.Unflatten(1, (8, 4, 4)),
            conv_bn(8, 128, 5), nn.Upsample(scale_factor=2),
            conv_bn(128, 64, 5), nn.Upsample(scale_factor=2),
            conv_bn(64, 32, 5), nn.Upsample(scale_factor=2),
            nn.Conv2d(32, 1, 5, padding=2), nn.BatchNorm2d(1, eps=1e-3, momentum=0.01),
            nn.Sigmoid(),
        )  # fmt: skip
        keras_default_init_(self)
        self.train_features: Tensor | None = None

    def forward(self, x32: Tensor) -> tuple[Tensor, Tensor]:
        code = self.encoder(x32)
        return code, self.decoder(code)
