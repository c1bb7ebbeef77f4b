"""Draw the report's figures (PNG, seaborn) from the aggregated tables and the runs' scores.

Reads AGG (default RESULTS/aggregate, written by `grad2vae aggregate`) and, for the ROC curves,
RESULTS/runs/.../scores.csv.gz; writes into OUT (default RESULTS/figures):
  fig6_auc_vs_epoch.png  Fig. 6: test AUC against epoch over the first 50 epochs, one panel per
                         dataset, mean over normal classes and seeds with a +-1 sd band
  fig6_compute.png       Fig. 6 against cumulative training FLOPs and training seconds
  fig6_scores.png        Fig. 6 once per score (main, mse, bce_excess, *_zero_noise), with the
                         model-free entropy-only AUC
  anomaly_ratio.png      mean reconstruction score of anomalous over normal test images, per epoch
  per_class_auc.png      per normal class: our mean AUC +- std over seeds for every model, with
                         the paper's Table 1 values as hollow markers
  roc_class{C}.png       ROC curves of every model for normal class C (one seed), per dataset
  parameters.png         our parameter counts beside the paper's
  compute.png            seconds per epoch, and device-hours (GPU-hours on CUDA) per model
  cd_{dataset}.png       critical-difference diagram of each dataset (grad2vae.stats: average ranks
                         over the normal classes, bars = Wilcoxon-Holm not significant); where the
                         grid is too small for the tests, a figure saying why
  figures.json           the list of figures with title and caption, read by `grad2vae report`
A figure with no data to show is still written, saying so, so that a partial grid always gets a
complete set of files.

Example: grad2vae figures --results-dir results --roc-class 0
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from grad2vae import published as pub  # noqa: E402
from grad2vae.aggregate import statistics_payload  # noqa: E402
from grad2vae.atomic import write_json  # noqa: E402
from grad2vae.collect import real_runs  # noqa: E402
from grad2vae.errors import UserError  # noqa: E402
from grad2vae.labels import model_label, model_order  # noqa: E402
from grad2vae.layout import RUN_DIR, SCORES  # noqa: E402
from grad2vae.plotting import save_png  # noqa: E402
from grad2vae.tables import read_table  # noqa: E402

log = logging.getLogger(__name__)

PUBLISHED_MARKERS = {"grad2vae": "D", "inception_caenn": "s", "cae_ocsvm": "^", "deep_svdd": "v"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--results-dir", default="results", help="folder holding runs/ (default: results)"
    )
    parser.add_argument(
        "--aggregate-dir", help="output of `grad2vae aggregate` (default: RESULTS/aggregate)"
    )
    parser.add_argument("--out-dir", help="where to write the PNGs (default: RESULTS/figures)")
    parser.add_argument(
        "--roc-class",
        type=int,
        default=None,
        help="normal class of the ROC figure (default: the grid's first)",
    )
    parser.add_argument(
        "--fig6-epochs",
        type=int,
        default=50,
        help="epochs shown in Fig. 6 (default: 50, as the paper)",
    )
    parser.add_argument(
        "--dpi", type=int, default=110, help="resolution of the PNGs (default: 110)"
    )


# --------------------------------------------------------------------------------------------


def palette(models: list[str]) -> dict[str, Any]:
    # colorblind has 10 distinct colours; an ablation grid has more models
    colours = sns.color_palette(
        "colorblind" if len(models) <= 10 else "husl", n_colors=max(len(models), 4)
    )
    return {model: colours[i] for i, model in enumerate(models)}


def _no_data(ax: plt.Axes, text: str) -> None:
    ax.text(
        0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11, color="0.35"
    )
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# the figures


def fig6(
    history: pd.DataFrame, grid: dict, colours: dict, max_epoch: int, path: Path, dpi: int
) -> dict:
    datasets = grid["datasets"]
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(5.2 * len(datasets), 3.8), squeeze=False, sharey=True
    )
    data = history.copy()
    if not data.empty and "auc" in data:
        data = data[
            pd.to_numeric(data["auc"], errors="coerce").notna() & (data["epoch"] <= max_epoch)
        ]
        data = data.assign(
            auc_pct=100.0 * data["auc"].astype(float), label=data["model"].map(model_label)
        )
    last_epoch = 0
    for ax, dataset in zip(axes[0], datasets):
        part = data[data["dataset"] == dataset] if not data.empty and "dataset" in data else data
        if part.empty or "auc_pct" not in part:
            _no_data(ax, "no evaluated epochs yet")
        else:
            last_epoch = max(last_epoch, int(part["epoch"].max()))
            order = [m for m in grid["models"] if m in set(part["model"])]
            sns.lineplot(
                data=part,
                x="epoch",
                y="auc_pct",
                hue="label",
                hue_order=[model_label(m) for m in order],
                palette={model_label(m): colours[m] for m in order},
                errorbar="sd",
                marker="o" if part["epoch"].nunique() < 15 else None,
                ax=ax,
            )
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel("test AUC-ROC (%)")
            low, _high = ax.get_ylim()
            ax.set_ylim(max(low, 0.0), 100.5)
            ax.legend(title=None, fontsize=8, loc="lower right")
        ax.set_title(pub.dataset_label(dataset))
    fig.suptitle(
        f"AUC over the first {max_epoch} epochs (mean over classes and seeds, band = ±1 sd)",
        fontsize=11,
    )
    fig.tight_layout()
    save_png(fig, path, dpi)
    shown = f"epochs 1-{last_epoch}" if last_epoch else "no epochs"
    return {
        "file": path.name,
        "section": "fig6",
        "title": "Fig. 6 — AUC against epoch",
        "caption": (
            f"Test AUC-ROC of the main score after each evaluated epoch ({shown}; the paper shows the first "
            f"{max_epoch}), averaged over the normal classes and seeds of the grid; the band is ±1 standard "
            "deviation over those runs. Read from every run's history.tsv."
        ),
    }


def _score_columns(history: pd.DataFrame) -> list[str]:
    """The AUC columns of history.csv.gz worth a panel: main, then each diagnostic score."""
    skip = ("auc_reconstruction", "auc_oracle")
    columns = ["auc"] + [c for c in history.columns if c.startswith("auc_") and c not in skip]
    return [
        c
        for c in columns
        if c in history and pd.to_numeric(history[c], errors="coerce").notna().any()
    ]


def fig6_scores(history: pd.DataFrame, entropy: pd.DataFrame, grid: dict, colours: dict, max_epoch: int, path: Path,
                dpi: int) -> dict:  # fmt: skip
    """Fig. 6 once per score: rows = scores, columns = datasets; the entropy-only AUC (mean over
    the grid's classes) as a dashed line, the level a score reaches from the images' ink alone."""
    datasets = grid["datasets"]
    columns = _score_columns(history) if not history.empty else ["auc"]
    fig, axes = plt.subplots(len(columns), len(datasets), figsize=(5.0 * len(datasets), 2.9 * len(columns)),
                             squeeze=False, sharey=True, sharex=True)  # fmt: skip
    for row, column in enumerate(columns):
        score = "main" if column == "auc" else column.removeprefix("auc_")
        for ax, dataset in zip(axes[row], datasets):
            part = history[history["dataset"] == dataset] if not history.empty else history
            drawn = False
            for model in grid["models"]:
                rows = (
                    part[(part["model"] == model) & (part["epoch"] <= max_epoch)]
                    if not part.empty
                    else part
                )
                values = (
                    pd.to_numeric(rows[column], errors="coerce")
                    if column in rows
                    else pd.Series(dtype=float)
                )
                if values.notna().any():
                    line = (100.0 * values).groupby(rows["epoch"]).mean()
                    ax.plot(line.index, line.values, color=colours[model], marker="o" if len(line) < 15 else None, ms=3,
                            label=model_label(model))  # fmt: skip
                    drawn = True
            level = (
                entropy[entropy["dataset"] == dataset]["auc"]
                if not entropy.empty
                else pd.Series(dtype=float)
            )
            if len(level):
                ax.axhline(
                    100.0 * level.mean(), color="0.3", ls="--", lw=1, label="entropy only, H(x)"
                )
            if not drawn:
                _no_data(ax, f"no model reports {score}")
            ax.set_title(f"{pub.dataset_label(dataset)} — score: {score}", fontsize=9)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            if row == len(columns) - 1:
                ax.set_xlabel("epoch")
            ax.set_ylabel("test AUC-ROC (%)")
            if drawn and row == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi)
    return {
        "file": path.name,
        "section": "scores",
        "title": "Fig. 6 under every score",
        "caption": (
            "Test AUC-ROC against epoch (mean over the grid's normal classes and seeds) under each score the "
            "runs report: main (the model's own score), mse (squared error), bce_excess (BCE minus the binary "
            "entropy H(x) of the test image, i.e. KL(x || reconstruction)) and, for the variational models, the "
            "same with the latent noise set to zero (z = mu; for Grad2VAE this also switches its attention path "
            "off, its second derivatives being proportional to the noise). A model appears in a panel only if it "
            "reports that score. Dashed: the AUC of H(x) alone, no model (mean over the classes)."
        ),
    }


def anomaly_ratio(history: pd.DataFrame, grid: dict, colours: dict, path: Path, dpi: int) -> dict:
    """Per dataset: the mean reconstruction score of anomalous test images over that of normal
    ones, per epoch (mean of the runs' ratios). 1 = anomalies reconstructed as well as normal
    images: no separation left for a reconstruction score."""
    datasets = grid["datasets"]
    fig, axes = plt.subplots(
        1, len(datasets), figsize=(5.2 * len(datasets), 3.6), squeeze=False, sharey=True
    )
    wanted = {"mean_reconstruction_anomalous", "mean_reconstruction_normal"}
    for ax, dataset in zip(axes[0], datasets):
        part = (
            history[history["dataset"] == dataset]
            if not history.empty and wanted <= set(history)
            else pd.DataFrame()
        )
        drawn = False
        for model in grid["models"]:
            rows = part[part["model"] == model] if not part.empty else part
            if rows.empty:
                continue
            ratio = pd.to_numeric(rows["mean_reconstruction_anomalous"], errors="coerce") / pd.to_numeric(
                rows["mean_reconstruction_normal"], errors="coerce")  # fmt: skip
            line = ratio.groupby(rows["epoch"]).mean().dropna()
            if len(line):
                ax.plot(line.index, line.values, color=colours[model], marker="o" if len(line) < 15 else None, ms=3,
                        label=model_label(model))  # fmt: skip
                drawn = True
        if drawn:
            ax.axhline(1.0, color="0.5", lw=1, ls=":")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel("mean error: anomalous / normal")
            ax.legend(fontsize=7)
        else:
            _no_data(ax, "no score means in the histories")
        ax.set_title(pub.dataset_label(dataset))
    fig.tight_layout()
    save_png(fig, path, dpi)
    return {
        "file": path.name,
        "section": "scores",
        "title": "How well anomalies are reconstructed",
        "caption": (
            "Mean reconstruction score (each model's `reconstruction` score: BCE for the VAEs, MSE over the padded "
            "image for the CAEs) of the anomalous test images divided by that of the normal ones, after each "
            "evaluated epoch, averaged over the runs' ratios. Near 1, anomalies are reconstructed about as well as "
            "normal images and a reconstruction score cannot tell them apart."
        ),
    }


def fig6_compute(
    history: pd.DataFrame, runs: pd.DataFrame, grid: dict, colours: dict, path: Path, dpi: int
) -> dict:
    """Fig. 6 against compute: mean AUC over cumulative training FLOPs and training seconds."""
    from grad2vae.training_claims import compute_curves

    curves = compute_curves(history, runs)
    datasets = grid["datasets"]
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10.5, 3.5 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, (cost, label) in enumerate((("cumulative_flops", "cumulative training FLOPs"),
                                              ("cumulative_seconds", "cumulative training seconds"))):  # fmt: skip
            ax = axes[row][col]
            drawn = False
            for model in grid["models"]:
                curve = curves.get((dataset, model))
                if curve is None or curve[cost].notna().sum() == 0:
                    continue
                ax.plot(
                    curve[cost],
                    100.0 * curve["auc"],
                    color=colours[model],
                    marker="o",
                    ms=3,
                    label=model_label(model),
                )
                drawn = True
            if drawn:
                ax.set_xscale("log")
                ax.set_xlabel(label + " (log scale)")
                ax.set_ylabel("test AUC-ROC (%)")
                ax.legend(fontsize=7, loc="best")
            else:
                _no_data(ax, "no runs with training FLOPs")
            ax.set_title(f"{pub.dataset_label(dataset)} — AUC against {label}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path, dpi)
    return {
        "file": path.name,
        "section": "fig6",
        "title": "Fig. 6 against compute",
        "caption": (
            "The curves of Fig. 6 (mean test AUC over classes and seeds, main score) drawn against the training "
            "compute spent to reach each epoch instead of the epoch: left, FLOPs (FlopCounterMode over the forward "
            "and backward pass of one training batch, times the batches per epoch; metrics.json "
            "train_flops_per_epoch); right, measured training seconds (history.tsv train_seconds, on the devices "
            "the runs used). A curve further left reaches an AUC with less compute."
        ),
    }


def per_class(summary: pd.DataFrame, grid: dict, colours: dict, path: Path, dpi: int) -> dict:
    datasets = grid["datasets"]
    classes = grid["normal_classes"]
    models = grid["models"]
    fig, axes = plt.subplots(
        len(datasets),
        1,
        figsize=(max(6.5, 0.9 * len(classes) + 3.5) + 2.5, 3.6 * len(datasets)),
        squeeze=False,
    )
    width = 0.7
    columns = pub.published_columns()
    for ax, dataset in zip(axes[:, 0], datasets):
        x = np.arange(len(classes))
        step = width / max(len(models), 1)
        any_data = False
        for i, model in enumerate(models):
            part = summary[(summary["dataset"] == dataset) & (summary["model"] == model)].set_index(
                "normal_class"
            )
            part = part.reindex(classes)
            offset = -width / 2 + step * (i + 0.5)
            means = part["auc_pct_mean"].to_numpy(dtype=float)
            stds = np.nan_to_num(part["auc_pct_std"].to_numpy(dtype=float))
            if np.isfinite(means).any():
                any_data = True
            ax.errorbar(
                x + offset,
                means,
                yerr=stds,
                fmt="o",
                ms=5,
                capsize=3,
                color=colours[model],
                label=f"{model_label(model)} (ours)",
            )
        for key, column in columns.items():
            values = [pub.published_auc(dataset, key, c) for c in classes]
            colour = colours.get(column.get("ours"), "0.3")
            ax.scatter(
                x,
                [np.nan if v is None else v for v in values],
                marker=PUBLISHED_MARKERS.get(key, "x"),
                s=42,
                facecolors="none",
                edgecolors=[colour],
                linewidths=1.3,
                label=f"{column['label']} (published)",
                zorder=3,
            )
        ax.set_xticks(x, [pub.class_label(dataset, c) for c in classes])
        ax.set_xlabel("normal class")
        ax.set_ylabel("AUC-ROC (%)")
        title = pub.dataset_label(dataset)
        ax.set_title(title if any_data else f"{title} — no complete runs yet")
        # outside the axes: inside, it hid the low AUCs it is there to explain
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.85)
    fig.tight_layout()
    save_png(fig, path, dpi)
    return {
        "file": path.name,
        "section": "per_class",
        "title": "Per-class AUC, ours and published",
        "caption": (
            "Filled dots: our mean AUC-ROC over seeds for each normal class, error bars ±1 sample standard deviation "
            "(none with one seed). Hollow markers: the paper's Table 1 (Grad2VAE its own; CAE OCSVM, Deep SVDD and "
            f"Inception CAENN quoted from [25]), in the colour of the model of ours they compare with. {pub.load_published()['citation']['short']}."
        ),
    }


def _roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr, float(roc_auc_score(labels, scores))


def roc(
    results_dir: Path,
    runs: pd.DataFrame,
    grid: dict,
    colours: dict,
    normal_class: int,
    path: Path,
    dpi: int,
) -> dict:
    datasets = grid["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 4.4), squeeze=False)
    used_seeds: set[int] = set()
    for ax, dataset in zip(axes[0], datasets):
        drawn = 0
        for model in grid["models"]:
            part = (
                runs[
                    (runs["dataset"] == dataset)
                    & (runs["model"] == model)
                    & (runs["normal_class"] == normal_class)
                ]
                if not runs.empty
                else runs
            )
            if part.empty:
                continue
            seed = int(part["seed"].min())
            scores_path = (
                results_dir
                / RUN_DIR.format(dataset=dataset, model=model, normal_class=normal_class, seed=seed)
                / SCORES
            )
            try:
                with gzip.open(scores_path, "rt") as handle:
                    scores = pd.read_csv(handle)
                fpr, tpr, auc = _roc_curve(
                    scores["label"].to_numpy(), scores["score_main"].to_numpy()
                )
            except (OSError, ValueError, KeyError) as error:
                log.warning("no ROC for %s: %s", scores_path, error)
                continue
            used_seeds.add(seed)
            ax.plot(
                fpr,
                tpr,
                color=colours[model],
                lw=1.6,
                label=f"{model_label(model)} (AUC {100 * auc:.1f})",
            )
            drawn += 1
        if drawn:
            ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.01)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.legend(fontsize=8, loc="lower right")
        else:
            _no_data(ax, f"no complete run for class {normal_class}")
        ax.set_title(
            f"{pub.dataset_label(dataset)} — normal class {pub.class_label(dataset, normal_class)}"
        )
    fig.tight_layout()
    save_png(fig, path, dpi)
    seeds = ", ".join(str(s) for s in sorted(used_seeds)) or "none"
    return {
        "file": path.name,
        "section": "roc",
        "title": f"ROC curves, normal class {normal_class}",
        "caption": (
            f"ROC of every model's main score when class {normal_class} is normal (anomaly = positive), from the "
            f"scores.csv.gz of one run per model (the lowest seed present: {seeds}); the legend gives that run's AUC."
        ),
    }


def parameters(params: pd.DataFrame, grid: dict, path: Path, dpi: int) -> dict:
    rows = []
    for model in grid["models"]:
        for dataset in grid["datasets"]:
            part = (
                params[(params["model"] == model) & (params["dataset"] == dataset)]
                if not params.empty
                else params
            )
            if len(part) and pd.notna(part["parameters_millions"].iloc[0]):
                latent = part["latent_dim"].iloc[0]
                latent_text = f", d={int(latent)}" if pd.notna(latent) else ""
                rows.append(
                    {
                        "model": model_label(model),
                        "source": f"ours ({pub.dataset_label(dataset)}{latent_text})",
                        "millions": float(part["parameters_millions"].iloc[0]),
                    }
                )
        paper = pub.parameters_millions().get(model)
        if paper is not None:
            rows.append({"model": model_label(model), "source": "paper", "millions": paper})
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    if rows:
        data = pd.DataFrame(rows)
        ours = [s for s in dict.fromkeys(data["source"]) if s != "paper"]
        sources = ours + (["paper"] if "paper" in set(data["source"]) else [])
        colour_of = dict(zip(ours, sns.color_palette("Blues_d", n_colors=max(len(ours), 1))))
        colour_of["paper"] = (0.6, 0.6, 0.6)
        sns.barplot(
            data=data,
            x="model",
            y="millions",
            hue="source",
            hue_order=sources,
            palette=colour_of,
            ax=ax,
        )
        for container in ax.containers:
            ax.bar_label(container, fmt="%.3g", fontsize=7, padding=2)
        ax.set_ylabel("trainable parameters (millions)")
        ax.set_xlabel("")
        ax.legend(title=None, fontsize=8)
    else:
        _no_data(ax, "no parameter counts")
    ax.set_title("Parameters: ours beside the paper's")
    fig.tight_layout()
    save_png(fig, path, dpi)
    return {
        "file": path.name,
        "section": "parameters",
        "title": "Parameter counts",
        "caption": (
            "Trainable parameters of our models (from metrics.json, per dataset because the latent size differs: "
            "16 for MNIST, 32 for Fashion-MNIST) beside the counts stated in the paper (Sect. 4.2), which does not "
            "say which latent size its counts refer to."
        ),
    }


def compute(compute_table: pd.DataFrame, grid: dict, colours: dict, path: Path, dpi: int) -> dict:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if compute_table.empty:
        _no_data(axes[0], "no complete runs")
        _no_data(axes[1], "no complete runs")
    else:
        data = compute_table.assign(
            label=compute_table["model"].map(model_label),
            dataset_label=compute_table["dataset"].map(pub.dataset_label),
            hours_kind=np.where(
                compute_table["device_type"] == "cuda",
                "GPU-hours",
                "CPU-hours (" + compute_table["device_type"].astype(str) + ")",
            ),
        )
        order = [model_label(m) for m in grid["models"] if m in set(data["model"])]
        sns.barplot(
            data=data,
            x="label",
            y="mean_seconds_per_epoch",
            hue="dataset_label",
            order=order,
            ax=axes[0],
            hue_order=[pub.dataset_label(d) for d in grid["datasets"] if d in set(data["dataset"])],
            palette="Greens",
            errorbar=None,
        )
        axes[0].set_ylabel("seconds per epoch (mean over runs)")
        axes[0].set_xlabel("")
        axes[0].legend(title=None, fontsize=8)
        axes[0].set_title("Time per epoch")
        hours = data.groupby(["label", "hours_kind"], as_index=False)["wall_hours"].sum()
        sns.barplot(
            data=hours,
            x="label",
            y="wall_hours",
            hue="hours_kind",
            order=order,
            ax=axes[1],
            palette="Oranges",
            errorbar=None,
        )
        for container in axes[1].containers:
            axes[1].bar_label(container, fmt="%.3g", fontsize=7, padding=2)
        axes[1].set_ylabel("device-hours (sum of wall time)")
        axes[1].set_xlabel("")
        axes[1].legend(title=None, fontsize=8)
        axes[1].set_title("Total training time")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi)
    return {
        "file": path.name,
        "section": "compute",
        "title": "Wall time and GPU-hours",
        "caption": (
            "Left: mean wall seconds per training epoch (incl. evaluation) per model and dataset. Right: total wall "
            "time of all runs per model, counted as GPU-hours for runs on CUDA and CPU-hours otherwise. From "
            "metrics.json (wall_seconds, seconds_per_epoch, device)."
        ),
    }


def critical_difference(runs: pd.DataFrame, grid: dict, out_dir: Path, dpi: int) -> list[dict]:
    """cd_{dataset}.png for every dataset of the grid (the same analysis as stats.json)."""
    analysis = statistics_payload(runs, grid, figure_dir=out_dir)
    entries = []
    for dataset in grid["datasets"]:
        section = analysis["datasets"].get(dataset, {})
        path = out_dir / f"cd_{dataset}.png"
        if "cd_diagram" not in section:
            reason = (
                section.get("cd_diagram_error")
                or " ".join(section.get("skipped", []))
                or "no comparison"
            )
            fig, ax = plt.subplots(figsize=(7.5, 1.6))
            _no_data(ax, "No critical-difference diagram:\n" + "\n".join(_wrap(reason, 90)))
            ax.set_title(pub.dataset_label(dataset), fontsize=9)
            save_png(fig, path, dpi)
            caption = f"Not drawn: {reason}"
        else:
            ours = section["ours"]
            caption = (
                f"Average rank of each method over the {len(ours['classes'])} normal classes with a run of every "
                "method (AUC averaged over seeds first; 1 = best). A bar joins methods whose pairwise two-sided "
                f"Wilcoxon signed-rank test, Holm-corrected, is not significant at alpha = {ours['alpha']:g}. The CAE "
                "OCSVM oracle is left out (it selects on the test labels)."
            )
        entries.append(
            {
                "file": path.name,
                "section": "stats",
                "dataset": dataset,
                "title": f"Critical-difference diagram — {pub.dataset_label(dataset)}",
                "caption": caption,
            }
        )
    return entries


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


# --------------------------------------------------------------------------------------------


def draw_all(
    results_dir: Path,
    agg_dir: Path,
    out_dir: Path,
    roc_class: int | None,
    fig6_epochs: int,
    dpi: int,
) -> list[dict]:
    payload_path = agg_dir / "aggregate.json"
    if not payload_path.is_file():
        raise UserError(f"{payload_path} not found; run `grad2vae aggregate` first")
    payload = json.loads(payload_path.read_text(encoding="utf-8"))
    grid = payload["grid"]
    grid["models"] = model_order(grid["models"])
    runs = read_table(agg_dir / "runs.csv")
    summary = read_table(agg_dir / "summary.csv")
    params = read_table(agg_dir / "parameters.csv")
    compute_table = read_table(agg_dir / "compute.csv")
    entropy = (
        read_table(agg_dir / "entropy_only.csv")
        if (agg_dir / "entropy_only.csv").is_file()
        else pd.DataFrame()
    )
    history_path = agg_dir / "history.csv.gz"
    history = (
        pd.read_csv(history_path)
        if history_path.is_file() and history_path.stat().st_size > 30
        else pd.DataFrame()
    )
    if roc_class is None or roc_class not in grid["normal_classes"]:
        if roc_class is not None:
            log.warning(
                "ROC class %s is not in the grid; using %s", roc_class, grid["normal_classes"][0]
            )
        roc_class = int(grid["normal_classes"][0])

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    colours = palette(grid["models"])
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [
        fig6(history, grid, colours, fig6_epochs, out_dir / "fig6_auc_vs_epoch.png", dpi),
        fig6_compute(history, real_runs(runs), grid, colours, out_dir / "fig6_compute.png", dpi),
        fig6_scores(history, entropy, grid, colours, fig6_epochs, out_dir / "fig6_scores.png", dpi),
        anomaly_ratio(history, grid, colours, out_dir / "anomaly_ratio.png", dpi),
        per_class(summary, grid, colours, out_dir / "per_class_auc.png", dpi),
        roc(
            results_dir, runs, grid, colours, roc_class, out_dir / f"roc_class{roc_class}.png", dpi
        ),
        parameters(params, grid, out_dir / "parameters.png", dpi),
        compute(compute_table, grid, colours, out_dir / "compute.png", dpi),
    ]
    entries += critical_difference(runs, grid, out_dir, dpi)
    write_json(out_dir / "figures.json", {"figures": entries})
    return entries


def run(args: argparse.Namespace) -> int:
    results_dir = Path(args.results_dir)
    agg_dir = Path(args.aggregate_dir) if args.aggregate_dir else results_dir / "aggregate"
    out_dir = Path(args.out_dir) if args.out_dir else results_dir / "figures"
    if args.fig6_epochs < 1:
        raise UserError("--fig6-epochs must be at least 1")
    entries = draw_all(results_dir, agg_dir, out_dir, args.roc_class, args.fig6_epochs, args.dpi)
    log.info("%d figures -> %s", len(entries), out_dir)
    return 0
