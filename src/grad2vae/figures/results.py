"""The figures of the finished runs: per-class AUC beside the published Table 1, ROC curves,
parameter counts, compute, and the critical-difference diagram of each dataset. Each function
draws one PNG and returns its entry of figures.json (``captions.report_entry``)."""

from __future__ import annotations

import gzip
import logging
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns

from grad2vae import published as pub
from grad2vae.analysis.labels import model_label
from grad2vae.captions import report_entry
from grad2vae.figures.plotting import no_data, plt, save_png
from grad2vae.layout import CD_FIGURE, ROC_FIGURE, RUN_DIR, SCORES, TABLE1_METRIC_FIGURE
from grad2vae.score_columns import PIXEL, score_column

log = logging.getLogger(__name__)

PUBLISHED_MARKERS = {"grad2vae": "D", "inception_caenn": "s", "cae_ocsvm": "^", "deep_svdd": "v"}


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
    citation = pub.load_published()["citation"]["short"]
    return report_entry(
        path,
        "per_class_auc.png",
        "Per-class AUC, ours and published",
        f"Published: {citation}.",
        section="per_class",
    )


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
            except (OSError, EOFError, ValueError, KeyError) as error:
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
            no_data(ax, f"no complete run for class {normal_class}")
        ax.set_title(
            f"{pub.dataset_label(dataset)} — normal class {pub.class_label(dataset, normal_class)}"
        )
    fig.tight_layout()
    save_png(fig, path, dpi)
    seeds = ", ".join(str(s) for s in sorted(used_seeds)) or "none"
    return report_entry(
        path,
        ROC_FIGURE,
        f"ROC curves, normal class {normal_class}",
        f"Normal class {normal_class}; the seeds of the runs shown: {seeds}.",
        section="roc",
    )


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
        no_data(ax, "no parameter counts")
    ax.set_title("Parameters: ours beside the paper's")
    fig.tight_layout()
    save_png(fig, path, dpi)
    return report_entry(path, "parameters.png", "Parameter counts", section="parameters")


def compute(compute_table: pd.DataFrame, grid: dict, colours: dict, path: Path, dpi: int) -> dict:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    if compute_table.empty:
        no_data(axes[0], "no complete runs")
        no_data(axes[1], "no complete runs")
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
        hue_order = [pub.dataset_label(d) for d in grid["datasets"] if d in set(data["dataset"])]
        _bars(axes[0], data, "mean_seconds_per_epoch", "dataset_label", order, "Greens", hue_order)
        axes[0].set_ylabel("seconds per epoch (mean over runs)")
        axes[0].set_title("Time per epoch")
        hours = data.groupby(["label", "hours_kind"], as_index=False)["wall_hours"].sum()
        _bars(axes[1], hours, "wall_hours", "hours_kind", order, "Oranges")
        for container in axes[1].containers:
            axes[1].bar_label(container, fmt="%.3g", fontsize=7, padding=2)
        axes[1].set_ylabel("device-hours (sum of wall time)")
        axes[1].set_title("Total training time")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi)
    return report_entry(path, "compute.png", "Wall time and GPU-hours", section="compute")


def _bars(ax, data, y: str, hue: str, order: list, colours: str, hue_order=None) -> None:
    """Bars of ``y`` per model label, grouped by ``hue``, without error bars."""
    sns.barplot(
        data=data,
        x="label",
        y=y,
        hue=hue,
        order=order,
        hue_order=hue_order,
        ax=ax,
        palette=colours,
        errorbar=None,
    )
    ax.set_xlabel("")
    ax.legend(title=None, fontsize=8)


def critical_difference(statistics: dict, grid: dict, out_dir: Path, dpi: int) -> list[dict]:
    """cd_{dataset}.png for every dataset of the grid, drawn from stats.json (``statistics``):
    each method at its average rank, crossbars joining methods whose Holm-corrected Wilcoxon
    p-value is > alpha; where the tests were not run, a panel saying why."""
    entries = []
    for dataset in grid["datasets"]:
        section = statistics["datasets"].get(dataset, {})
        path = out_dir / CD_FIGURE.format(dataset=dataset)
        ours = section.get("ours")
        reason = None
        if ours is not None:
            try:
                _cd_diagram(ours, statistics.get("labels") or {}, path, dpi)
            except ImportError as error:  # pragma: no cover - depends on the environment
                reason = str(error)
        else:
            reason = " ".join(section.get("skipped", [])) or "no comparison"
        if reason is not None:
            fig, ax = plt.subplots(figsize=(7.5, 1.6))
            wrapped = "\n".join(textwrap.wrap(reason, 90) or [""])
            no_data(ax, "No critical-difference diagram:\n" + wrapped)
            ax.set_title(pub.dataset_label(dataset), fontsize=9)
            save_png(fig, path, dpi)
            details = f"Not drawn: {reason}"
        else:
            details = (
                f"Normal classes with a run of every method: {len(ours['classes'])}; "
                f"significance level alpha = {ours['alpha']:g}."
            )
        entries.append(
            report_entry(
                path,
                CD_FIGURE,
                f"Critical-difference diagram — {pub.dataset_label(dataset)}",
                details,
                section="stats",
                dataset=dataset,
            )
        )
    return entries


