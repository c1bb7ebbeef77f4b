"""Grad2VAE (Abukmeil et al., ICIAP 2022): a VAE with an online attention module built from the
second-order derivatives of the latent code with respect to the first encoder layer.

The encoder and decoder are the vanilla VAE's (``models/vae.py``, see its docstring for the layer
table); this file adds the attention module (paper Sect. 3, Fig. 2, Eq. 3):

1. L_e1 = the first encoder layer's output (after ReLU, as the notebook's ``conv_1``), C = 16
   channels at 28x28; z = mu + exp(0.5 logvar) * eps.
2. For each latent unit z_i: h_i = d/dL_e1 (sum_j dz_i/dL_e1_j), one tensor of L_e1's shape
   (``grad2vae.models.second_derivatives``; the paper's d tensors, Sect. 3 and Fig. 3 — the
   companion notebook's ``tf.gradients(z, conv)`` instead sums over the units: one tensor sum_i
   h_i), kept in the autograd graph (create_graph) so that the loss trains through it. Shape
   (N, d, C, 28, 28).
3. Aggregation: LeakyReLU(0.3) (the notebook's), the d tensors stacked along channels (d*C),
   Conv 3x3 (d*C -> 48) + ReLU, Conv 3x3 (48 -> 16) + ReLU = the attention feature map, which is
   (a) added residually to the decoder's penultimate layer L_d(n-1) (16 channels, 28x28) and
   (b) mapped by Conv 1x1 + sigmoid to the one-channel attention image.
4. Loss (Eq. 3) = BCE(x, reconstruction) + KL + BCE(x, attention image), BCE summed over pixels,
   KL over latent units, each averaged over the batch.

Why the attention samples z also at test time: every layer between L_e1 and z is ReLU or linear,
so z's curvature w.r.t. L_e1 is zero except through sigma = exp(0.5 logvar); with z = mu the
derivatives, hence the attention, would be identically zero. As Keras' sampling layer does at
predict time, ``scores`` and ``attention`` therefore sample eps, from the ``generator`` they are
given, so that a fixed evaluation generator gives reproducible scores. They enable autograd
internally (second derivatives need it) even when called under ``torch.no_grad``.

Per-sample derivatives: nothing between L_e1 and z mixes samples (no BatchNorm), so summing
over the batch inside the derivative (as ``tf.gradients`` does) still yields each sample's own
derivatives; a test checks that a sample's attention in a batch equals its attention alone.

Options (``options`` below; the defaults are the model every result so far used, the paper's
text where it speaks; presets/ablation.yaml flips each one alone). Beside the VAE's ``kl`` and
``sigma`` (``models/vae.py``):

- ``derivative_tensors``: ``"per_unit"``, the paper's d tensors h_i ("for each z_i there is a
  corresponding tensor of size of the L_e1", Sect. 3), or ``"summed"``, one tensor sum_i h_i,
  what ``tf.gradients(tf.gradients(z, conv), conv)`` in the notebook computes; the aggregating
  convolution then takes C (16) input channels instead of d*C.
- ``fusion``: ``"penultimate"``, the attention map added to L_d(n-1)'s output (Sect. 3);
  ``"notebook"``, as the notebook's decoder: the map added after the up-sampling layer (tiled
  along channels to that layer's 32: a parameter-free adaptation of ours, the notebook's layer
  there has the map's width) and at L_d(n-1), and the sigmoid attention image added before the
  output layer; ``"none"``, nothing added to the decoder while the attention module and its
  loss are still trained (the explanation is learned): the control for whether the attention
  path carries the input past the bottleneck (ours; Grad2VAE's zero-noise scores suggested such
  a leak, docs/findings/scores-and-entropy.md).
- ``attention_weight``: the weight of the attention-image BCE in the loss, a finite number
  >= 0 (Eq. 3: 1; other weights are ours).
- ``attention``: ``"on"``, or ``"off"``: the same network and parameters with the attention
  path removed (no derivatives, no attention loss, no fusion; loss terms reconstruction, kl,
  total; scored like the VAE; ``attention()`` refuses): a parameter-matched VAE (ours).

API beyond ``AnomalyModel``: ``Grad2VAE(latent_dim, derivatives=...)`` picks the implementation
of step 2; all give equal results up to rounding (tests/test_second_derivatives.py) and the
benchmark (``grad2vae bench``) times them side by side:

- ``"loop"``: the reference, 2d reverse passes per step; ``"vectorized"``: 3 autograd calls;
- ``"closed_form"``: h_i = 0.25 sigma_i eps_i (1.g_i) g_i (``sigma="exp_logvar"``: coefficient
  1, see ``second_derivatives``) with g = d logvar / dL_e1 from one batched VJP (first
  derivatives only; ``second_derivatives.second_derivatives_closed_form``);
- ``"explicit"``: the same closed form with g written out as the transposed encoder (masked
  Linear/ConvTranspose on N*d maps, ``explicit_second_derivatives``), sharing the forward pass;
  the fewest FLOPs and the fastest on the CPU;
- ``"auto"`` (default): ``resolve_derivatives(device)`` = ``AUTO_DERIVATIVES[device type]``,
  the benchmark's verdict per device type. ``grad2vae train --derivatives`` passes its choice
  through ``create_model(..., derivatives=...)``.

The two closed forms are exact only because every layer between L_e1 and (mu, logvar) is ReLU or
linear (``models.vae.Encoder``); the constructor refuses them for any other encoder class.
``encode(x) -> (mu, logvar)``; ``gradcam_layer`` = the encoder's last convolution (L_e3, pre-ReLU
output), for the offline attention of Liu et al.; ``forward(x, eps, create_graph)`` -> dict of
every intermediate; ``attention(x, generator) -> dict`` with ``"second_derivatives"`` (N, d, C,
28, 28), ``"attention_image"`` (N, 1, 28, 28) in [0, 1], ``"reconstruction"`` (N, 1, 28, 28) in
[0, 1], ``"mu"``, ``"logvar"``, ``"z"`` (N, d), all detached.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grad2vae.models import register
from grad2vae.models.base import AnomalyModel
from grad2vae.models.second_derivatives import (
    CLOSED_FORM_METHODS,
    METHODS,
    closed_form_from_jacobian,
    second_derivatives,
    second_derivatives_closed_form,
)
from grad2vae.models.vae import (
    ASSUMPTIONS as VAE_ASSUMPTIONS,
)
from grad2vae.models.vae import (
    CHANNELS,
    HIDDEN,
    KL_REDUCTIONS,
    SIGMAS,
    Decoder,
    Encoder,
    bce_per_sample,
    check_choice,
    keras_init_,
    kl_per_sample,
    reparameterize,
    sample_eps,
    variational_scores,
)

#: width of the attention module's first (aggregating) convolution
ATTENTION_WIDTH = 48
#: accepted values of the options (the first is the default; module docstring)
DERIVATIVE_TENSORS = ("per_unit", "summed")
FUSIONS = ("penultimate", "notebook", "none")
ATTENTION = ("on", "off")
#: images per forward pass when scoring: the derivative tensors take N*d*C*784 floats
SCORE_CHUNK = 128

#: every implementation of the second derivatives (equal results); "auto" resolves per device
DERIVATIVE_METHODS = METHODS + CLOSED_FORM_METHODS
#: the method "auto" uses per device type: the verdict of `grad2vae bench` (docs/benchmarks.md).
#: CPU: measured (explicit fastest). CUDA: not measured yet (no GPU was lent); "explicit" does the
#: fewest FLOPs with plain dense kernels, so it is the default until a GPU benchmark says otherwise.
AUTO_DERIVATIVES = {"cpu": "explicit", "cuda": "explicit"}


def resolve_derivatives(device: torch.device | str, requested: str = "auto") -> str:
    """The implementation to use on ``device``: ``requested`` unless it is "auto", then
    ``AUTO_DERIVATIVES`` for the device's type."""
    if requested == "auto":
        requested = AUTO_DERIVATIVES.get(torch.device(device).type, "explicit")
    if requested not in DERIVATIVE_METHODS:
        raise ValueError(
            f"second-derivative method {requested!r} is not one of {('auto',) + DERIVATIVE_METHODS}"
        )
    return requested


