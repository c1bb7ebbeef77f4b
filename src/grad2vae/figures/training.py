"""The figures of how training proceeds, from the runs' histories: Fig. 6 (AUC against epoch),
Fig. 6 under every score and against compute, and the anomalous-over-normal reconstruction ratio.
Each function draws one PNG and returns its entry of figures.json (``captions.report_entry``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
import pandas as pd
import seaborn as sns

from grad2vae import published as pub
from grad2vae.analysis.labels import model_label
from grad2vae.captions import report_entry
from grad2vae.figures.plotting import no_data, plt, save_png
from grad2vae.score_columns import column_score, score_columns


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
            no_data(ax, "no evaluated epochs yet")
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
    return report_entry(
        path,
        "fig6_auc_vs_epoch.png",
        "Fig. 6 — AUC against epoch",
        f"Shown: {shown} (at most the first {max_epoch}).",
        section="fig6",
    )


def epoch_line(ax: plt.Axes, line: pd.Series, colour, label: str) -> None:
    """One model's curve over epochs (``line``: value by epoch); markers while epochs are few."""
    marker = "o" if len(line) < 15 else None
    ax.plot(line.index, line.values, color=colour, marker=marker, ms=3, label=label)


def _score_columns(history: pd.DataFrame) -> list[str]:
    """The AUC columns of history.csv.gz worth a panel: main, then each diagnostic score."""
    columns = ["auc"] + [c for c in score_columns(history.columns) if c != "auc"]
    return [
        c
        for c in columns
        if c in history and pd.to_numeric(history[c], errors="coerce").notna().any()
    ]


def fig6_scores(
    history: pd.DataFrame,
    entropy: pd.DataFrame,
    grid: dict,
    colours: dict,
    max_epoch: int,
    path: Path,
    dpi: int,
) -> dict:
    """Fig. 6 once per score: rows = scores, columns = datasets; the entropy-only AUC (mean over
    the grid's classes) as a dashed line, the level a score reaches from the images' ink alone."""
    datasets = grid["datasets"]
    columns = _score_columns(history) if not history.empty else ["auc"]
    fig, axes = plt.subplots(
        len(columns),
        len(datasets),
        figsize=(5.0 * len(datasets), 2.9 * len(columns)),
        squeeze=False,
        sharey=True,
        sharex=True,
    )
    for row, column in enumerate(columns):
        score = column_score(column)
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
                    epoch_line(ax, line, colours[model], model_label(model))
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
                no_data(ax, f"no model reports {score}")
            ax.set_title(f"{pub.dataset_label(dataset)} — score: {score}", fontsize=9)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            if row == len(columns) - 1:
                ax.set_xlabel("epoch")
            ax.set_ylabel("test AUC-ROC (%)")
            if drawn and row == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_png(fig, path, dpi)
    return report_entry(path, "fig6_scores.png", "Fig. 6 under every score", section="scores")


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
            ratio = pd.to_numeric(
                rows["mean_reconstruction_anomalous"], errors="coerce"
            ) / pd.to_numeric(rows["mean_reconstruction_normal"], errors="coerce")
            line = ratio.groupby(rows["epoch"]).mean().dropna()
            if len(line):
                epoch_line(ax, line, colours[model], model_label(model))
                drawn = True
        if drawn:
            ax.axhline(1.0, color="0.5", lw=1, ls=":")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel("mean error: anomalous / normal")
            ax.legend(fontsize=7)
        else:
            no_data(ax, "no score means in the histories")
        ax.set_title(pub.dataset_label(dataset))
    fig.tight_layout()
    save_png(fig, path, dpi)
    return report_entry(
        path, "anomaly_ratio.png", "How well anomalies are reconstructed", section="scores"
    )


def fig6_compute(
    history: pd.DataFrame, runs: pd.DataFrame, grid: dict, colours: dict, path: Path, dpi: int
) -> dict:
    """Fig. 6 against compute: mean AUC over cumulative training FLOPs and training seconds."""
    from grad2vae.analysis.training_claims import compute_curves

    curves = compute_curves(history, runs)
    datasets = grid["datasets"]
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10.5, 3.5 * len(datasets)), squeeze=False)
    for row, dataset in enumerate(datasets):
        for col, (cost, label) in enumerate(
            (
                ("cumulative_flops", "cumulative training FLOPs"),
                ("cumulative_seconds", "cumulative training seconds"),
            )
        ):
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
                no_data(ax, "no runs with training FLOPs")
            ax.set_title(f"{pub.dataset_label(dataset)} — AUC against {label}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path, dpi)
    return report_entry(path, "fig6_compute.png", "Fig. 6 against compute", section="fig6")
