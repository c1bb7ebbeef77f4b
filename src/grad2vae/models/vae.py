"""Vanilla VAE: the encoder and decoder of Grad2VAE without the attention module.

Grad2VAE (``models/grad2vae.py``) reuses ``Encoder``, ``Decoder`` and the helpers below, so the
two models differ by exactly the attention module.

Architecture (paper Sect. 3 and Fig. 2: one stride-2 down-sampling stage, the first two encoder
layers and the last two decoder layers at 28x28; widths are ours, see ``ASSUMPTIONS``)::

    x (1x28x28)
    L_e1   Conv 3x3, 16, ReLU            28x28   <- Grad2VAE differentiates z w.r.t. this map
    L_e2   Conv 3x3, 32, ReLU            28x28
    L_e3   Conv 3x3 stride 2, 32, ReLU   14x14   <- the one down-sampling stage; `gradcam_layer`
    Dense 6272 -> 256, ReLU -> mu, logvar (latent_dim each)
    z = mu + exp(0.5 logvar) * eps
    Dense latent_dim -> 256, ReLU -> Dense 256 -> 6272, ReLU -> reshape 32x14x14
    ConvTranspose 3x3 stride 2, 32, ReLU 28x28   <- the one up-sampling stage
    L_d(n-1)  Conv 3x3, 16, ReLU         28x28   <- Grad2VAE adds its attention map here
    L_d(n)    Conv 1x1, 1, sigmoid       28x28

Loss = BCE summed over the 784 pixels + KL summed over the latent units, both averaged over the
batch. Score = the same per-sample BCE of the reconstruction of a *sampled* z.

Options (``VAE(latent_dim, kl=..., sigma=...)``, ``options`` below; the defaults are the model
every result so far used; a workflow sets them per variant, ``variants:`` in the config):

- ``kl``: ``"sum"`` over the latent units (Kingma & Welling 2014, the paper's [14]) or
  ``"mean"`` over them, i.e. the sum divided by d (the companion notebook abukmeil/mgrad2vae:
  ``-0.5 * K.mean(1 + z_log_var - K.square(z_mean) - K.exp(z_log_var), axis=-1)``).
- ``sigma``: ``"exp_half_logvar"``, z = mu + exp(0.5 logvar) eps (sigma is the standard
  deviation the KL term assumes), or ``"exp_logvar"``, z = mu + exp(logvar) eps (the notebook's
  sampling layer). The KL formula stays the same, so with ``exp_logvar`` the sampling variance
  exp(2 logvar) differs from the variance exp(logvar) the KL term assumes, as in the notebook.
  Used in training and in scoring (sampled z).

API beyond ``AnomalyModel``: ``encode(x) -> (mu, logvar)``; ``gradcam_layer``: the encoder's last
convolution (L_e3, an ``nn.Conv2d`` whose output is taken before its ReLU), the layer the offline
Grad-CAM attention of Liu et al. (CVPR 2020) targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grad2vae.models import register, scoring
from grad2vae.models.base import AnomalyModel

#: channels of L_e1, L_e2, L_e3 (the decoder mirrors them). 16 at L_e1 is the paper's (Fig. 3).
CHANNELS = (16, 32, 32)
#: width of the dense layer on each side of the latent space; sets the model's size.
HIDDEN = 256
#: images per forward pass when scoring (memory bound only; results do not depend on it)
SCORE_CHUNK = 256

ASSUMPTIONS = (
    "Encoder Conv3x3(16)-Conv3x3(32) at 28x28, then Conv3x3 stride 2 (32) to 14x14 and Dense 256; "
    "decoder mirrors it (Dense 256, Dense 6272, ConvTranspose stride 2, Conv3x3(16), Conv1x1 "
    "sigmoid) — paper Sect. 3 fixes one stride-2 stage, two 28x28 layers at each end and 16 "
    "filters at L_e1 (Fig. 3); widths 32 and dense 256 are ours, chosen so that the vanilla VAE "
    "counts about the 3.25 M parameters of Sect. 4.2",
    "ReLU activations, 3x3 kernels, 'same' padding, 1x1 sigmoid output layer — the authors' "
    "companion notebook abukmeil/mgrad2vae (MgradVAE.ipynb)",
    "Initialisation as Keras in that notebook: He-uniform weights for ReLU layers, Glorot-uniform "
    "for the mu/logvar and sigmoid output layers, zero biases — abukmeil/mgrad2vae",
    "z = mu + exp(0.5*logvar)*eps (sigma is the standard deviation, consistent with the KL term) "
    "— Kingma & Welling 2014, the paper's [14]; the companion notebook uses exp(logvar)*eps",
    "Reconstruction loss = binary cross-entropy summed over the 28x28 pixels (Keras' H*W*BCE), "
    "computed from logits for numerical stability — abukmeil/mgrad2vae",
    "KL divergence summed over latent units (the notebook takes the mean) — Kingma & Welling 2014",
    "Option kl (variants only): sum over the latent units (default, every reported run) or mean, "
    "the sum divided by d exactly — sum: Kingma & Welling 2014; mean: the notebook "
    "abukmeil/mgrad2vae (-0.5*K.mean(..., axis=-1)); presets/ablation.yaml flips it",
    "Option sigma (variants only): exp_half_logvar, z = mu + exp(0.5*logvar)*eps (default, every "
    "reported run), or exp_logvar, z = mu + exp(logvar)*eps in training and scoring with the KL "
    "unchanged (the sampling variance exp(2*logvar) then differs from the exp(logvar) the KL "
    "assumes) — default: Kingma & Welling 2014; exp_logvar: the notebook abukmeil/mgrad2vae; "
    "presets/ablation.yaml flips it",
    "Anomaly score = per-sample BCE of the reconstruction of a sampled z, "
    "with a fixed evaluation generator (reproducible); sampled rather than z "
    "= mu because Keras' sampling layer samples at predict time too and so "
    "that the VAE is scored exactly like Grad2VAE, which must sample — ours",
    "Beside the main score (never instead of it): mse (squared error summed over pixels), "
    "bce_excess = BCE - H(x) = KL(x || x_hat) (H(x), the test image's own binary entropy, is a "
    "floor no reconstruction removes and varies with the class's ink), and the same three with "
    "eps = 0 (z = mu: *_zero_noise); their AUCs are diagnostics — ours; see the section 'Which "
    "score, and what the attention path does'",
)


def keras_init_(module: nn.Module, relu: bool) -> None:
    """Keras' initialisers: He-uniform (ReLU layers) or Glorot-uniform weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if relu:
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")  # limit sqrt(6 / fan_in)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