def _channels_last(maps: Tensor) -> Tensor:
    """``maps`` (N, C, H, W) laid out in channels_last memory order: the strides of
    ``contiguous(memory_format=torch.channels_last)``, written with permutes because vmap (several
    seeds in one process, ``train.train_seeds``) does not support memory-format queries."""
    return maps.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def _channels_last_mask(activation: Tensor) -> Tensor:
    """1 where a ReLU output is > 0 (where autograd's ReLU backward passes), as ``activation``'s
    dtype in channels_last memory order."""
    return _channels_last((activation > 0).to(activation.dtype))


def explicit_second_derivatives(
    encoder: Encoder,
    e1: Tensor,
    eps: Tensor,
    create_graph: bool = True,
    sigma: str = "exp_half_logvar",
) -> tuple[Tensor, Tensor, Tensor]:
    """(mu, logvar, h) from L_e1 in one pass: the encoder's forward, then g = d logvar / dL_e1
    for all d units written out as the transposed network (ReLU masks from the forward, as
    autograd's ReLU backward uses them: output > 0), then the closed form of
    ``second_derivatives``. Valid for ``models.vae.Encoder`` exactly (checked)."""
    if type(encoder) is not Encoder:
        raise TypeError(
            f"explicit derivatives are written for models.vae.Encoder, not {type(encoder).__name__}"
        )
    a2 = F.relu(encoder.conv2(e1))
    a3 = F.relu(encoder.conv3(a2))
    ah = F.relu(encoder.hidden(a3.flatten(1)))
    mu, logvar = encoder.mu(ah), encoder.logvar(ah)
    n, d = logvar.shape
    with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
        t = (ah > 0).to(ah.dtype).unsqueeze(1) * encoder.logvar.weight  # (N, d, hidden)
        t = (t @ encoder.hidden.weight).view(n, d, *a3.shape[1:])  # (N, d, c3, 14, 14)
        # channels_last: the transposed convolutions on N*d maps run ~2x faster in it on the CPU
        # (oneDNN); values are the same up to rounding. The ReLU masks are laid out the same
        # way, so that the broadcast products stream through memory in order.
        t = _channels_last(t.flatten(0, 1)).view(n, d, *a3.shape[1:])
        t = (t * _channels_last_mask(a3).unsqueeze(1)).flatten(0, 1)
        conv3 = encoder.conv3
        output_padding = tuple(
            size - ((small - 1) * stride - 2 * pad + kernel)
            for size, small, stride, pad, kernel in zip(
                a2.shape[2:], a3.shape[2:], conv3.stride, conv3.padding, conv3.kernel_size
            )
        )
        t = F.conv_transpose2d(
            t,
            conv3.weight,
            stride=conv3.stride,
            padding=conv3.padding,
            output_padding=output_padding,
        )
        t = (t.view(n, d, *a2.shape[1:]) * _channels_last_mask(a2).unsqueeze(1)).flatten(0, 1)
        conv2 = encoder.conv2
        g = F.conv_transpose2d(t, conv2.weight, stride=conv2.stride, padding=conv2.padding)
        g = g.view(n, d, *e1.shape[1:])
        h = closed_form_from_jacobian(logvar, eps, g, sigma)
    return mu, logvar, h