def _cd_diagram(comparison: dict, labels: dict, path: Path, dpi: int) -> None:
    """One comparison of stats.json (``stats.Comparison.to_dict``) as a critical-difference
    diagram (scikit-posthocs draws it)."""
    try:
        import scikit_posthocs as sp
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the critical-difference diagram needs scikit-posthocs (pinned in pyproject.toml); "
            "install the project's environment"
        ) from error
    methods = comparison["methods"]
    names = [labels.get(m, m) for m in methods]
    ranks = pd.Series([comparison["average_ranks"][m] for m in methods], index=names)
    holm = pd.DataFrame(
        [[comparison["holm_p"][a][b] for b in methods] for a in methods], index=names, columns=names
    )
    friedman_p = comparison["friedman"]["p"]
    friedman_text = (
        f"Friedman p = {friedman_p:.3g}"
        if friedman_p is not None and np.isfinite(friedman_p)
        else "Friedman: n/a"
    )
    fig, ax = plt.subplots(figsize=(7.5, 1.0 + 0.32 * len(ranks)))
    sp.critical_difference_diagram(ranks, holm, alpha=comparison["alpha"], ax=ax)
    ax.set_title(
        f"{comparison['name']}: average rank over {len(comparison['classes'])} classes "
        f"(1 = best); bars: Wilcoxon-Holm p > {comparison['alpha']:g}; {friedman_text}",
        fontsize=8,
    )
    fig.tight_layout()
    save_png(fig, path, dpi)


def table1_metric_figures(summary: pd.DataFrame, grid: dict, out_dir: Path, dpi: int) -> list:
    """Per dataset (``TABLE1_METRIC_FIGURE``): the printed Grad2VAE column beside our Grad2VAE
    runs' per-image AUC (main score) and pixel-level AUCs, class by class (claim
    table1_metric)."""
    lines = {  # summary column -> (label, colour, marker)
        "auc": ("ours: per-image AUC (main score)", "#0173b2", "o"),
        score_column(PIXEL): ("ours: pixel AUC, reconstruction", "#de8f05", "s"),
        score_column(f"{PIXEL}_attention"): ("ours: pixel AUC, attention image", "#029e73", "^"),
    }
    entries = []
    for dataset in grid["datasets"]:
        path = out_dir / TABLE1_METRIC_FIGURE.format(dataset=dataset)
        classes = list(range(pub.N_CLASSES))
        labels = [pub.class_label(dataset, c) for c in classes]
        fig, ax = plt.subplots(figsize=(7.5, 3.8))
        printed = [pub.published_auc(dataset, "grad2vae", c) for c in classes]
        ax.plot(classes, printed, color="black", marker="D", ms=4, lw=1.6,
                label="published: the paper's Grad2VAE column")  # fmt: skip
        mine = (
            summary[(summary["dataset"] == dataset) & (summary["model"] == "grad2vae")]
            if not summary.empty
            else summary
        )
        drawn = []
        for column, (label, colour, marker) in lines.items():
            mean = f"{column}_pct_mean"
            if mine.empty or mean not in mine or mine[mean].isna().all():
                continue
            values = mine.set_index("normal_class")[mean].reindex(classes)
            ax.plot(classes, values.to_numpy(), color=colour, marker=marker, ms=4, lw=1.2,
                    label=label)  # fmt: skip
            drawn.append(label)
        rotated = any(len(label) > 2 for label in labels)  # Fashion-MNIST's names
        ax.set_xticks(classes, labels, rotation=30 if rotated else 0)
        ax.set_ylabel("AUC (%)")
        ax.set_xlabel("normal class")
        ax.set_title(f"{pub.dataset_label(dataset)}: which quantity is Table 1's Grad2VAE column?")
        # below the axes: a class far below the others must not hide behind it
        below = -0.36 if rotated else -0.22
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, below), ncol=2)
        fig.tight_layout()
        save_png(fig, path, dpi)
        shown = (
            sorted(int(c) for c, v in zip(mine["normal_class"], mine["auc_pct_mean"]) if v == v)
            if not mine.empty and "auc_pct_mean" in mine
            else []
        )  # the classes with a mean (NaN != NaN)
        entries.append(
            report_entry(
                path,
                TABLE1_METRIC_FIGURE,
                f"Table 1's metric, {pub.dataset_label(dataset)}",
                f"{pub.dataset_label(dataset)}; our Grad2VAE runs on classes "
                f"{', '.join(map(str, shown)) or 'none'}: "
                + ("; ".join(drawn) if drawn else "no run of ours to compare"),
                section="table1_metric",
                dataset=dataset,
            )
        )
    return entries
