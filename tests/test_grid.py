"""grad2vae.grid: the one computation of the grid that the workflow plans and the aggregation
expects (tests/test_workflow.py checks the workflow's dry runs against it)."""

from __future__ import annotations

from grad2vae import grid


def explain_config(**explain) -> dict:
    defaults = dict(enabled=True, datasets=["mnist"], normal_classes=[0, 1], seed=0)
    return {
        "datasets": ["mnist", "fashion_mnist"],
        "normal_classes": [0, 1, 2],
        "models": ["grad2vae", "vae", "cae"],
        "seeds": [0, 1],
        "explain": dict(defaults, **explain),
    }


def test_trained_models_are_the_models_then_the_extra_ones_then_the_variants_once_each():
    config = {"models": ["grad2vae", "vae"], "extra_models": ["deep_svdd", "vae"],
              "variants": {"vae_beta": {"model": "vae"}}}  # fmt: skip
    assert grid.trained_models(config) == ["grad2vae", "vae", "deep_svdd", "vae_beta"]
    assert grid.trained_models({"models": ["cae"]}) == ["cae"]


def test_run_keys_nest_dataset_class_model_seed_and_a_variant_keeps_to_its_classes():
    config = {"variants": {"small": {"model": "vae", "normal_classes": [1]}, "all": {}}}
    keys = list(grid.run_keys({"datasets": ["mnist"], "normal_classes": [0, 1],
                               "models": ["vae", "small"], "seeds": [0, 1],
                               "model_classes": grid.model_classes(config)}))  # fmt: skip
    assert grid.model_classes(config) == {"small": [1]}
    assert [(k["normal_class"], k["model"], k["seed"]) for k in keys] == [
        (0, "vae", 0), (0, "vae", 1),
        (1, "vae", 0), (1, "vae", 1), (1, "small", 0), (1, "small", 1),
    ]  # fmt: skip
    assert list(keys[0]) == ["dataset", "normal_class", "model", "seed"]


def test_the_roc_class_falls_back_to_the_grids_first_class():
    assert grid.roc_class(2, [0, 2]) == 2
    assert grid.roc_class(5, [3, 4]) == 3
    assert grid.roc_class(None, [3, 4]) == 3


def test_explain_targets_keep_what_the_grid_trains_and_say_what_they_skip():
    datasets, classes, skipped = grid.explain_targets(
        explain_config(datasets=["mnist", "cifar"], normal_classes=[1, 7])
    )
    assert (datasets, classes) == (["mnist"], [1])
    assert skipped == ["dataset cifar", "class 7"]
    assert grid.explain_targets(explain_config(enabled=False)) == ([], [], [])


def test_explain_targets_need_both_models_and_the_seed():
    config = explain_config(seed=5)
    assert grid.explain_targets(config)[:2] == ([], [])
    config = explain_config()
    config["models"] = ["grad2vae", "cae"]
    datasets, classes, skipped = grid.explain_targets(config)
    assert (datasets, classes) == ([], []) and "['vae']" in skipped[-1]


def test_explain_targets_with_allow_partial_keep_the_classes_whose_runs_exist():
    finished = {("mnist", "grad2vae", 0), ("mnist", "vae", 0), ("mnist", "grad2vae", 1)}
    datasets, classes, skipped = grid.explain_targets(
        explain_config(), lambda d, m, c: (d, m, c) in finished
    )
    assert (datasets, classes) == (["mnist"], [0]) and skipped == ["class 1 (runs missing)"]


def test_figure_classes_show_the_chosen_explained_ones():
    assert grid.figure_classes(None, [0, 1]) == ([0, 1], [])
    assert grid.figure_classes([1, 9], [0, 1]) == ([1], [9])
    assert grid.figure_classes([9], [0, 1]) == ([], [9])  # the figure then shows every class