ASSUMPTIONS = VAE_ASSUMPTIONS + (
    "Second derivatives taken w.r.t. L_e1 after its ReLU, h_i = d/dL_e1(sum_j dz_i/dL_e1_j), one "
    "tensor of L_e1's shape per latent unit, kept in the autograd graph — paper Sect. 3 ('for each "
    "z_i there is a corresponding tensor of size of the L_e1'), Sect. 4.1 and Fig. 3. The "
    "companion notebook abukmeil/mgrad2vae differs: its tf.gradients(tf.gradients(z, conv), conv) "
    "sums over all latent units, one tensor equal to sum_i h_i; we follow the paper's text",
    "Derivatives of the sampled z, at test time too, with eps from the evaluation generator: with "
    "ReLU layers and z = mu they are identically zero — Keras' sampling layer samples at predict "
    "time; the fixed generator is ours (reproducible scores)",
    "Aggregation of the d tensors: LeakyReLU(0.3), stacked along channels (d*16), Conv3x3 -> 48, "
    "ReLU, Conv3x3 -> 16, ReLU; the paper says only 'convolution' (Sect. 4.1) — LeakyReLU(0.3) "
    "and conv+ReLU stages from abukmeil/mgrad2vae; width 48 is ours, chosen so that the MNIST "
    "model counts about the paper's 3.38 M parameters",
    "Fusion: the aggregated map is added once, to the output of the decoder's penultimate layer "
    "L_d(n-1), before the 1x1 sigmoid output layer — paper Sect. 3 (the notebook also adds it "
    "after the up-sampling layer and adds the attention image before the output layer)",
    "Attention image = Conv1x1 + sigmoid of the aggregated map; its loss is BCE summed over "
    "pixels against x, weight 1 — Eq. 3 and the notebook's xent_loss2",
    "Anomaly score = per-sample BCE of the main reconstruction (with the attention fusion); the "
    "attention image's own error is not part of the score — paper Sect. 4.2 ('due to its "
    "reconstruction ability')",
    "Option derivative_tensors (variants only): per_unit, the d tensors h_i (default, every "
    "reported run), or summed, one tensor sum_i h_i (N, 1, C, 28, 28) and the aggregating conv "
    "with C input channels instead of d*C — per_unit: paper Sect. 3 ('for each z_i there is a "
    "corresponding tensor'); summed: the notebook abukmeil/mgrad2vae's tf.gradients(z, conv)",
    "Option fusion (variants only): penultimate, the map added to L_d(n-1)'s output (default, "
    "every reported run); notebook, the map also added after the up-sampling layer (tiled along "
    "channels to its 32: parameter-free, ours) and the sigmoid attention image before the output "
    "layer; none, nothing added (attention module and its loss still trained: the control for "
    "a leak past the bottleneck) — penultimate: paper Sect. 3; notebook: abukmeil/mgrad2vae; "
    "none: ours, after Grad2VAE's AUCs with eps = 0 (*_zero_noise) suggested such a leak",
    "Option attention_weight (variants only): weight of the attention-image BCE in the loss, "
    "1.0 (default, every reported run) or any finite number >= 0 — 1: Eq. 3; others: ours",
    "Option attention (variants only): on (default, every reported run) or off, the same network "
    "and parameter count with the attention path removed (no derivatives, no attention loss, no "
    "fusion; scored like the VAE): a parameter-matched control — ours",
    "*_zero_noise scores (eps = 0): every second derivative is then exactly 0, so the attention "
    "module sees zeros (its biases still reach the decoder): the attention path switched off at "
    "test time on weights trained with it — a diagnostic, not a clean control (a model trained "
    "without the fusion is) — ours; see the section 'Which score, and what the attention path "
    "does'",
    "Second derivatives computed by default in closed form, h_i = 0.25 sigma_i eps_i (1.g_i) g_i "
    "with g_i = d logvar_i / dL_e1 (coefficient 1 instead of 0.25 with sigma = exp(logvar)); exact "
    "because every layer from L_e1 to (mu, logvar) is ReLU or linear; equal to the per-unit double "
    "backward up to float rounding, checked by tests and by `grad2vae bench` — ours, for "
    "speed; TF32 stays off (its effect on AUC is unmeasured)",
)