#: accepted values of the options (the first is the default)
KL_REDUCTIONS = ("sum", "mean")
SIGMAS = ("exp_half_logvar", "exp_logvar")


def check_choice(name: str, value: object, accepted: tuple[str, ...]) -> str:
    """``value`` if it is one of ``accepted``; else a ValueError naming the option and them."""
    if value not in accepted:
        raise ValueError(
            f"option {name}={value!r} is not accepted; accepted values: {', '.join(accepted)}"
        )
    return str(value)


def reparameterize(
    mu: Tensor, logvar: Tensor, eps: Tensor, sigma: str = "exp_half_logvar"
) -> Tensor:
    """z = mu + sigma * eps with sigma = exp(0.5 logvar) (default) or exp(logvar) (``sigma``)."""
    if sigma == "exp_logvar":
        return mu + torch.exp(logvar) * eps
    return mu + torch.exp(0.5 * logvar) * eps


def sample_eps(n: int, latent_dim: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Standard normal noise (n, latent_dim) from ``generator`` (global RNG when None), moved to
    ``like``'s device and dtype; drawn once for the whole batch, so chunking does not change it."""
    device = generator.device if generator is not None else like.device
    eps = torch.randn(n, latent_dim, generator=generator, device=device, dtype=like.dtype)
    return eps.to(like.device)


def bce_per_sample(logits: Tensor, x: Tensor) -> Tensor:
    """Binary cross-entropy summed over pixels, one value per sample."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def variational_scores(logits: Tensor, zero_noise_logits: Tensor, x: Tensor) -> dict[str, Tensor]:
    """Every score of a variational model from the logits of a sampled z and of eps = 0:
    ``main`` = ``reconstruction`` = BCE (sampled), ``mse``, ``bce_excess`` (``models.scoring``)
    and the same three with the suffix ``_zero_noise``."""
    bce = bce_per_sample(logits, x)
    return {
        "main": bce,
        "reconstruction": bce,
        **scoring.from_logits(logits, x),
        "bce" + scoring.ZERO_NOISE: bce_per_sample(zero_noise_logits, x),
        **scoring.from_logits(zero_noise_logits, x, suffix=scoring.ZERO_NOISE),
    }


def kl_per_sample(mu: Tensor, logvar: Tensor, reduction: str = "sum") -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent units (``reduction="mean"``: that
    sum divided by the number of units d), one value per sample."""
    kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)
    return kl / logvar.shape[1] if reduction == "mean" else kl


class Encoder(nn.Module):
    """x -> (mu, logvar). Split at L_e1 so that Grad2VAE can differentiate z w.r.t. that map:
    ``first_layer(x)`` gives L_e1 (after its ReLU), ``from_first_layer(e1)`` the rest. Nothing here
    mixes samples (no BatchNorm), so derivatives of one sample's z involve only that sample."""

    def __init__(
        self, latent_dim: int, channels: tuple[int, int, int] = CHANNELS, hidden: int = HIDDEN
    ):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)  # L_e1, 28x28
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)  # L_e2, 28x28
        self.conv3 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)  # L_e3, 14x14
        self.hidden = nn.Linear(c3 * 14 * 14, hidden)
        self.mu = nn.Linear(hidden, latent_dim)
        self.logvar = nn.Linear(hidden, latent_dim)
        keras_init_(self, relu=True)
        keras_init_(self.mu, relu=False)
        keras_init_(self.logvar, relu=False)

    def first_layer(self, x: Tensor) -> Tensor:
        return F.relu(self.conv1(x))

    def from_first_layer(self, e1: Tensor) -> tuple[Tensor, Tensor]:
        h = F.relu(self.conv2(e1))
        h = F.relu(self.conv3(h))
        h = F.relu(self.hidden(h.flatten(1)))
        return self.mu(h), self.logvar(h)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.from_first_layer(self.first_layer(x))


