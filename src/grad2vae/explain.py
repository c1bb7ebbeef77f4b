"""Attention figures (Figs. 3-5) and the faithfulness table, from the runs' saved weights.

Nothing is trained here: for every (dataset, normal class) target, the trained Grad2VAE and vanilla
VAE runs of one seed are loaded from `RESULTS_DIR/runs/{dataset}/{model}/class{c}/seed{s}/model.pt`
and explained on test images of that dataset.

Two attentions are compared:
  online   Grad2VAE's own attention image, `model.attention(x, generator)["attention_image"]`
           (aggregated second derivatives of the sampled latent code w.r.t. L_e1);
  offline  Liu et al. (CVPR 2020, liuem607/expVAE): Grad-CAM on the output of the encoder's last
           convolution (before its activation) with the gradient of sum(mu); channel weights =
           global average pool of the gradients; weighted sum of channels, bilinear upsampling
           to 28x28, absolute value, min-max normalised per image. Computed on the VAE (as in the
           paper's Figs. 4 and 5) and also on Grad2VAE itself (same model, fair comparison).

Outputs in OUT_DIR (every file written atomically):
  fig3_second_derivatives_{dataset}_class{c}.png   Fig. 3 analogue: unfolded second derivatives
  fig4_attention_{dataset}_class{c}.png            Fig. 4 analogue: normal-class test images
  fig5_attention_{dataset}.png                     Fig. 5 analogue: one test image of every class
  deletion_curves_{dataset}.png                    the curves behind the faithfulness table
  faithfulness.csv, deletion_curves.csv            faithfulness per dataset, class and attention
  summary.json                                     {"figures": [...], "tables": [...]} for the report

Faithfulness (deletion test): pixels are set to 0 (the datasets' background, "no ink") in order of
decreasing attention, 0 %, 5 %, ..., 50 % of the pixels; the curve is the mean absolute change of
the model's main anomaly score; its area (mean over the steps) is divided by the area obtained
when the pixels are deleted in random order (same model, same images, seeded). 1 = no better than
random; higher = the attention points at the pixels that drive the model's score. Each attention
is scored by the model it explains (plus cross-model rows), beside a control that deletes the
brightest pixels first, with a 95 % bootstrap interval over the images. ASSUMPTIONS lists every
choice.

Example:
  grad2vae explain --results-dir results --data-dir data --out-dir results/explain \\
      --datasets mnist --normal-classes 8 9 1 3 --fig3-classes 8 --fig4-classes 9 \\
      --fig5-classes 1 3 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grad2vae import devices, layout
from grad2vae.atomic import atomic_open, atomic_path, write_json
from grad2vae.errors import UserError

log = logging.getLogger(__name__)

#: the model whose attention is learned ("online") and the model explained offline (paper's Fig. 4)
ONLINE_MODEL = "grad2vae"
OFFLINE_MODEL = "vae"

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


# --------------------------------------------------------------------------------------------
# Attention maps
# --------------------------------------------------------------------------------------------


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
    """Pixel indices (N, P), most-attended first; ties in a random order drawn from ``generator``."""
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
        values = torch.zeros_like(index, dtype=flat.dtype) if fill is None else (
            fill.reshape(fill.shape[0], -1).gather(1, index)
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
        rows.append((score_fn(blank(x, order, k, fill)) - base).abs() if k else torch.zeros_like(base))
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
        area, random_area = (self.area, self.random_area) if mask is None else (
            self.area[mask], self.random_area[mask]
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
        self.score_fn, self.x, self.seed, self.fractions, self.fill = score_fn, x, seed, fractions, fill
        self.reference = score_fn(x)
        generator = torch.Generator().manual_seed(seed)
        pixels = x[0].numel()
        curves = [
            deletion_curve(
                score_fn, x, random_order(len(x), pixels, generator), fractions, fill, self.reference
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


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

ATTENTION_CMAP = "inferno"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(fig)


def _image_axis(ax, image, cmap="gray", vmin=0.0, vmax=1.0):
    handle = ax.imshow(np.asarray(image), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    return handle


def plot_second_derivatives(
    second: Tensor, image: Tensor, units: Sequence[int], path: Path, title: str, columns: int = 8
) -> None:
    """Fig. 3: ``second`` (d, C, H, W) of one image; one block of C panels per 1-based unit."""
    plt = _pyplot()
    channels = second.shape[1]
    columns = min(columns, channels)
    rows_per_unit = math.ceil(channels / columns)
    rows = rows_per_unit * len(units)
    fig, axes = plt.subplots(
        rows, columns + 1, figsize=(1.1 * (columns + 1) + 0.6, 1.15 * rows + 0.5), squeeze=False
    )
    for block, unit in enumerate(units):
        maps = second[unit - 1].detach().cpu().to(torch.float64).numpy()
        limit = float(np.abs(maps).max()) or 1.0
        handle = None
        for channel in range(rows_per_unit * columns):
            row, col = block * rows_per_unit + channel // columns, 1 + channel % columns
            ax = axes[row, col]
            if channel < channels:
                handle = _image_axis(ax, maps[channel], cmap="RdBu_r", vmin=-limit, vmax=limit)
                ax.set_title(f"ch {channel + 1}", fontsize=7, pad=2)
            else:
                ax.axis("off")
        for row in range(block * rows_per_unit, (block + 1) * rows_per_unit):
            axes[row, 0].axis("off")
        first = axes[block * rows_per_unit, 0]
        _image_axis(first, image.squeeze().cpu().numpy())
        first.set_title(f"input\n$z_{{{unit}}}$ (|max| {limit:.2g})", fontsize=7)
        first.axis("on")
        colorbar = fig.colorbar(
            handle, ax=axes[block * rows_per_unit : (block + 1) * rows_per_unit, 1:].ravel().tolist(),
            fraction=0.015, pad=0.01,
        )
        colorbar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9, y=1.0 + 0.12 / rows)
    _save(fig, path)


def plot_attention_rows(
    rows: Sequence[tuple[str, Tensor]],
    path: Path,
    title: str,
    column_titles: Sequence[str] | None = None,
    row_groups: Sequence[str] | None = None,
) -> None:
    """A grid: each row a (label, (N, 1, H, W) tensor); the first row of each group is the input
    (gray), the others attention maps on the [0, 1] 'inferno' scale."""
    plt = _pyplot()
    count = rows[0][1].shape[0]
    fig, axes = plt.subplots(
        len(rows), count, figsize=(1.0 * count + 1.8, 1.05 * len(rows) + 0.6), squeeze=False
    )
    handle = None
    for r, (label, maps) in enumerate(rows):
        is_input = label.startswith("input")
        for c in range(count):
            picture = maps[c].squeeze().detach().cpu().numpy()
            h = _image_axis(axes[r, c], picture, cmap="gray" if is_input else ATTENTION_CMAP)
            if not is_input:
                handle = h
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
    if column_titles is not None:
        for c, text in enumerate(column_titles):
            axes[0, c].set_title(text, fontsize=7, pad=2)
    if handle is not None:
        colorbar = fig.colorbar(handle, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
        colorbar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_deletion_curves(curves, path: Path, title: str, fractions: Sequence[float]) -> None:
    """``curves``: list of dicts (normal_class, scorer, attention, curve, random_curve)."""
    plt = _pyplot()
    classes = list(dict.fromkeys(c["normal_class"] for c in curves))  # configured order
    scorers = [s for s in (ONLINE_MODEL, OFFLINE_MODEL) if any(c["scorer"] == s for c in curves)]
    fig, axes = plt.subplots(
        len(scorers), len(classes), figsize=(3.2 * len(classes), 2.6 * len(scorers)),
        squeeze=False, sharex=True,
    )
    percent = 100 * np.asarray(fractions)
    styles = {}
    for r, scorer in enumerate(scorers):
        for c, normal_class in enumerate(classes):
            ax = axes[r, c]
            chosen = [k for k in curves if k["scorer"] == scorer and k["normal_class"] == normal_class]
            for entry in chosen:
                label = entry["attention"]
                style = styles.setdefault(label, f"C{len(styles)}")
                ax.plot(percent, entry["curve"], color=style, marker="o", ms=2.5, lw=1.2, label=label)
            if chosen:
                ax.plot(percent, chosen[0]["random_curve"], color="gray", ls="--", lw=1.2,
                        label="random order")
            ax.set_title(f"class {normal_class}, scored by {scorer}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(scorers) - 1:
                ax.set_xlabel("pixels deleted (%)", fontsize=8)
            if c == 0:
                ax.set_ylabel("mean |score change|", fontsize=8)
    handles, labels = [], []
    for ax in axes.ravel():
        for h, l in zip(*ax.get_legend_handles_labels()):
            if l not in labels:
                handles.append(h)
                labels.append(l)
    columns = max(1, min(len(labels), 2 * len(classes), 5))
    rows = math.ceil(len(labels) / columns)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=7,
               bbox_to_anchor=(0.5, -0.01 - 0.025 * (rows - 1)))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save(fig, path)


# --------------------------------------------------------------------------------------------
# From runs to figures and table
# --------------------------------------------------------------------------------------------


# Names of the files `explain` writes, relative to the output folder (grad2vae.layout, which the
# workflow imports too).
FIGURES_PER_CLASS = layout.EXPLAIN_FIGURES_PER_CLASS
FIGURES_PER_DATASET = layout.EXPLAIN_FIGURES_PER_DATASET
TABLES = layout.EXPLAIN_TABLES
SUMMARY = layout.EXPLAIN_SUMMARY


def figure_classes(normal_classes: Sequence[int], chosen: Sequence[int] | None) -> list[int]:
    """The targets one figure shows: ``chosen`` (in the targets' order), or every target if None."""
    return list(normal_classes) if chosen is None else [c for c in normal_classes if c in set(chosen)]


def output_files(
    datasets: Sequence[str],
    normal_classes: Sequence[int],
    fig3_classes: Sequence[int] | None = None,
    fig4_classes: Sequence[int] | None = None,
) -> dict[str, list[str]]:
    """File names (relative to the output folder) that `explain` writes, in summary.json order:
    Fig. 3 for ``fig3_classes``, Fig. 4 for ``fig4_classes`` (None: every target class)."""
    figures = []
    per_figure = (figure_classes(normal_classes, fig3_classes), figure_classes(normal_classes, fig4_classes))
    for dataset in datasets:
        for c in normal_classes:
            figures += [
                pattern.format(dataset=dataset, normal_class=c)
                for pattern, shown in zip(FIGURES_PER_CLASS, per_figure)
                if c in shown
            ]
        figures += [p.format(dataset=dataset) for p in FIGURES_PER_DATASET]
    return {"figures": figures, "tables": list(TABLES), "summary": [SUMMARY]}


def run_dir(results_dir: Path, dataset: str, model: str, normal_class: int, seed: int) -> Path:
    """A run's folder, laid out as the trainer and the aggregation lay it out."""
    from grad2vae.layout import RUN_DIR

    key = dict(dataset=dataset, model=model, normal_class=normal_class, seed=seed)
    return Path(results_dir) / RUN_DIR.format(**key)


def check_run(path: Path) -> Path:
    """``path`` if it holds a finished run, else a UserError that says what to do."""
    if not (path / "metrics.json").is_file() or not (path / "model.pt").is_file():
        raise UserError(
            f"no finished run in {path} (metrics.json and model.pt are needed): train it first, "
            "e.g. with `snakemake` or `grad2vae train`"
        )
    return path


def load_run(path: Path, device: torch.device) -> nn.Module:
    """Load a finished run's model (eval mode) with the trainer's loader."""
    from grad2vae.train import load_trained_model

    model = load_trained_model(path)
    return model.to(device).eval()


def class_names(dataset: str) -> list[str]:
    try:
        from grad2vae.data import DATASETS

        entry = DATASETS[dataset]
        names = entry.get("classes") if isinstance(entry, dict) else getattr(entry, "classes", entry)
        names = [str(n) for n in names]
        if len(names) == 10:
            return names
    except Exception:  # noqa: BLE001 - names are decoration; fall back to digits
        pass
    return [str(k) for k in range(10)]


def pick_indices(classes: Tensor, per_class: int, rng: np.random.Generator, only=None) -> Tensor:
    """Up to ``per_class`` test indices of each class (or of the classes in ``only``), drawn with
    ``rng``, returned in test-set order grouped by class."""
    classes_np = np.asarray(classes.cpu())
    wanted = sorted(set(classes_np.tolist())) if only is None else list(only)
    chosen = []
    for k in wanted:
        pool = np.flatnonzero(classes_np == k)
        take = min(per_class, len(pool))
        chosen.extend(np.sort(rng.choice(pool, size=take, replace=False)).tolist())
    return torch.as_tensor(chosen, dtype=torch.long)


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@dataclass
class Settings:
    results_dir: Path
    data_dir: Path
    out_dir: Path
    datasets: list[str]
    normal_classes: list[int]
    seed: int = 0
    # the targets each figure shows (None: every target); the paper counts classes from 1:
    # Fig. 3 "the 9th class" = 8, Fig. 4 "the 10th class" = 9, Fig. 5 "the 2nd and 4th" = 1, 3
    fig3_classes: list[int] | None = None
    fig4_classes: list[int] | None = None
    fig5_classes: list[int] | None = None
    units: list[int] | None = None
    fig4_images: int = 8
    per_class: int = 10
    fill: str = "zero"
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    random_repeats: int = 2
    batch_size: int = 50
    device: str = "auto"


ATTENTION_LABELS = {
    "online": "Grad2VAE online attention",
    "offline": "offline attention (Liu et al.)",
    "intensity": "input intensity (control)",
}


def explain_target(settings: Settings, dataset: str, normal_class: int, device) -> dict:
    """Everything for one (dataset, normal class): figure data, faithfulness rows and curves."""
    from grad2vae.data import load_split

    seed = settings.seed
    split = load_split(settings.data_dir, dataset, normal_class, seed=seed)
    models = {
        name: load_run(
            check_run(run_dir(settings.results_dir, dataset, name, normal_class, seed)), device
        )
        for name in (ONLINE_MODEL, OFFLINE_MODEL)
    }
    with torch.no_grad():
        for model in models.values():
            model.fit_scorer(split.train_x.to(device))
    rng = np.random.default_rng([seed, normal_class])
    test_x, test_classes, test_labels = split.test_x, split.test_classes, split.test_labels
    online_model, offline_model = models[ONLINE_MODEL], models[OFFLINE_MODEL]
    generator_seed = seed

    def online(x: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(generator_seed)
        return online_attention(online_model, x.to(device), generator).cpu()

    def offline(model):
        return lambda x: offline_attention(model, x.to(device)).cpu()

    def maps_for(x: Tensor) -> dict[str, Tensor]:
        return {
            # the derivative tensors take N*d*C*784 floats: a few images at a time
            "online": normalise_per_image(_batched(online, x, min(settings.batch_size, 16))),
            "offline_vae": _batched(offline(offline_model), x, settings.batch_size),
            "offline_grad2vae": _batched(offline(online_model), x, settings.batch_size),
        }

    # Fig. 3: one normal-class test image
    normal_index = pick_indices(test_classes, 1, rng, only=[normal_class])
    x3 = test_x[normal_index]
    generator = torch.Generator().manual_seed(seed)
    online_model.eval()
    second = online_model.attention(x3.to(device), generator=generator)["second_derivatives"]
    second = second[0].detach().cpu()
    d = second.shape[0]
    units = settings.units or [min(2, d), d]
    bad = [u for u in units if not 1 <= u <= d]
    if bad:
        raise UserError(f"--units {bad} out of range: the latent code has units 1..{d}")

    # Fig. 4: normal-class test images
    fig4_index = pick_indices(test_classes, settings.fig4_images, rng, only=[normal_class])
    x4 = test_x[fig4_index]
    maps4 = maps_for(x4)

    # Fig. 5: one test image of every class
    fig5_index = pick_indices(test_classes, 1, rng)
    x5 = test_x[fig5_index]
    maps5 = maps_for(x5)
    classes5 = test_classes[fig5_index].tolist()

    # Faithfulness: a stratified sample of the test set, normal and anomalous
    index = pick_indices(test_classes, settings.per_class, rng)
    xf = test_x[index]
    labels = test_labels[index].to(torch.bool)
    maps = maps_for(xf)
    maps["intensity"] = intensity_attention(xf)
    fill = blur(xf) if settings.fill == "blur" else None
    sources = {  # map key -> (attention kind, explained model)
        "online": ("online", ONLINE_MODEL),
        "offline_grad2vae": ("offline", ONLINE_MODEL),
        "offline_vae": ("offline", OFFLINE_MODEL),
        "intensity": ("intensity", "-"),
    }
    rows, curves = [], []
    for scorer in (ONLINE_MODEL, OFFLINE_MODEL):
        started = time.perf_counter()
        score_fn = model_scorer(models[scorer], seed, settings.batch_size, device)
        baseline = RandomBaseline(
            score_fn, xf, seed, settings.fractions, fill, settings.random_repeats
        )
        for key, (kind, explained) in sources.items():
            result = baseline.evaluate(maps[key])
            low, high = result.ratio_interval(seed)
            rows.append(
                {
                    "dataset": dataset,
                    "normal_class": normal_class,
                    "seed": seed,
                    "attention": ATTENTION_LABELS[kind],
                    "explained_model": explained,
                    "scorer": scorer,
                    "own_model": explained == scorer,
                    "n_images": len(xf),
                    "n_normal": int((~labels).sum()),
                    "deletion_auc": result.auc,
                    "random_auc": result.random_auc,
                    "faithfulness": result.ratio(),
                    "faithfulness_ci_low": low,
                    "faithfulness_ci_high": high,
                    "win_rate": result.win_rate,
                    "faithfulness_normal": result.ratio(~labels),
                    "faithfulness_anomalous": result.ratio(labels),
                }
            )
            curves.append(
                {
                    "dataset": dataset,
                    "normal_class": normal_class,
                    "scorer": scorer,
                    "attention": f"{ATTENTION_LABELS[kind]} of {explained}"
                    if explained != "-" else ATTENTION_LABELS[kind],
                    "curve": result.curve.numpy(),
                    "random_curve": result.random_curve.numpy(),
                }
            )
        log.info("%s class %s: deletion curves scored by %s in %.1f s", dataset, normal_class,
                 scorer, time.perf_counter() - started)
    return {
        "dataset": dataset,
        "normal_class": normal_class,
        "fig3": {"second": second, "image": x3[0], "units": units, "index": int(normal_index[0])},
        "fig4": {"x": x4, "maps": maps4, "index": fig4_index.tolist()},
        "fig5": {"x": x5, "maps": maps5, "classes": classes5},
        "rows": rows,
        "curves": curves,
    }


def _run_path(settings: Settings, dataset: str, model: str, normal_class: int) -> str:
    return str(run_dir(settings.results_dir, dataset, model, normal_class, settings.seed))


def explain(settings: Settings) -> dict:
    """Compute every target, write figures, tables and summary.json; return the summary."""
    import pandas as pd

    device = devices.resolve_device(settings.device)
    out = Path(settings.out_dir)
    names = output_files(settings.datasets, settings.normal_classes, settings.fig3_classes, settings.fig4_classes)
    fig3_classes = figure_classes(settings.normal_classes, settings.fig3_classes)
    fig4_classes = figure_classes(settings.normal_classes, settings.fig4_classes)
    fig5_classes = figure_classes(settings.normal_classes, settings.fig5_classes)
    figures, all_rows, curve_rows = [], [], []
    fractions = settings.fractions
    fill_text = (
        "set to 0 (background, 'no ink')" if settings.fill == "zero"
        else "replaced by a Gaussian blur (sigma 2 px) of the image"
    )
    steps_text = ", ".join(f"{100 * f:g}" for f in fractions)
    for dataset in settings.datasets:
        label_names = class_names(dataset)
        results = [explain_target(settings, dataset, c, device) for c in settings.normal_classes]
        for result in results:
            c = result["normal_class"]
            name = label_names[c]
            online_run = _run_path(settings, dataset, ONLINE_MODEL, c)
            offline_run = _run_path(settings, dataset, OFFLINE_MODEL, c)
            if c in fig3_classes:
                fig3 = result["fig3"]
                d, channels = fig3["second"].shape[:2]
                file3 = FIGURES_PER_CLASS[0].format(dataset=dataset, normal_class=c)
                units_text = " and ".join(f"z_{u}" for u in fig3["units"])
                plot_second_derivatives(
                    fig3["second"], fig3["image"], fig3["units"], out / file3,
                    f"{dataset}, normal class {c} ({name}): second derivatives of {units_text} "
                    f"w.r.t. L_e1",
                )
                figures.append({
                    "file": file3,
                    "title": f"Fig. 3 analogue — {dataset}, class {c} ({name}): unfolded "
                    f"second-derivative tensors of {units_text}",
                    "caption": (
                        f"The tensor of second-order partial derivatives of latent units "
                        f"{units_text} (1-based, of d = {d}) with respect to Grad2VAE's first encoder "
                        f"layer L_e1, unfolded over its {channels} channels (one panel per channel), "
                        f"for test image #{fig3['index']} of the normal class {c}. Taken from "
                        f"`attention(x)['second_derivatives']` of the trained Grad2VAE in "
                        f"{online_run} (no retraining), latent code sampled with a generator seeded "
                        f"with {settings.seed}. Colour: red positive, blue negative, on a symmetric "
                        "scale per unit (its largest |value| is printed beside the input)."
                    ),
                })
            if c in fig4_classes:
                fig4 = result["fig4"]
                file4 = FIGURES_PER_CLASS[1].format(dataset=dataset, normal_class=c)
                plot_attention_rows(
                    [
                        ("input", fig4["x"]),
                        ("Grad2VAE\nonline", fig4["maps"]["online"]),
                        ("offline (Liu)\non VAE", fig4["maps"]["offline_vae"]),
                        ("offline (Liu)\non Grad2VAE", fig4["maps"]["offline_grad2vae"]),
                    ],
                    out / file4,
                    f"{dataset}, trained on class {c} ({name}): normal-class test images",
                )
                figures.append({
                    "file": file4,
                    "title": f"Fig. 4 analogue — {dataset}, class {c} ({name}): online vs offline "
                    "attention on normal-class test images",
                    "caption": (
                        f"{len(fig4['index'])} test images of the normal class {c} (row 1), "
                        "Grad2VAE's learned (online) attention image (row 2, the paper's Fig. 4a), "
                        "the offline attention of Liu et al. on the vanilla VAE (row 3, Fig. 4b: "
                        "Grad-CAM of sum(mu) on the encoder's last convolution, channel weights = "
                        "averaged gradients, bilinear upsampling, absolute value) and, beyond the "
                        "paper, the same offline attention on the Grad2VAE model itself (row 4). "
                        f"Models: {online_run} and {offline_run}, loaded from their saved weights. "
                        "Every map is min-max normalised per image; colour scale [0, 1]."
                    ),
                })
        # Fig. 5: one block of rows per normal class
        file5 = FIGURES_PER_DATASET[0].format(dataset=dataset)
        rows5 = []
        shown5 = [result for result in results if result["normal_class"] in fig5_classes]
        for result in shown5:
            c = result["normal_class"]
            fig5 = result["fig5"]
            rows5 += [
                (f"input\n(trained on {c})", fig5["x"]),
                (f"Grad2VAE\nonline ({c})", fig5["maps"]["online"]),
                (f"offline (Liu)\nVAE ({c})", fig5["maps"]["offline_vae"]),
            ]
        columns5 = [f"{k}: {label_names[k]}" for k in shown5[0]["fig5"]["classes"]]
        plot_attention_rows(rows5, out / file5,
                            f"{dataset}: one test image of every class, per trained normal class",
                            column_titles=columns5)
        classes_text = ", ".join(str(r["normal_class"]) for r in shown5)
        figures.append({
            "file": file5,
            "title": f"Fig. 5 analogue — {dataset}: attention on test images of every class "
            f"(models trained on class {classes_text})",
            "caption": (
                f"For each model trained on one normal class ({classes_text}; seed "
                f"{settings.seed}), three rows: one test image of every class (columns, the "
                "ground truth GT), Grad2VAE's online attention, and the offline attention of "
                "Liu et al. on the vanilla VAE trained on the same class. Images of the normal "
                "class are normal, all others anomalies. The paper's Fig. 5 shows 'the 2nd and "
                "4th classes', digits 1 and 3 (it counts classes from 1), after 600 epochs; ours "
                "come from the grid's runs of the report's protocol. "
                "Maps are min-max normalised per image (colour scale [0, 1]); images drawn per "
                "class with a seeded generator; weights loaded from the runs, nothing retrained."
            ),
        })
        file_curves = FIGURES_PER_DATASET[1].format(dataset=dataset)
        dataset_curves = [k for r in results for k in r["curves"]]
        plot_deletion_curves(dataset_curves, out / file_curves,
                             f"{dataset}: deletion curves (seed {settings.seed})", fractions)
        n_images = results[0]["rows"][0]["n_images"]
        figures.append({
            "file": file_curves,
            "title": f"Deletion curves — {dataset}: how fast each attention changes the anomaly "
            "score",
            "caption": (
                f"Mean absolute change of the model's main anomaly score (rows: the scoring "
                f"model) when the most-attended pixels are {fill_text}, for {steps_text} % of "
                f"the pixels, on {n_images} test images ({settings.per_class} per class, normal "
                "and anomalous). Dashed gray: the same pixels deleted in random order (mean of "
                f"{settings.random_repeats} seeded permutations). A curve above the dashed one "
                "means the attention points at pixels that matter to that model; the areas are "
                "in the faithfulness table."
            ),
        })
        for result in results:
            all_rows.extend(result["rows"])
            for entry in result["curves"]:
                for fraction, value, random_value in zip(
                    fractions, entry["curve"], entry["random_curve"]
                ):
                    curve_rows.append({
                        "dataset": dataset, "normal_class": entry["normal_class"],
                        "seed": settings.seed, "scorer": entry["scorer"],
                        "attention": entry["attention"], "fraction": fraction,
                        "mean_abs_score_change": float(value),
                        "random_mean_abs_score_change": float(random_value),
                    })
    table = pd.DataFrame(all_rows)
    with atomic_open(out / TABLES[0], "w", newline="") as handle:
        table.to_csv(handle, index=False, float_format="%.6g")
    with atomic_open(out / TABLES[1], "w", newline="") as handle:
        pd.DataFrame(curve_rows).to_csv(handle, index=False, float_format="%.6g")
    summary = {
        "figures": figures,
        "tables": [
            {
                "file": TABLES[0],
                "title": "Faithfulness of the attentions (deletion test), per dataset and class",
                "caption": (
                    "How much each attention map tells about what drives the model's anomaly "
                    f"score. Pixels are {fill_text} in order of decreasing attention ({steps_text}"
                    " % of the pixels; ties in random order) and the absolute change of the "
                    "scorer's main anomaly score is recorded; deletion_auc is the area under "
                    "that curve divided by the range of fractions (a mean score change, in the "
                    "scorer's units), random_auc the same for random pixel orders "
                    f"({settings.random_repeats} seeded permutations per image) on the same model "
                    "and images. faithfulness = deletion_auc / random_auc: 1 means no better than "
                    "random, higher means the attention finds the pixels that matter to the "
                    "model; faithfulness_ci_low / _high = 95 % bootstrap interval over the "
                    "images (1000 seeded resamples). win_rate = share of images whose attention "
                    "beats their random order; "
                    "faithfulness_normal / _anomalous restrict to normal / anomalous test images. "
                    "Rows with own_model = True score an attention with the model it explains "
                    "(the faithfulness proper); the others use the other model as a common "
                    "scorer. 'input intensity (control)' deletes the brightest pixels first: an "
                    "attention that does no better than this control explains no more than the "
                    f"image itself. {n_images_text(all_rows)} Seed {settings.seed}; weights "
                    "loaded from the runs, nothing retrained."
                ),
            }
        ],
    }
    write_json(out / SUMMARY, summary)
    missing = [n for n in names["figures"] + names["tables"] if not (out / n).is_file()]
    if missing:  # output_files() and this function must agree: the Snakemake rule relies on it
        raise RuntimeError(f"explain did not write {missing}")
    return summary


def n_images_text(rows: list[dict]) -> str:
    counts = sorted({(r["n_images"], r["n_normal"]) for r in rows})
    parts = [f"{n} test images ({k} normal)" for n, k in counts]
    return "Images per target: " + "; ".join(parts) + "." if parts else ""


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results-dir", type=Path, default=Path("results"),
                        help="folder holding runs/ (the trained runs; default: results)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="folder written by `grad2vae fetch` (default: data)")
    parser.add_argument("--out-dir", type=Path, default=Path("results/explain"),
                        help="output folder (default: results/explain)")
    parser.add_argument("--datasets", nargs="+", default=["mnist"], metavar="DATASET",
                        help="datasets (default: mnist)")
    parser.add_argument("--normal-classes", nargs="+", type=int, default=[8, 9, 1, 3],
                        metavar="C", help="normal classes of the runs to explain; the faithfulness "
                        "table covers all (default: 8 9 1 3, the classes of the paper's Figs. 3-5)")
    for number, paper in ((3, "8 (the paper's '9th class')"), (4, "9 (the paper's '10th class')"),
                          (5, "1 3 (the paper's '2nd and 4th classes')")):
        parser.add_argument(f"--fig{number}-classes", nargs="*", type=int, default=None, metavar="C",
                            help=f"the classes of --normal-classes that Fig. {number} shows, none "
                            f"if given without classes (default: all of them; the paper's: {paper})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the runs, and of the image "
                        "choice and sampling here (default: 0)")
    parser.add_argument("--units", nargs="+", type=int, default=None, metavar="U",
                        help="1-based latent units shown in Fig. 3 (default: 2 and d)")
    parser.add_argument("--fig4-images", type=int, default=8,
                        help="normal-class test images in Fig. 4 (default: 8)")
    parser.add_argument("--faithfulness-per-class", type=int, default=10, metavar="N",
                        help="test images per class in the deletion test (default: 10)")
    parser.add_argument("--fill", choices=("zero", "blur"), default="zero",
                        help="value of deleted pixels: 0 or a Gaussian blur (default: zero)")
    parser.add_argument("--max-fraction", type=float, default=0.5,
                        help="largest share of pixels deleted (default: 0.5)")
    parser.add_argument("--steps", type=int, default=10,
                        help="deletion steps after 0 %% (default: 10, i.e. 5 %% each)")
    parser.add_argument("--random-repeats", type=int, default=2,
                        help="random orders per image for the baseline (default: 2)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="auto",
                        help="auto | cpu | cuda | cuda:N (default: auto = CUDA when present)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    if not args.normal_classes:
        raise UserError("--normal-classes needs at least one class")
    bad = [c for c in args.normal_classes if not 0 <= c <= 9]
    if bad:
        raise UserError(f"--normal-classes {bad}: classes are 0..9")
    if len(set(args.normal_classes)) != len(args.normal_classes):
        raise UserError(f"--normal-classes {args.normal_classes} has duplicates")
    if args.fig5_classes == []:
        raise UserError("--fig5-classes needs at least one class (or leave it out: all of --normal-classes)")
    for number in (3, 4, 5):
        chosen = getattr(args, f"fig{number}_classes", None)
        outside = [c for c in chosen or [] if c not in args.normal_classes]
        if outside:
            raise UserError(
                f"--fig{number}-classes {outside} are not in --normal-classes {args.normal_classes}: "
                f"add them there (their runs are loaded) or leave them out of Fig. {number}"
            )
    try:
        from grad2vae.data import DATASETS

        unknown = [d for d in args.datasets if d not in DATASETS]
        if unknown:
            raise UserError(f"unknown dataset(s) {unknown}; known: {', '.join(sorted(DATASETS))}")
    except ImportError:
        pass
    if not 0 < args.max_fraction <= 1 or args.steps < 1:
        raise UserError("--max-fraction must be in (0, 1] and --steps at least 1")
    if args.fig4_images < 1 or args.faithfulness_per_class < 1 or args.random_repeats < 1:
        raise UserError("--fig4-images, --faithfulness-per-class and --random-repeats must be >= 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be >= 1")
    fractions = tuple(round(args.max_fraction * i / args.steps, 6) for i in range(args.steps + 1))
    return Settings(
        results_dir=args.results_dir, data_dir=args.data_dir, out_dir=args.out_dir,
        datasets=list(args.datasets), normal_classes=list(args.normal_classes), seed=args.seed,
        fig3_classes=args.fig3_classes, fig4_classes=args.fig4_classes, fig5_classes=args.fig5_classes,
        units=args.units, fig4_images=args.fig4_images, per_class=args.faithfulness_per_class,
        fill=args.fill, fractions=fractions, random_repeats=args.random_repeats,
        batch_size=args.batch_size, device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with devices.deterministic():  # the trainer's numerical settings (no TF32 on GPUs)
        summary = explain(settings)
    log.info("wrote %d figures and %d table(s) to %s in %.0f s", len(summary["figures"]),
             len(summary["tables"]), settings.out_dir, time.perf_counter() - started)
    return 0
