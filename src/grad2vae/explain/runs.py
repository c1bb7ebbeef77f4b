"""From trained runs to what `grad2vae explain` writes: per (dataset, normal class) the attention
maps of both models, Figs. 3-5 and the faithfulness rows; then the tables and summary.json."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from grad2vae import layout
from grad2vae.atomic import atomic_open, write_json
from grad2vae.captions import report_entry
from grad2vae.errors import UserError
from grad2vae.explain.attention_maps import (
    DEFAULT_FRACTIONS,
    OFFLINE_MODEL,
    ONLINE_MODEL,
    RandomBaseline,
    blur,
    intensity_attention,
    model_scorer,
    normalise_per_image,
    offline_attention,
    online_attention,
)
from grad2vae.explain.figures import (
    plot_attention_rows,
    plot_deletion_curves,
    plot_second_derivatives,
)
from grad2vae.training import devices

log = logging.getLogger(__name__)


#: the model whose attention is learned ("online") and the model explained offline (paper's Fig. 4)


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
    return (
        list(normal_classes) if chosen is None else [c for c in normal_classes if c in set(chosen)]
    )


def output_files(
    datasets: Sequence[str],
    normal_classes: Sequence[int],
    fig3_classes: Sequence[int] | None = None,
    fig4_classes: Sequence[int] | None = None,
) -> dict[str, list[str]]:
    """File names (relative to the output folder) that `explain` writes, in summary.json order:
    Fig. 3 for ``fig3_classes``, Fig. 4 for ``fig4_classes`` (None: every target class)."""
    figures = []
    per_figure = (
        figure_classes(normal_classes, fig3_classes),
        figure_classes(normal_classes, fig4_classes),
    )
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
    from grad2vae.training.lifecycle import load_trained_model

    model = load_trained_model(path)
    return model.to(device).eval()


def class_names(dataset: str) -> list[str]:
    try:
        from grad2vae.data.datasets import DATASETS

        entry = DATASETS[dataset]
        names = (
            entry.get("classes") if isinstance(entry, dict) else getattr(entry, "classes", entry)
        )
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
    from grad2vae.data.datasets import load_split

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
    rows, curves = deletion_test(settings, dataset, normal_class, models, xf, labels, maps, device)
    return {
        "dataset": dataset,
        "normal_class": normal_class,
        "fig3": {"second": second, "image": x3[0], "units": units, "index": int(normal_index[0])},
        "fig4": {"x": x4, "maps": maps4, "index": fig4_index.tolist()},
        "fig5": {"x": x5, "maps": maps5, "classes": classes5},
        "rows": rows,
        "curves": curves,
    }


def deletion_test(
    settings: Settings,
    dataset: str,
    normal_class: int,
    models: dict[str, nn.Module],
    xf: Tensor,
    labels: Tensor,
    maps: dict[str, Tensor],
    device: torch.device,
) -> tuple[list[dict], list[dict]]:
    """(faithfulness rows, deletion curves) of every attention map in ``maps`` of the images
    ``xf`` (``labels``: True = anomalous), scored by each explained model against the random
    baseline (``attention_maps.RandomBaseline``)."""
    seed = settings.seed
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
                    if explained != "-"
                    else ATTENTION_LABELS[kind],
                    "curve": result.curve.numpy(),
                    "random_curve": result.random_curve.numpy(),
                }
            )
        log.info(
            "%s class %s: deletion curves scored by %s in %.1f s",
            dataset,
            normal_class,
            scorer,
            time.perf_counter() - started,
        )
    return rows, curves


def _run_path(settings: Settings, dataset: str, model: str, normal_class: int) -> str:
    return str(run_dir(settings.results_dir, dataset, model, normal_class, settings.seed))


def deletion_texts(settings: Settings) -> tuple[str, str]:
    """How the deletion test deletes pixels, and its fractions in percent, for the captions."""
    fill_text = (
        "set to 0 (background, 'no ink')"
        if settings.fill == "zero"
        else "replaced by a Gaussian blur (sigma 2 px) of the image"
    )
    return fill_text, ", ".join(f"{100 * f:g}" for f in settings.fractions)


def draw_dataset(settings: Settings, dataset: str, results: list[dict]) -> list[dict]:
    """Draw one dataset's figures (Fig. 3 and 4 per normal class, Fig. 5, the deletion curves)
    into ``settings.out_dir`` from its targets' ``results``; their report entries."""
    out = Path(settings.out_dir)
    fractions = settings.fractions
    fill_text, steps_text = deletion_texts(settings)
    fig3_classes = figure_classes(settings.normal_classes, settings.fig3_classes)
    fig4_classes = figure_classes(settings.normal_classes, settings.fig4_classes)
    fig5_classes = figure_classes(settings.normal_classes, settings.fig5_classes)
    figures = []
    label_names = class_names(dataset)
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
                fig3["second"],
                fig3["image"],
                fig3["units"],
                out / file3,
                f"{dataset}, normal class {c} ({name}): second derivatives of {units_text} "
                f"w.r.t. L_e1",
            )
            figures.append(
                report_entry(
                    file3,
                    FIGURES_PER_CLASS[0],
                    f"Fig. 3 analogue — {dataset}, class {c} ({name}): unfolded "
                    f"second-derivative tensors of {units_text}",
                    f"Units {units_text} of d = {d}; {channels} channels; test image "
                    f"#{fig3['index']} of class {c}; model {online_run}; latent code sampled "
                    f"with seed {settings.seed}.",
                )
            )
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
            figures.append(
                report_entry(
                    file4,
                    FIGURES_PER_CLASS[1],
                    f"Fig. 4 analogue — {dataset}, class {c} ({name}): online vs "
                    "offline attention on normal-class test images",
                    f"{len(fig4['index'])} test images of class {c}; models {online_run} "
                    f"and {offline_run}.",
                )
            )
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
    plot_attention_rows(
        rows5,
        out / file5,
        f"{dataset}: one test image of every class, per trained normal class",
        column_titles=columns5,
    )
    classes_text = ", ".join(str(r["normal_class"]) for r in shown5)
    figures.append(
        report_entry(
            file5,
            FIGURES_PER_DATASET[0],
            f"Fig. 5 analogue — {dataset}: attention on test images of every class "
            f"(models trained on class {classes_text})",
            f"Models trained on class {classes_text}; seed {settings.seed}.",
        )
    )
    file_curves = FIGURES_PER_DATASET[1].format(dataset=dataset)
    dataset_curves = [k for r in results for k in r["curves"]]
    plot_deletion_curves(
        dataset_curves,
        out / file_curves,
        f"{dataset}: deletion curves (seed {settings.seed})",
        fractions,
    )
    n_images = results[0]["rows"][0]["n_images"]
    figures.append(
        report_entry(
            file_curves,
            FIGURES_PER_DATASET[1],
            f"Deletion curves — {dataset}: how fast each attention changes the anomaly score",
            f"Deleted pixels are {fill_text}; fractions {steps_text} %; {n_images} test "
            f"images ({settings.per_class} per class); random order: mean of "
            f"{settings.random_repeats} seeded permutations.",
        )
    )
    return figures