class Decoder(nn.Module):
    """z -> logits of the 28x28 image. ``residual`` (same shape as L_d(n-1)'s output: N x c1 x
    28 x 28) is added to that layer's output before the output layer (Grad2VAE's fusion)."""

    def __init__(
        self, latent_dim: int, channels: tuple[int, int, int] = CHANNELS, hidden: int = HIDDEN
    ):
        super().__init__()
        c1, c2, c3 = channels
        self.c3 = c3
        self.hidden = nn.Linear(latent_dim, hidden)
        self.expand = nn.Linear(hidden, c3 * 14 * 14)
        self.deconv = nn.ConvTranspose2d(c3, c2, 3, stride=2, padding=1, output_padding=1)  # 28x28
        self.conv = nn.Conv2d(c2, c1, 3, padding=1)  # L_d(n-1), 28x28
        self.out = nn.Conv2d(c1, 1, 1)  # L_d(n), 28x28, sigmoid (applied by the loss / caller)
        keras_init_(self, relu=True)
        keras_init_(self.out, relu=False)

    def forward(
        self,
        z: Tensor,
        residual: Tensor | None = None,
        upsampled_residual: Tensor | None = None,
        image_residual: Tensor | None = None,
    ) -> Tensor:
        """``upsampled_residual`` (N x c1 x 28 x 28) is added, tiled along channels to c2, to the
        up-sampling layer's output, and ``image_residual`` (N x 1 x 28 x 28) to L_d(n-1)'s after
        ``residual``: Grad2VAE's ``fusion="notebook"``."""
        h = F.relu(self.hidden(z))
        h = F.relu(self.expand(h)).view(-1, self.c3, 14, 14)
        h = F.relu(self.deconv(h))
        if upsampled_residual is not None:
            repeats = -(-h.shape[1] // upsampled_residual.shape[1])
            h = h + upsampled_residual.repeat(1, repeats, 1, 1)[:, : h.shape[1]]
        h = F.relu(self.conv(h))
        if residual is not None:
            h = h + residual
        if image_residual is not None:
            h = h + image_residual
        return self.out(h)


@register
class VAE(AnomalyModel):
    name = "vae"
    main_score = "reconstruction error (BCE summed over pixels, sampled z)"
    assumptions = ASSUMPTIONS
    parameter_note = "widths chosen to match the paper's 3.25 M (MNIST, latent 16)"
    options = {"kl": KL_REDUCTIONS, "sigma": SIGMAS}

    def __init__(
        self,
        latent_dim: int,
        channels: tuple[int, int, int] = CHANNELS,
        hidden: int = HIDDEN,
        kl: str = "sum",
        sigma: str = "exp_half_logvar",
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.kl = check_choice("kl", kl, KL_REDUCTIONS)
        self.sigma = check_choice("sigma", sigma, SIGMAS)
        self.encoder = Encoder(latent_dim, channels, hidden)
        self.decoder = Decoder(latent_dim, channels, hidden)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The encoder's last convolution (L_e3); hook its output (pre-ReLU) for Grad-CAM."""
        return self.encoder.conv3

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def sample_noise(self, batch_size: int, like: Tensor) -> Tensor:
        """eps of the reparameterisation, (batch_size, latent_dim), from the global RNG."""
        return torch.randn(batch_size, self.latent_dim, device=like.device, dtype=like.dtype)

    def supports_seed_vmap(self, device: torch.device) -> bool:
        return True

    def loss(self, x: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        eps = self.sample_noise(len(x), x) if noise is None else noise
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar, eps, self.sigma)
        reconstruction = bce_per_sample(self.decoder(z), x).mean()
        kl = kl_per_sample(mu, logvar, self.kl).mean()
        return {"reconstruction": reconstruction, "kl": kl, "total": reconstruction + kl}

    def scores(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``main`` = ``reconstruction`` = BCE of a sampled z, with ``variational_scores``."""
        return self.score_batch(x, generator)[0]

    @torch.no_grad()
    def score_batch(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``scores`` and the image they score, the reconstruction of the sampled z (what the
        notebook's Keras AUC compared with the input: ``x_decoded_mean_squash``)."""
        eps = sample_eps(len(x), self.latent_dim, generator, like=x)
        chunks, images = [], []
        for start in range(0, len(x), SCORE_CHUNK):
            xs = x[start : start + SCORE_CHUNK]
            mu, logvar = self.encoder(xs)
            z = reparameterize(mu, logvar, eps[start : start + SCORE_CHUNK], self.sigma)
            logits = self.decoder(z)
            chunks.append(variational_scores(logits, self.decoder(mu), xs))
            images.append(torch.sigmoid(logits))
        scores = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
        return scores, {"reconstruction": torch.cat(images)}
