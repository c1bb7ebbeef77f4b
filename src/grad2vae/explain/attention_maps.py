"""The attention maps compared by `grad2vae explain` (Grad2VAE's online attention, the offline
Grad-CAM of a VAE, an intensity baseline) and the deletion metric of their faithfulness."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grad2vae.errors import UserError
from grad2vae.grid import EXPLAIN_MODELS

# --------------------------------------------------------------------------------------------
# Attention maps
# --------------------------------------------------------------------------------------------
ASSUMPTIONS: tuple[str, ...] = (
    "Offline attention target = the output of the encoder's last convolution module "
    "(`gradcam_layer`), taken before its activation — liuem607/expVAE code/test_expVAE.py "
    "(target_layer='encoder.2', the 2nd Conv2d of the Sequential) and code/gradcam.py (hooks on "
    "that module's output)",
    "Offline attention is computed on the project's vanilla VAE (Grad2VAE without its attention "
    "module; its last convolution is L_e3, 14x14), not on Liu et al.'s ConvVAE (two stride-2 "
    "convolutions to 7x7, latent 32), so that the two compared models differ only by the "
    "attention module — our choice; the paper does not say which VAE its Figs. 4 and 5 use",
    "Offline attention back-propagates sum(mu) (mean of q(z|x), not a sampled z) over all latent "
    "units, the model in eval mode; summing over the batch is exact because every sample's mu "
    "depends only on that sample — expVAE code/gradcam.py (encode_one_hot_batch returns mu, "
    "flag=2 sums it)",
    "Offline attention: gradients divided by their RMS (+1e-5) per image, not over the whole batch "
    "as expVAE's normalize() does; the factor is a positive scalar that the per-image min-max "
    "normalisation removes, so maps are identical and images never influence each other — "
    "expVAE code/gradcam.py normalize(), code/test_expVAE.py save_cam()",
    "Offline attention order of operations: sum_k alpha_k A_k, bilinear upsampling to 28x28 "
    "(align_corners=False, PyTorch's default since 0.4), then abs(), then min-max per image; no "
    "ReLU and no per-unit averaging (the CVPR paper's formula has both, its code neither) — "
    "expVAE code/gradcam.py generate(), code/test_expVAE.py save_cam()",
    "Online attention = Grad2VAE.attention(x, generator)['attention_image'] with the latent code "
    "sampled from a generator seeded with the run's seed (with z = mu the second derivatives of a "
    "ReLU encoder vanish) — ../shared/notes/anchors.md (Grad2VAE, abukmeil/mgrad2vae)",
    "Figures show both attentions min-max normalised per image on one colour scale [0, 1] "
    "(colour map 'inferno'); the paper does not say how its Figs. 4 and 5 are scaled — our choice",
    "Fig. 3 shows the second-derivative tensor of one normal-class test image for latent units "
    "2 and d (1-based; d = 16 on MNIST as in the paper), one panel per channel of L_e1, on a "
    "symmetric diverging colour scale per unit — paper Sect. 4.1, Fig. 3",
    "Test images for the figures and the faithfulness measure are drawn per class with a numpy "
    "generator seeded by (seed, normal class), then kept in test-set order — our choice; the "
    "paper does not say which images it shows",
    "Faithfulness = deletion test (Petsiuk et al., RISE, BMVC 2018): the most-attended pixels are "
    "set to 0, the background value of MNIST and Fashion-MNIST ('no ink'), in steps of 5 % up "
    "to 50 % of the pixels; attention ties are broken in a seeded random order, never in raster "
    "order. Deleting an already-black pixel changes nothing, so this fill favours maps that "
    "point at ink; the input-intensity control row shows how far that alone goes (--fill blur "
    "is the alternative) — our choice",
    "Deletion curve = mean over images of |s(x_deleted) - s(x)|, s = the model's 'main' anomaly "
    "score, with the same sampling noise at every step (fixed generator per batch); absolute "
    "change because deleting ink can make an image look more or less anomalous — our choice",
    "Deletion AUC = trapezoidal area under the curve divided by the fraction range (a mean "
    "absolute score change); faithfulness = AUC(attention order) / AUC(random order) on the same "
    "model and images, random order averaged over 2 seeded permutations per image; 1 = random, "
    "higher = more faithful; win rate = share of images whose attention AUC beats their random "
    "AUC; a 95 % percentile bootstrap interval over the images (1000 seeded resamples) goes "
    "with each ratio — our choice",
    "Fairness: an attention is scored primarily by the model it explains (faithfulness is a "
    "property of an explanation with respect to its model), normalised by that model's own "
    "random-order curve; the table adds the Liu et al. attention computed on Grad2VAE (same "
    "model as the online attention), cross-model rows (one common scorer) and a control whose "
    "'attention' is the input intensity — our choice",
    "Before scoring, fit_scorer(train_x) is called with the normal class's training images, as "
    "the trainer does before every evaluation — CONTRIBUTING.md (models)",
    "The paper counts classes from 1: Fig. 3 ('the 9th class of the MNIST') is digit 8, Fig. 4 "
    "('the 10th class') digit 9, Fig. 5 ('the 2nd and 4th classes') digits 1 and 3, the defaults "
    "of config.yaml (explain.fig3_classes, fig4_classes, fig5_classes) — evidence: Sect. 4.2 says "
    "'Deep SVDD and Inception-CAENN learn the 2nd class from the fashion dataset perfectly; "
    "however, they show minimum accuracies for the 6th and 7th classes', which matches Table 1 "
    "only 1-based (Trouser 99.77 / 98.80; minima Sandal 90.40 and Shirt 85.50)",
    "The paper's Fig. 5 models were trained for 600 epochs ('we consider 600 epochs for "
    "qualitative comparison', Sect. 4.2); ours are the grid's runs (100 epochs under the paper's "
    "protocol, fewer in the presets), loaded as they are — our choice (no dedicated longer runs)",
)


#: the model whose online attention is explained, and the one the offline Grad-CAM runs on
#: (``grad2vae.grid.EXPLAIN_MODELS``: the workflow trains these for the explain stage)
ONLINE_MODEL, OFFLINE_MODEL = EXPLAIN_MODELS


def normalise_per_image(maps: Tensor) -> Tensor:
    """Min-max normalise each image's map to [0, 1] on its own (a constant map becomes 0)."""
    flat = maps.reshape(maps.shape[0], -1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - low) / safe, torch.zeros_like(flat))
    return out.reshape(maps.shape)


