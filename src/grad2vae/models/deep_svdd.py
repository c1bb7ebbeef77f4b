"""One-class Deep SVDD (Ruff et al., ICML 2018) as lukasruff/Deep-SVDD-PyTorch builds and trains it,
with the Fashion-MNIST network of natasasdj/Deep-SVDD-PyTorch (the fork [25] used).

Preprocessing (``datasets/mnist.py``, ``preprocessing.py`` of the source), done inside the model::

    x -> x - mean(x)                       per image, over its 784 pixels
      -> x / mean(|x|)                     global contrast normalisation, L1 scale
      -> (x - min) / (max - min)           min and max over every pixel of every normal training
                                           image after GCN (scalars; fitted in ``pretrain``)

The source hard-codes these constants per class; computed here from the run's training images
they agree with the source's to ~1e-8 (MNIST class 0: -0.88266, 9.00155).

Networks (bias-free, BatchNorm without affine parameters, eps 1e-4, LeakyReLU slope 0.01)::

    mnist          Conv5x5(8) BN LReLU MaxPool2 | Conv5x5(4) BN LReLU MaxPool2 | Linear 196 -> 32
    fashion_mnist  Conv5x5(32) ... | Conv5x5(64) ... | Conv5x5(128) ... | Linear 1152 -> 128

``pretrain`` (called by the trainer once, before its loop) trains the matching autoencoder
(sum-of-squares reconstruction loss, Adam with weight decay 0.5e-3), copies its encoder into the
Deep SVDD network phi and sets the centre c to the mean of phi over the training images (eval
mode), entries with |c| < 0.1 pushed to +-0.1. The trainer then minimises the one-class objective
mean ||phi(x) - c||^2 plus the weight decay 0.5e-6 of the source's Adam, written as the loss term
0.5 * 0.5e-6 * sum(w^2) (the same gradient as Adam's coupled ``weight_decay``).

Scores: ``"main"`` = ||phi(x) - c||^2; ``"reconstruction"`` = the pretrained autoencoder's
per-image sum of squared errors in the preprocessed space (the source's ``AETrainer.test``).

The network is chosen by the dataset (``create_model(..., dataset=...)``); ``latent_dim`` is
ignored: the source fixes the representation size (32 MNIST, 128 Fashion-MNIST).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grad2vae.errors import UserError
from grad2vae.models import register
from grad2vae.models.base import AnomalyModel
from grad2vae.progress import Progress, fmt_duration
from grad2vae.schedule import make_scheduler

log = logging.getLogger(__name__)

#: Adam weight decay of the one-class objective and of the autoencoder pretraining (README)
WEIGHT_DECAY = 0.5e-6
AE_WEIGHT_DECAY = 0.5e-3
#: |c_i| below this is pushed to +-EPS (DeepSVDDTrainer.init_center_c)
CENTER_EPS = 0.1
BN_EPS = 1e-4
#: images per forward pass outside training
CHUNK = 1000


def global_contrast_normalization(x: Tensor) -> Tensor:
    """Per image: subtract the mean over its pixels, divide by the mean absolute value (L1)."""
    x = x - x.mean(dim=(1, 2, 3), keepdim=True)
    scale = x.abs().mean(dim=(1, 2, 3), keepdim=True)
    # A constant image is 0 after centring; tiny keeps it 0 instead of 0/0 (never hit on MNIST).
    return x / scale.clamp_min(torch.finfo(x.dtype).tiny)


def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 5, bias=False, padding=2)


def _bn2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, affine=False)


class LeNetEncoder(nn.Module):
    """phi: [Conv5x5 (no bias) -> BN (no affine) -> LeakyReLU -> MaxPool 2] per channel count,
    then a bias-free Linear to ``rep_dim``. Same layout as the source's ``*_LeNet`` classes."""

    def __init__(self, channels: tuple[int, ...], rep_dim: int, leaky_gain_init: bool = False):
        super().__init__()
        self.rep_dim = rep_dim
        blocks, in_channels, side = [], 1, 28
        for out_channels in channels:
            conv = _conv(in_channels, out_channels)
            if (
                leaky_gain_init
            ):  # natasasdj FMNIST_LeNet_Autoencoder initialises its convolutions so
                nn.init.xavier_uniform_(conv.weight, gain=nn.init.calculate_gain("leaky_relu"))
            blocks += [conv, _bn2d(out_channels), nn.LeakyReLU(), nn.MaxPool2d(2, 2)]
            in_channels, side = out_channels, side // 2
        self.features = nn.Sequential(*blocks)
        self.fc1 = nn.Linear(in_channels * side * side, rep_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc1(self.features(x).flatten(1))


class MnistDecoder(nn.Module):
    """MNIST_LeNet_Autoencoder's decoder: 32 -> (2, 4, 4) -> LReLU, upsample, deconvolutions."""

    def __init__(self, rep_dim: int = 32):
        super().__init__()
        self.rep_dim = rep_dim
        self.deconv1 = nn.ConvTranspose2d(rep_dim // 16, 4, 5, bias=False, padding=2)
        self.bn3 = _bn2d(4)
        self.deconv2 = nn.ConvTranspose2d(4, 8, 5, bias=False, padding=3)
        self.bn4 = _bn2d(8)
        self.deconv3 = nn.ConvTranspose2d(8, 1, 5, bias=False, padding=2)

    def forward(self, z: Tensor) -> Tensor:
        x = z.view(len(z), self.rep_dim // 16, 4, 4)
        x = F.interpolate(F.leaky_relu(x), scale_factor=2)  # 4 -> 8
        x = F.interpolate(F.leaky_relu(self.bn3(self.deconv1(x))), scale_factor=2)  # 8 -> 16
        x = F.interpolate(F.leaky_relu(self.bn4(self.deconv2(x))), scale_factor=2)  # 16 -> 14 -> 28
        return torch.sigmoid(self.deconv3(x))  # 28


class FashionDecoder(nn.Module):
    """FMNIST_LeNet_Autoencoder's decoder (natasasdj): BatchNorm1d on the code, (8, 4, 4), three
    [Conv5x5 -> BN -> LReLU -> upsample 2] (128, 64, 32), Conv5x5 valid 32 -> 28, BN, sigmoid."""

    def __init__(self, rep_dim: int = 128):
        super().__init__()
        self.rep_dim = rep_dim
        self.bn1d = nn.BatchNorm1d(rep_dim, eps=BN_EPS, affine=False)
        layers, in_channels = [], rep_dim // 16
        for out_channels in (128, 64, 32):
            conv = _conv(in_channels, out_channels)
            nn.init.xavier_uniform_(conv.weight, gain=nn.init.calculate_gain("leaky_relu"))
            layers += [conv, _bn2d(out_channels), nn.LeakyReLU(), nn.Upsample(scale_factor=2)]
            in_channels = out_channels
        self.blocks = nn.Sequential(*layers)
        self.conv7 = nn.Conv2d(32, 1, 5, bias=False, padding=0)
        nn.init.xavier_uniform_(self.conv7.weight, gain=nn.init.calculate_gain("leaky_relu"))
        self.bn2d7 = _bn2d(1)

    def forward(self, z: Tensor) -> Tensor:
        x = F.leaky_relu(self.bn1d(z).view(len(z), self.rep_dim // 16, 4, 4))
        return torch.sigmoid(self.bn2d7(self.conv7(self.blocks(x))))


#: dataset -> (encoder channels, representation size, decoder, source file)
NETWORKS: dict[str, tuple[tuple[int, ...], int, type[nn.Module], str]] = {
    "mnist": ((8, 4), 32, MnistDecoder, "lukasruff/Deep-SVDD-PyTorch networks/mnist_LeNet.py"),
    "fashion_mnist": (
        (32, 64, 128),
        128,
        FashionDecoder,
        "natasasdj/Deep-SVDD-PyTorch networks/fmnist_LeNet.py",
    ),
}


@register
class DeepSVDD(AnomalyModel):
    name = "deep_svdd"
    main_score = (
        "squared distance to the hypersphere centre, ||phi(x) - c||^2 (one-class Deep SVDD)"
    )
    preprocessing = (
        "per-image global contrast normalisation (L1 scale), then min-max scaling with the min and "
        "max over all pixels of the normal class's training images after GCN; test images use the "
        "same constants"
    )
    #: the README's learning setup (lukasruff/Deep-SVDD-PyTorch, MNIST example)
    protocol_defaults = {
        "epochs": 150,
        "lr": 1e-4,
        "batch_size": 200,
        "lr_decay_epoch": 50,
        "lr_decay_factor": 0.1,
    }
    assumptions = (
        "Networks: MNIST LeNet (8/4 filters, 32-d) and Fashion-MNIST LeNet (32/64/128 filters, "
        "128-d), bias-free, BatchNorm(affine=False, eps 1e-4), LeakyReLU 0.01 — "
        "lukasruff/Deep-SVDD-PyTorch mnist_LeNet.py, natasasdj/Deep-SVDD-PyTorch fmnist_LeNet.py",
        "Preprocessing inside the model: GCN with L1 scale, then (x - min)/(max - min) with scalar "
        "min/max over the normal class's training images after GCN, computed from the run's "
        "training images (the source hard-codes the same values per class) — "
        "lukasruff/Deep-SVDD-PyTorch datasets/mnist.py, preprocessing.py",
        "Autoencoder pretraining before the one-class objective, with the run's epochs, learning "
        "rate, batch size and schedule (the README uses the same values for both phases: lr 1e-4, "
        "150 epochs, milestone 50 x 0.1, batch 200) and Adam weight decay 0.5e-3; loss = mean over "
        "images of the per-image sum of squared errors — lukasruff/Deep-SVDD-PyTorch README, "
        "optim/ae_trainer.py",
        "Pretraining batches in an order drawn from a generator seeded from the run's seed "
        "(sha256(seed, 'pretrain')), the last smaller batch kept (DataLoader shuffle=True, "
        "drop_last=False) — our choice of seeding; batching as the source",
        "phi initialised from the pretrained encoder (weights and BatchNorm running statistics, "
        "as the source's state_dict copy) — lukasruff/Deep-SVDD-PyTorch deepSVDD.py",
        "Centre c = mean of phi over the training images in eval mode after pretraining; entries "
        "with |c| < 0.1 set to +-0.1 (exact zeros kept) — DeepSVDDTrainer.init_center_c",
        "One-class objective mean ||phi(x) - c||^2 (not soft-boundary, nu "
        "unused); weight decay 0.5e-6 as the loss term 0.5*0.5e-6*sum(w^2) over "
        "phi's weights, which gives the gradient of Adam(weight_decay=0.5e-6) "
        "while the trainer's Adam has none — README, deepSVDD_trainer.py",
        "Learning setup = the README's (Adam lr 1e-4, 150 epochs, lr x 0.1 after epoch 50, batch "
        "200), exposed as protocol_defaults; a run uses whatever its configuration says, and the "
        "configuration is recorded in metrics.json — lukasruff/Deep-SVDD-PyTorch README",
        "Reconstruction score = the pretrained autoencoder's per-image sum of squared errors in "
        "the preprocessed space (the source's AE baseline test) — optim/ae_trainer.py test()",
        "The network is chosen by the dataset; latent_dim (16/32) is "
        "ignored, the source fixes the representation size (32 MNIST, "
        "128 Fashion-MNIST) — lukasruff / natasasdj Deep-SVDD-PyTorch",
    )
    parameter_note = "Deep SVDD network phi only (the pretraining autoencoder is not counted)"

    def __init__(self, latent_dim: int | None = None, dataset: str | None = "mnist"):
        super().__init__()
        dataset = dataset or "mnist"
        if dataset not in NETWORKS:
            raise UserError(
                f"deep_svdd has no network for dataset {dataset!r}; known: {', '.join(NETWORKS)}"
            )
        self.dataset = dataset
        channels, rep_dim, decoder, _source = NETWORKS[dataset]
        fashion = dataset == "fashion_mnist"
        self.net = LeNetEncoder(channels, rep_dim)  # phi (built first, as the source does)
        self.autoencoder = nn.ModuleDict(
            {
                "encoder": LeNetEncoder(channels, rep_dim, leaky_gain_init=fashion),
                "decoder": decoder(rep_dim),
            }
        )
        self.autoencoder.requires_grad_(False)  # trained only inside pretrain()
        self.register_buffer("c", torch.zeros(rep_dim))
        self.register_buffer("gcn_min", torch.tensor(math.nan))
        self.register_buffer("gcn_max", torch.tensor(math.nan))
        # Whether the constants are fitted, known on the host: checking the buffers in every
        # loss() and score chunk would be a GPU->CPU sync each time.
        self._preprocessing_fitted = False
        self.register_load_state_dict_post_hook(DeepSVDD._after_load)

    @staticmethod
    def _after_load(module: "DeepSVDD", incompatible_keys) -> None:
        module._preprocessing_fitted = bool(torch.isfinite(module.gcn_min))  # one check per load

    # ---------------------------------------------------------------------------------------
    # preprocessing

    @torch.no_grad()
    def fit_preprocessing(self, train_x: Tensor) -> None:
        lows, highs = [], []
        for xs in train_x.split(CHUNK):
            g = global_contrast_normalization(xs)
            lows.append(g.min())
            highs.append(g.max())
        self.gcn_min.copy_(torch.stack(lows).min())
        self.gcn_max.copy_(torch.stack(highs).max())
        self._preprocessing_fitted = True

    def preprocess(self, x: Tensor) -> Tensor:
        if not self._preprocessing_fitted:
            raise RuntimeError("deep_svdd: call pretrain(train_x, ...) before loss() or scores()")
        return (global_contrast_normalization(x) - self.gcn_min) / (self.gcn_max - self.gcn_min)

    def preprocessing_info(self) -> dict[str, Any]:
        return {
            "description": self.preprocessing,
            "gcn": "l1",
            "min": float(self.gcn_min),
            "max": float(self.gcn_max),
            "network": NETWORKS[self.dataset][3],
        }

    # ---------------------------------------------------------------------------------------
    # pretraining and centre

    def reconstruct(self, xp: Tensor) -> Tensor:
        return self.autoencoder["decoder"](self.autoencoder["encoder"](xp))

    def pretrain(
        self,
        train_x: Tensor,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        lr_decay_epoch: int,
        lr_decay_factor: float,
        lr_steps: tuple[tuple[int, float], ...] = (),
        generator: torch.Generator | None = None,
        progress: bool | None = None,
    ) -> dict[str, Any]:
        start = time.perf_counter()
        self.fit_preprocessing(train_x)
        with torch.no_grad():
            xp = torch.cat([self.preprocess(xs) for xs in train_x.split(CHUNK)])
        ae = self.autoencoder
        ae.requires_grad_(True)
        ae.train()
        optimizer = torch.optim.Adam(ae.parameters(), lr=lr, weight_decay=AE_WEIGHT_DECAY)
        scheduler = make_scheduler(optimizer, lr_decay_epoch, lr_decay_factor, lr_steps)
        n = len(xp)
        batches = math.ceil(n / batch_size)
        losses: list[Tensor] = []
        bar = Progress(progress, label="pretrain epoch")
        try:
            with torch.enable_grad():
                for epoch in range(1, epochs + 1):
                    epoch_start = time.perf_counter()
                    lr_now = optimizer.param_groups[0]["lr"]
                    order = torch.randperm(n, generator=generator).to(xp.device)
                    total = torch.zeros((), device=xp.device)
                    for batch, begin in enumerate(range(0, n, batch_size), start=1):
                        xb = xp[order[begin : begin + batch_size]]
                        loss = (self.reconstruct(xb) - xb).square().flatten(1).sum(1).mean()
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        total = total + loss.detach() * len(xb)
                        bar.update(epoch, epochs, batch, batches)
                    bar.clear()
                    scheduler.step()
                    losses.append(total / n)
                    # the same line as a training epoch's (one host sync per epoch, as training's)
                    seconds = time.perf_counter() - epoch_start
                    log.info(
                        "deep_svdd pretraining: epoch %d/%d loss=%.4g lr=%.3g %.1fs ETA %s",
                        epoch, epochs, losses[-1].item(), lr_now, seconds,
                        fmt_duration((time.perf_counter() - start) / epoch * (epochs - epoch)),
                    )  # fmt: skip
        finally:
            ae.requires_grad_(False)
            ae.eval()
        epoch_losses = torch.stack(losses).tolist() if losses else []
        if epoch_losses and not all(math.isfinite(v) for v in epoch_losses):
            raise UserError(
                "deep_svdd: the autoencoder pretraining loss is not finite; try a lower --lr"
            )
        # phi <- the pretrained encoder (weights and BatchNorm running statistics)
        self.net.load_state_dict(ae["encoder"].state_dict())
        self.init_center(xp)
        return {
            "epochs": epochs,
            "weight_decay": AE_WEIGHT_DECAY,
            "loss_first_epoch": epoch_losses[0] if epoch_losses else None,
            "loss_last_epoch": epoch_losses[-1] if epoch_losses else None,
            "seconds": time.perf_counter() - start,
            "center_pushed_to_eps": int((self.c.abs() == CENTER_EPS).sum()),
        }

    @torch.no_grad()
    def init_center(self, xp: Tensor) -> None:
        """c = mean of phi(xp) in eval mode; |c_i| < eps pushed to +-eps (zeros kept)."""
        was_training = self.net.training
        self.net.eval()
        total = torch.zeros(self.net.rep_dim, dtype=torch.float64, device=xp.device)
        for xs in xp.split(CHUNK):
            total += self.net(xs).double().sum(0)
        self.net.train(was_training)
        c = (total / len(xp)).to(self.c.dtype)
        c[(c.abs() < CENTER_EPS) & (c < 0)] = -CENTER_EPS
        c[(c.abs() < CENTER_EPS) & (c > 0)] = CENTER_EPS
        self.c.copy_(c)

    # ---------------------------------------------------------------------------------------
    # the interface

    def loss(self, x: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        distance = (self.net(self.preprocess(x)) - self.c).square().sum(1).mean()
        decay = 0.5 * WEIGHT_DECAY * sum(p.square().sum() for p in self.net.parameters())
        return {"svdd": distance, "weight_decay": decay, "total": distance + decay}

    @torch.no_grad()
    def scores(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        main, reconstruction = [], []
        for xs in x.split(CHUNK):
            xp = self.preprocess(xs)
            main.append((self.net(xp) - self.c).square().sum(1))
            reconstruction.append((self.reconstruct(xp) - xp).square().flatten(1).sum(1))
        return {"main": torch.cat(main), "reconstruction": torch.cat(reconstruction)}

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.net.parameters())
