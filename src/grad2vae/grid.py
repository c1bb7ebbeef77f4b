"""The grid of runs, computed once: which models train, which runs a configuration expects, the
ROC figure's class and the runs the attention figures explain. Torch-free: the workflow
(``workflow/rules/common.smk``) and the analysis (``grad2vae.analysis.collect``) both import it,
so the jobs Snakemake plans and the runs the aggregation expects are the same by construction.

``config`` is the workflow's configuration after the schema filled its defaults (config.yaml,
``workflow/schemas/config.schema.yaml``), or the JSON the ``workflow_config`` rule writes of it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

#: the models whose attention the explain stage compares (Figs. 3-5): Grad2VAE's online
#: attention and the vanilla VAE's offline Grad-CAM (paper Sect. 4.3)
EXPLAIN_MODELS = ("grad2vae", "vae")


def trained_models(config: Mapping[str, Any]) -> list[str]:
    """``models``, then ``extra_models`` (presets/table1-complete.yaml: Table 1's other two
    columns), then every variant of ``variants`` (presets/ablation.yaml): a variant is a model
    name like any other from here on."""
    return list(
        dict.fromkeys(
            list(config.get("models") or [])
            + list(config.get("extra_models") or [])
            + list(config.get("variants") or {})
        )
    )


def model_classes(config: Mapping[str, Any]) -> dict[str, list[int]]:
    """variant -> its normal classes, for the variants trained on a subset of the grid's
    classes (``variants.*.normal_classes``); every other model trains on all of them."""
    return {
        name: [int(c) for c in variant["normal_classes"]]
        for name, variant in (config.get("variants") or {}).items()
        if isinstance(variant, Mapping) and variant.get("normal_classes")
    }


def run_keys(grid: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every expected run of ``grid`` (``datasets``, ``normal_classes``, ``models``, ``seeds``,
    optionally ``model_classes``) as {dataset, normal_class, model, seed}, in that nesting."""
    only = grid.get("model_classes") or {}
    for dataset in grid["datasets"]:
        for normal_class in grid["normal_classes"]:
            for model in grid["models"]:
                if normal_class not in only.get(model, [normal_class]):
                    continue  # a variant on a subset of the classes
                for seed in grid["seeds"]:
                    yield {"dataset": dataset, "normal_class": normal_class, "model": model,
                           "seed": seed}  # fmt: skip


def roc_class(requested: int | None, normal_classes: list[int]) -> int:
    """The normal class the ROC figure draws: ``requested`` when the grid has it, else the
    grid's first class."""
    if requested is not None and requested in normal_classes:
        return int(requested)
    return int(normal_classes[0])


def explain_targets(
    config: Mapping[str, Any],
    run_exists: Callable[[str, str, int], bool] | None = None,
) -> tuple[list[str], list[int], list[str]]:
    """(datasets, normal classes, what was skipped and why) that the explain stage draws: the
    configured ones (``explain.datasets``, ``explain.normal_classes``) that the grid trains for
    both ``EXPLAIN_MODELS`` and ``explain.seed``. ``run_exists(dataset, model, normal_class)``
    (allow_partial) keeps only the classes whose runs all exist now. Nothing when disabled."""
    wanted = config["explain"]
    if not wanted["enabled"]:
        return [], [], []
    skipped = []
    datasets = [d for d in wanted["datasets"] if d in config["datasets"]]
    skipped += [f"dataset {d}" for d in wanted["datasets"] if d not in datasets]
    classes = [c for c in wanted["normal_classes"] if c in config["normal_classes"]]
    skipped += [f"class {c}" for c in wanted["normal_classes"] if c not in classes]
    missing_models = [m for m in EXPLAIN_MODELS if m not in config["models"]]
    if missing_models or wanted["seed"] not in config["seeds"]:
        skipped.append(f"models {missing_models} or seed {wanted['seed']} not in the grid")
        datasets, classes = [], []
    if run_exists is not None:
        complete = [
            c for c in classes if all(run_exists(d, m, c) for d in datasets for m in EXPLAIN_MODELS)
        ]
        skipped += [f"class {c} (runs missing)" for c in classes if c not in complete]
        classes = complete
    if not datasets or not classes:
        return [], [], skipped
    return datasets, classes, skipped


def figure_classes(chosen: list[int] | None, explained: list[int]) -> tuple[list[int], list[int]]:
    """(the classes of ``chosen`` that are explained here, the chosen ones that are not);
    ``chosen`` None: every explained class. A figure whose first list is empty shows every
    explained class instead."""
    if chosen is None or not explained:
        return list(explained), []
    return [c for c in explained if c in chosen], [c for c in chosen if c not in explained]