def offline_attention(model: nn.Module, x: Tensor) -> Tensor:
    """Liu et al.'s offline attention (Grad-CAM of sum(mu)) as in liuem607/expVAE, per image.

    ``model`` must offer ``encode(x) -> (mu, logvar)`` and ``gradcam_layer`` (a module whose
    forward output is the feature map A, before any activation). Returns (N, 1, H, W) in [0, 1].
    """
    layer = getattr(model, "gradcam_layer", None)
    if not isinstance(layer, nn.Module) or not hasattr(model, "encode"):
        raise UserError(
            f"{type(model).__name__} has no `encode` / `gradcam_layer`: the offline attention "
            "needs a variational model (vae or grad2vae)"
        )
    captured: list[Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        # Hand the rest of the network a copy: an in-place activation after the convolution
        # must not overwrite the pre-activation map A that we keep.
        return output.clone()

    was_training = model.training
    model.eval()  # no dropout / batch statistics: every image's mu depends on that image only
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            mu, _logvar = model.encode(x.detach())
            if len(captured) != 1:
                raise RuntimeError(
                    f"gradcam_layer ran {len(captured)} times in one encode(); expected once"
                )
            activations = captured[0]
            (grads,) = torch.autograd.grad(mu.sum(), activations)
    finally:
        handle.remove()
        model.train(was_training)
    activations = activations.detach()
    # expVAE divides by the RMS of the whole batch's gradients; per image here (see ASSUMPTIONS).
    rms = grads.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-5
    grads = grads / rms
    alpha = grads.mean(dim=(2, 3), keepdim=True)  # global average pooling -> (N, K, 1, 1)
    cam = (alpha * activations).sum(dim=1, keepdim=True)
    cam = F.interpolate(cam, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return normalise_per_image(cam.abs())


def online_attention(model: nn.Module, x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Grad2VAE's learned attention image, (N, 1, H, W), detached."""
    if not hasattr(model, "attention"):
        raise UserError(f"{type(model).__name__} has no `attention`: only grad2vae has one")
    model.eval()
    return model.attention(x, generator=generator)["attention_image"].detach()


def intensity_attention(x: Tensor) -> Tensor:
    """Control 'attention': the input itself (bright pixels first)."""
    return x.detach().clone()


# --------------------------------------------------------------------------------------------
# Faithfulness: deletion curves
# --------------------------------------------------------------------------------------------
DEFAULT_FRACTIONS = tuple(round(0.05 * step, 2) for step in range(11))  # 0, 5, ..., 50 %


def deletion_order(attention: Tensor, generator: torch.Generator) -> Tensor:
    """Pixel indices (N, P), most-attended first; ties in a random order drawn from
    ``generator``."""
    flat = attention.detach().reshape(attention.shape[0], -1).to(torch.float64)
    count, pixels = flat.shape
    tie_break = torch.stack([torch.randperm(pixels, generator=generator) for _ in range(count)])
    shuffled = flat.gather(1, tie_break)
    ranked = torch.argsort(shuffled, dim=1, descending=True, stable=True)
    return tie_break.gather(1, ranked)


def random_order(count: int, pixels: int, generator: torch.Generator) -> Tensor:
    return torch.stack([torch.randperm(pixels, generator=generator) for _ in range(count)])


def blank(x: Tensor, order: Tensor, k: int, fill: Tensor | None = None) -> Tensor:
    """``x`` with the first ``k`` pixels of ``order`` set to ``fill`` (0 when ``fill`` is None)."""
    flat = x.reshape(x.shape[0], -1).clone()
    if k > 0:
        index = order[:, :k]
        values = (
            torch.zeros_like(index, dtype=flat.dtype)
            if fill is None
            else (fill.reshape(fill.shape[0], -1).gather(1, index))
        )
        flat.scatter_(1, index, values)
    return flat.reshape(x.shape)


def blur(x: Tensor, sigma: float = 2.0) -> Tensor:
    """Gaussian blur (separable, reflect padding): the alternative deletion fill."""
    radius = max(1, int(math.ceil(3 * sigma)))
    steps = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(steps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1), groups=x.shape[1])
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(x.shape[1], 1, -1, 1), groups=x.shape[1])
    return out


def deletion_curve(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    order: Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    fill: Tensor | None = None,
    reference: Tensor | None = None,
) -> Tensor:
    """|score(x with the first f·P pixels of ``order`` blanked) - score(x)| for each f: (F, N)."""
    pixels = order.shape[1]
    base = score_fn(x) if reference is None else reference
    rows = []
    for fraction in fractions:
        k = int(round(fraction * pixels))
        rows.append(
            (score_fn(blank(x, order, k, fill)) - base).abs() if k else torch.zeros_like(base)
        )
    return torch.stack(rows)


def curve_area(curve: Tensor, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> Tensor:
    """Trapezoidal area under each column of ``curve`` divided by the fraction range: (N,)."""
    f = torch.as_tensor(fractions, dtype=curve.dtype)
    if len(f) < 2:
        raise ValueError("a deletion curve needs at least two fractions")
    return torch.trapezoid(curve, f, dim=0) / (f[-1] - f[0])


@dataclass
class Faithfulness:
    """Deletion result of one attention under one scorer, on one set of images."""

    curve: Tensor  # (F,) mean |score change| for the attention order
    random_curve: Tensor  # (F,) the same for random orders
    area: Tensor  # (N,) per-image area, attention order
    random_area: Tensor  # (N,) per-image area, random order (mean over repeats)

    @property
    def auc(self) -> float:
        return float(self.area.mean())

    @property
    def random_auc(self) -> float:
        return float(self.random_area.mean())

    def ratio(self, mask: Tensor | None = None) -> float:
        area, random_area = (
            (self.area, self.random_area)
            if mask is None
            else (self.area[mask], self.random_area[mask])
        )
        if area.numel() == 0:
            return float("nan")
        denominator = float(random_area.mean())
        return float(area.mean()) / denominator if denominator > 0 else float("nan")

    @property
    def win_rate(self) -> float:
        return float((self.area > self.random_area).to(torch.float64).mean())

    def ratio_interval(self, seed: int = 0, resamples: int = 1000, level: float = 0.95):
        """Percentile bootstrap interval of ``ratio()`` over the images (seeded)."""
        count = self.area.numel()
        if count < 2:
            return float("nan"), float("nan")
        generator = torch.Generator().manual_seed(seed)
        picks = torch.randint(0, count, (resamples, count), generator=generator)
        numerator = self.area[picks].mean(dim=1)
        denominator = self.random_area[picks].mean(dim=1)
        ratios = (numerator / denominator)[denominator > 0]
        if ratios.numel() == 0:
            return float("nan"), float("nan")
        tail = (1 - level) / 2
        bounds = torch.tensor([tail, 1 - tail], dtype=torch.float64)
        low, high = torch.quantile(ratios.to(torch.float64), bounds)
        return float(low), float(high)


class RandomBaseline:
    """Random-order deletion curves of one scorer on one image set, computed once and shared."""

    def __init__(
        self,
        score_fn: Callable[[Tensor], Tensor],
        x: Tensor,
        seed: int,
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        fill: Tensor | None = None,
        repeats: int = 2,
    ):
        self.score_fn, self.x, self.seed, self.fractions, self.fill = (
            score_fn,
            x,
            seed,
            fractions,
            fill,
        )
        self.reference = score_fn(x)
        generator = torch.Generator().manual_seed(seed)
        pixels = x[0].numel()
        curves = [
            deletion_curve(
                score_fn,
                x,
                random_order(len(x), pixels, generator),
                fractions,
                fill,
                self.reference,
            )
            for _ in range(max(1, repeats))
        ]
        self.curves = torch.stack(curves).mean(dim=0)  # (F, N)
        self.area = curve_area(self.curves, fractions)

    def evaluate(self, attention: Tensor) -> Faithfulness:
        generator = torch.Generator().manual_seed(self.seed + 1)
        order = deletion_order(attention, generator)
        curve = deletion_curve(
            self.score_fn, self.x, order, self.fractions, self.fill, self.reference
        )
        return Faithfulness(
            curve=curve.mean(dim=1),
            random_curve=self.curves.mean(dim=1),
            area=curve_area(curve, self.fractions),
            random_area=self.area,
        )


def faithfulness(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    attention: Tensor,
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    fill: Tensor | None = None,
    repeats: int = 2,
) -> Faithfulness:
    """Deletion faithfulness of ``attention`` (N, 1, H, W) for ``score_fn`` on images ``x``."""
    return RandomBaseline(score_fn, x, seed, fractions, fill, repeats).evaluate(attention)


def model_scorer(
    model: nn.Module, seed: int, batch_size: int = 64, device: torch.device | None = None
) -> Callable[[Tensor], Tensor]:
    """``x -> model.scores(x)["main"]`` in batches, each batch with its own fixed-seed generator,
    so that the same image at the same position meets the same sampling noise at every step."""

    def score(x: Tensor) -> Tensor:
        model.eval()
        out = []
        for index, start in enumerate(range(0, len(x), batch_size)):
            chunk = x[start : start + batch_size]
            if device is not None:
                chunk = chunk.to(device)
            # CPU generator: the models draw eps on the generator's device, then move it, so
            # the noise (hence the curve) is the same on every device.
            generator = torch.Generator().manual_seed(seed * 100_003 + index)
            out.append(model.scores(chunk, generator)["main"].detach().to("cpu", torch.float64))
        return torch.cat(out)

    return score