class AttentionModule(nn.Module):
    """(N, d, C, 28, 28) second derivatives -> (feature map (N, out_channels, 28, 28), attention
    image logits (N, 1, 28, 28))."""

    def __init__(
        self, latent_dim: int, in_channels: int, out_channels: int, width: int = ATTENTION_WIDTH
    ):
        super().__init__()
        self.in_channels = in_channels
        self.aggregate = nn.Conv2d(latent_dim * in_channels, width, 3, padding=1)
        self.fuse = nn.Conv2d(width, out_channels, 3, padding=1)
        self.image = nn.Conv2d(out_channels, 1, 1)
        keras_init_(self, relu=True)
        keras_init_(self.image, relu=False)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        n, d, c, height, width = h.shape
        # Stack the d tensors along channels in channels_last memory order (N, H, W, d*C): the
        # d*C -> width convolution, the largest of the step, runs ~2x faster in it on the CPU
        # (oneDNN), and the explicit derivatives already arrive as (N, d, H, W, C) in memory.
        stacked = h.permute(0, 3, 4, 1, 2).reshape(n, height, width, d * c).permute(0, 3, 1, 2)
        a = F.leaky_relu(stacked, negative_slope=0.3)
        a = F.relu(self.aggregate(a))
        a = F.relu(self.fuse(a))
        return a, self.image(a)