def explain(settings: Settings) -> dict:
    """Compute every target, write figures, tables and summary.json; return the summary."""
    import pandas as pd

    device = devices.resolve_device(settings.device)
    out = Path(settings.out_dir)
    names = output_files(
        settings.datasets, settings.normal_classes, settings.fig3_classes, settings.fig4_classes
    )
    figures, all_rows, curve_rows = [], [], []
    fractions = settings.fractions
    fill_text, steps_text = deletion_texts(settings)
    for dataset in settings.datasets:
        results = [explain_target(settings, dataset, c, device) for c in settings.normal_classes]
        figures += draw_dataset(settings, dataset, results)
        for result in results:
            all_rows.extend(result["rows"])
            for entry in result["curves"]:
                for fraction, value, random_value in zip(
                    fractions, entry["curve"], entry["random_curve"]
                ):
                    curve_rows.append(
                        {
                            "dataset": dataset,
                            "normal_class": entry["normal_class"],
                            "seed": settings.seed,
                            "scorer": entry["scorer"],
                            "attention": entry["attention"],
                            "fraction": fraction,
                            "mean_abs_score_change": float(value),
                            "random_mean_abs_score_change": float(random_value),
                        }
                    )
    table = pd.DataFrame(all_rows)
    with atomic_open(out / TABLES[0], "w", newline="") as handle:
        table.to_csv(handle, index=False, float_format="%.6g")
    with atomic_open(out / TABLES[1], "w", newline="") as handle:
        pd.DataFrame(curve_rows).to_csv(handle, index=False, float_format="%.6g")
    summary = {
        "figures": figures,
        "tables": [
            report_entry(
                TABLES[0],
                TABLES[0],
                "Faithfulness of the attentions (deletion test), per dataset and class",
                f"Deleted pixels are {fill_text}; fractions {steps_text} %; random orders: "
                f"{settings.random_repeats} seeded permutations per image. "
                f"{n_images_text(all_rows)} Seed {settings.seed}.",
            )
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
