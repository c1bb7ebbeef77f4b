"""The figures of `grad2vae explain`: Fig. 3 (second derivatives), Figs. 4-5 (attention rows) and
the deletion curves."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from grad2vae.explain.attention_maps import OFFLINE_MODEL, ONLINE_MODEL
from grad2vae.figures.plotting import plt, save_png

# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------
ATTENTION_CMAP = "inferno"
#: resolution of the explain figures
FIGURE_DPI = 110


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
            handle,
            ax=axes[block * rows_per_unit : (block + 1) * rows_per_unit, 1:].ravel().tolist(),
            fraction=0.015,
            pad=0.01,
        )
        colorbar.ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9, y=1.0 + 0.12 / rows)
    save_png(fig, path, FIGURE_DPI)


def plot_attention_rows(
    rows: Sequence[tuple[str, Tensor]],
    path: Path,
    title: str,
    column_titles: Sequence[str] | None = None,
    row_groups: Sequence[str] | None = None,
) -> None:
    """A grid: each row a (label, (N, 1, H, W) tensor); the first row of each group is the input
    (gray), the others attention maps on the [0, 1] 'inferno' scale."""
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
    save_png(fig, path, FIGURE_DPI)


def plot_deletion_curves(curves, path: Path, title: str, fractions: Sequence[float]) -> None:
    """``curves``: list of dicts (normal_class, scorer, attention, curve, random_curve)."""
    classes = list(dict.fromkeys(c["normal_class"] for c in curves))  # configured order
    scorers = [s for s in (ONLINE_MODEL, OFFLINE_MODEL) if any(c["scorer"] == s for c in curves)]
    fig, axes = plt.subplots(
        len(scorers),
        len(classes),
        figsize=(3.2 * len(classes), 2.6 * len(scorers)),
        squeeze=False,
        sharex=True,
    )
    percent = 100 * np.asarray(fractions)
    styles = {}
    for r, scorer in enumerate(scorers):
        for c, normal_class in enumerate(classes):
            ax = axes[r, c]
            chosen = [
                k for k in curves if k["scorer"] == scorer and k["normal_class"] == normal_class
            ]
            for entry in chosen:
                label = entry["attention"]
                style = styles.setdefault(label, f"C{len(styles)}")
                ax.plot(
                    percent, entry["curve"], color=style, marker="o", ms=2.5, lw=1.2, label=label
                )
            if chosen:
                ax.plot(
                    percent,
                    chosen[0]["random_curve"],
                    color="gray",
                    ls="--",
                    lw=1.2,
                    label="random order",
                )
            ax.set_title(f"class {normal_class}, scored by {scorer}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(scorers) - 1:
                ax.set_xlabel("pixels deleted (%)", fontsize=8)
            if c == 0:
                ax.set_ylabel("mean |score change|", fontsize=8)
    handles, labels = [], []
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    columns = max(1, min(len(labels), 2 * len(classes), 5))
    rows = math.ceil(len(labels) / columns)
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=columns,
        fontsize=7,
        bbox_to_anchor=(0.5, -0.01 - 0.025 * (rows - 1)),
    )
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_png(fig, path, FIGURE_DPI)