@register
class Grad2VAE(AnomalyModel):
    name = "grad2vae"
    main_score = "reconstruction error (BCE summed over pixels, sampled z, attention fused)"
    assumptions = ASSUMPTIONS
    parameter_note = (
        "VAE widths + attention width 48 chosen to match the paper's 3.38 M (MNIST, latent 16)"
    )
    options = {
        "kl": KL_REDUCTIONS,
        "sigma": SIGMAS,
        "derivative_tensors": DERIVATIVE_TENSORS,
        "fusion": FUSIONS,
        "attention_weight": float,
        "attention": ATTENTION,
    }

    def __init__(
        self,
        latent_dim: int,
        derivatives: str = "auto",
        channels: tuple[int, int, int] = CHANNELS,
        hidden: int = HIDDEN,
        attention_width: int = ATTENTION_WIDTH,
        kl: str = "sum",
        sigma: str = "exp_half_logvar",
        derivative_tensors: str = "per_unit",
        fusion: str = "penultimate",
        attention_weight: float = 1.0,
        attention: str = "on",
    ):
        super().__init__()
        if derivatives != "auto" and derivatives not in DERIVATIVE_METHODS:
            raise ValueError(
                f"derivatives must be one of {('auto',) + DERIVATIVE_METHODS}, not {derivatives!r}"
            )
        self.kl = check_choice("kl", kl, KL_REDUCTIONS)
        self.sigma = check_choice("sigma", sigma, SIGMAS)
        self.derivative_tensors = check_choice(
            "derivative_tensors", derivative_tensors, DERIVATIVE_TENSORS
        )
        self.fusion = check_choice("fusion", fusion, FUSIONS)
        #: option ``attention`` ("on"/"off"); not ``self.attention``, which is the explanation
        #: method
        self.attention_on = check_choice("attention", attention, ATTENTION) == "on"
        try:
            weight = math.nan if isinstance(attention_weight, bool) else float(attention_weight)
        except (TypeError, ValueError):
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"option attention_weight={attention_weight!r} is not accepted; accepted values: "
                "a finite number >= 0"
            )
        self.attention_weight = weight
        self.latent_dim = latent_dim
        self.derivatives = derivatives
        #: the method the last forward pass used (``derivatives`` resolved on its device)
        self.derivatives_used: str | None = None
        self.encoder = Encoder(latent_dim, channels, hidden)
        self.decoder = Decoder(latent_dim, channels, hidden)
        tensors = latent_dim if self.derivative_tensors == "per_unit" else 1
        self.attention_module = AttentionModule(tensors, channels[0], channels[0], attention_width)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The encoder's last convolution (L_e3); hook its output (pre-ReLU) for Grad-CAM."""
        return self.encoder.conv3

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def forward(self, x: Tensor, eps: Tensor, create_graph: bool = True) -> dict[str, Tensor]:
        """Everything for one batch with the given noise ``eps`` (N, d); logits, not probabilities.
        With ``attention="off"`` only mu, logvar, z and logits."""
        if not self.attention_on:
            mu, logvar = self.encoder(x)
            z = reparameterize(mu, logvar, eps, self.sigma)
            return {"mu": mu, "logvar": logvar, "z": z, "logits": self.decoder(z)}
        method = resolve_derivatives(x.device, self.derivatives)
        if method in CLOSED_FORM_METHODS and type(self.encoder) is not Encoder:
            # the closed form needs a piecewise-linear path from L_e1 to (mu, logvar)
            raise ValueError(
                f"derivatives={method!r} is exact only for models.vae.Encoder; use 'loop'"
            )
        self.derivatives_used = method
        e1 = self.encoder.first_layer(x)
        if method == "explicit":
            mu, logvar, h = explicit_second_derivatives(
                self.encoder, e1, eps, create_graph=create_graph, sigma=self.sigma
            )
            z = reparameterize(mu, logvar, eps, self.sigma)
        else:
            if not e1.requires_grad:  # frozen parameters: L_e1 still needs to be differentiable
                e1 = e1.detach().requires_grad_(True)
            mu, logvar = self.encoder.from_first_layer(e1)
            z = reparameterize(mu, logvar, eps, self.sigma)
            if method == "closed_form":
                h = second_derivatives_closed_form(
                    logvar, eps, e1, create_graph=create_graph, sigma=self.sigma
                )
            else:
                h = second_derivatives(z, e1, method, create_graph=create_graph)
        if self.derivative_tensors == "summed":
            h = h.sum(dim=1, keepdim=True)
        feature_map, attention_logits = self.attention_module(h)
        logits = self.fused_decoder(z, feature_map, attention_logits)
        return {
            "mu": mu,
            "logvar": logvar,
            "z": z,
            "second_derivatives": h,
            "attention_logits": attention_logits,
            "logits": logits,
        }

    def fused_decoder(self, z: Tensor, feature_map: Tensor, attention_logits: Tensor) -> Tensor:
        """The decoder's logits with the attention fused as ``fusion`` says."""
        if self.fusion == "none":
            return self.decoder(z)
        if self.fusion == "notebook":
            return self.decoder(
                z,
                residual=feature_map,
                upsampled_residual=feature_map,
                image_residual=torch.sigmoid(attention_logits),
            )
        return self.decoder(z, residual=feature_map)

    def sample_noise(self, batch_size: int, like: Tensor) -> Tensor:
        """eps of the reparameterisation, (batch_size, latent_dim), from the global RNG."""
        return torch.randn(batch_size, self.latent_dim, device=like.device, dtype=like.dtype)

    def supports_seed_vmap(self, device: torch.device) -> bool:
        # the other methods call torch.autograd.grad, which vmap cannot batch
        return not self.attention_on or resolve_derivatives(device, self.derivatives) == "explicit"

    def loss(self, x: Tensor, noise: Tensor | None = None) -> dict[str, Tensor]:
        eps = self.sample_noise(len(x), x) if noise is None else noise
        out = self(x, eps)
        reconstruction = bce_per_sample(out["logits"], x).mean()
        kl = kl_per_sample(out["mu"], out["logvar"], self.kl).mean()
        if not self.attention_on:
            return {"reconstruction": reconstruction, "kl": kl, "total": reconstruction + kl}
        attention = bce_per_sample(out["attention_logits"], x).mean()
        weighted = attention if self.attention_weight == 1.0 else self.attention_weight * attention
        total = reconstruction + kl + weighted
        return {"reconstruction": reconstruction, "kl": kl, "attention": attention, "total": total}

    def scores(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """``main`` = BCE of the fused reconstruction of a sampled z, with the diagnostics of
        ``models.vae.variational_scores``; ``*_zero_noise`` = ``zero_noise_logits``."""
        return self.score_batch(x, generator)[0]

    def score_batch(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``scores`` and the images of the same pass that the notebook's two Keras AUCs compared
        with the input: the fused reconstruction (``x_decoded_mean_squash``) and, with the
        attention on, the attention image (``final4_grad``)."""
        eps = sample_eps(len(x), self.latent_dim, generator, like=x)
        chunks: list[dict[str, Tensor]] = []
        images: dict[str, list[Tensor]] = {}
        for start in range(0, len(x), SCORE_CHUNK):
            xs = x[start : start + SCORE_CHUNK]
            with torch.set_grad_enabled(self.attention_on):  # attention off: the VAE's pass
                out = self(xs, eps[start : start + SCORE_CHUNK], create_graph=False)
            logits = out["logits"].detach()
            with torch.no_grad():
                chunks.append(variational_scores(logits, self.zero_noise_logits(xs), xs))
                images.setdefault("reconstruction", []).append(torch.sigmoid(logits))
                if "attention_logits" in out:
                    attention = torch.sigmoid(out["attention_logits"].detach())
                    images.setdefault("attention", []).append(attention)
        scores = {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
        return scores, {name: torch.cat(parts) for name, parts in images.items()}

    def zero_noise_logits(self, x: Tensor) -> Tensor:
        """The reconstruction logits with eps = 0, z = mu: equal to ``forward(x, zeros)`` up to
        rounding, without differentiating. Every second derivative is exactly 0 there (h_i is
        proportional to eps_i), so the attention module sees zeros and its biases alone reach
        the decoder: the attention path switched off at test time, on the weights trained with
        it."""
        mu, _ = self.encoder(x)
        if not self.attention_on:
            return self.decoder(mu)
        tensors = self.latent_dim if self.derivative_tensors == "per_unit" else 1
        zeros = x.new_zeros(1, tensors, self.attention_module.in_channels, *x.shape[2:])
        feature_map, attention_logits = self.attention_module(zeros)
        return self.fused_decoder(
            mu,
            feature_map.expand(len(x), *feature_map.shape[1:]),
            attention_logits.expand(len(x), *attention_logits.shape[1:]),
        )

    def attention(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Second derivatives, attention image and reconstruction of ``x`` (see module docstring);
        the derivative tensors take N*d*16*784 floats, so pass a few images at a time."""
        if not self.attention_on:
            raise ValueError("this Grad2VAE has attention='off': it has no attention to explain")
        eps = sample_eps(len(x), self.latent_dim, generator, like=x)
        with torch.enable_grad():
            out = self(x, eps, create_graph=False)
        return {
            "second_derivatives": out["second_derivatives"].detach(),
            "attention_image": torch.sigmoid(out["attention_logits"]).detach(),
            "reconstruction": torch.sigmoid(out["logits"]).detach(),
            "mu": out["mu"].detach(),
            "logvar": out["logvar"].detach(),
            "z": out["z"].detach(),
        }
