"""The datasets (names, classes, IDX files and their SHA-256) and the one-class split: loading
the files that `grad2vae fetch` (``grad2vae.data.command``) verified, for training and evaluation.

Split: the normal class's official training images for training; the full official test set for
testing, label 1 = anomaly (any other class). ``train_limit`` / ``test_limit`` take seeded subsets
(the CPU presets). See ASSUMPTIONS."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from grad2vae import layout
from grad2vae.data.idx import IDXError, decode_idx
from grad2vae.errors import UserError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# What the datasets are
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IdxFile:
    """One official IDX file: its name, the SHA-256 of its uncompressed bytes and its shape."""

    name: str
    sha256: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Dataset:
    """A ten-class image dataset distributed as four IDX files."""

    name: str
    title: str
    download_url: str  # where the official .gz files can be downloaded by hand
    classes: tuple[str, ...]
    # role ("train_images", "train_labels", "test_images", "test_labels") -> file
    files: dict[str, IdxFile]


def _idx_files(hashes: dict[str, str]) -> dict[str, IdxFile]:
    """The four standard files, which have the same names and shapes in both datasets."""
    roles = ("train_images", "train_labels", "test_images", "test_labels")
    shapes = ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    return {
        role: IdxFile(name, hashes[name], shape)
        for role, name, shape in zip(roles, layout.IDX_NAMES, shapes)
    }


DATASETS: dict[str, Dataset] = {
    "mnist": Dataset(
        name="mnist",
        title="MNIST",
        download_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        classes=tuple(str(digit) for digit in range(10)),
        files=_idx_files(
            {
                "train-images-idx3-ubyte": (
                    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
                ),
                "train-labels-idx1-ubyte": (
                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
                ),
                "t10k-images-idx3-ubyte": (
                    "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
                ),
                "t10k-labels-idx1-ubyte": (
                    "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
                ),
            }
        ),
    ),
    "fashion_mnist": Dataset(
        name="fashion_mnist",
        title="Fashion-MNIST",
        download_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        files=_idx_files(
            {
                "train-images-idx3-ubyte": (
                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
                ),
                "train-labels-idx1-ubyte": (
                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
                ),
                "t10k-images-idx3-ubyte": (
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
                ),
                "t10k-labels-idx1-ubyte": (
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
                ),
            }
        ),
    ),
}


MANIFEST_NAME = layout.MANIFEST_NAME


ASSUMPTIONS: tuple[str, ...] = (
    "pixels scaled to [0, 1] as uint8 / 255, no mean/std normalisation — the paper does not say; "
    "/255 is torchvision's ToTensor convention",
    "images stay 28x28 at the data level, no padding or resizing (a model that needs another size "
    "adapts the input itself) — the paper does not say",
    "training set = every official training image of the normal class, no validation split held "
    "out — standard one-class protocol (Ruff et al., Deep SVDD, ICML 2018); the paper names none",
    "test set = the full official 10,000-image test set — standard one-class protocol",
    "test label 1 = anomaly (any class other than the normal one), 0 = normal — standard "
    "one-class protocol; anomalies are the AUC's positive class (paper Sect. 4.2)",
    "train_limit / test_limit (CPU quick presets only) take seeded random subsets in original "
    "order; the test subset keeps the normal/anomaly proportion and at least one of each — "
    "our choice, not in the paper",
)


# --------------------------------------------------------------------------------------------
# Loading the one-class split
# --------------------------------------------------------------------------------------------
@dataclass
class OneClassSplit:
    """One normal class against the rest.

    Images are float32 tensors in [0, 1] of shape (N, 1, 28, 28). ``test_labels`` is 1 for an
    anomaly (any other class) and 0 for normal; ``test_classes`` is each test image's original
    class. The ``*_indices`` give each image's position in the official file (they differ from
    0..N-1 only when a limit took a subset).
    """

    dataset: str
    normal_class: int
    train_x: torch.Tensor
    test_x: torch.Tensor
    test_labels: torch.Tensor
    test_classes: torch.Tensor
    train_indices: torch.Tensor
    test_indices: torch.Tensor


def _subset(indices: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``limit`` of ``indices`` chosen at random, kept in their original order."""
    if limit <= 0 or limit >= len(indices):
        return indices
    return np.sort(rng.choice(indices, size=limit, replace=False))


def _stratified_subset(is_anomaly: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """``limit`` test indices with the normal/anomaly proportion kept and at least one of each."""
    everything = np.arange(len(is_anomaly))
    if limit <= 0 or limit >= len(is_anomaly):
        return everything
    normal, anomalous = everything[~is_anomaly], everything[is_anomaly]
    normal_count = int(round(limit * len(normal) / len(is_anomaly)))
    normal_count = min(max(normal_count, 1), limit - 1, len(normal))
    chosen = np.concatenate(
        [_subset(normal, normal_count, rng), _subset(anomalous, limit - normal_count, rng)]
    )
    return np.sort(chosen)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / np.float32(255)).unsqueeze(1)


def _recorded_hashes(folder: Path) -> dict[str, str]:
    """file name -> SHA-256 that `grad2vae fetch` recorded in the manifest (none: a manifest
    written by hand or by the tests' synthetic data, which only the shape checks cover)."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(
            f"{folder / MANIFEST_NAME} is unreadable ({error}); run `grad2vae fetch` again"
        ) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return {}
    return {
        name: entry["sha256"]
        for name, entry in files.items()
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
    }


def _read_checked(folder: Path, info: Dataset, data_dir) -> dict[str, np.ndarray]:
    """The four arrays of ``folder`` by role, after the checks that keep a changed file from
    training silently: each file's SHA-256 against the manifest (about 35 ms for MNIST's 55 MB
    on a 2-core CPU: cheap beside any run, so every load re-hashes rather than trusting sizes
    or times), its IDX shape against the official one, and every label within the classes."""
    again = f"run `grad2vae fetch --data-dir {data_dir}` again"
    recorded = _recorded_hashes(folder)
    arrays = {}
    for role, idx_file in info.files.items():
        path = folder / idx_file.name
        raw = path.read_bytes()
        expected = recorded.get(idx_file.name)
        if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
            raise UserError(
                f"{path} changed since `grad2vae fetch` verified it (its SHA-256 is not the one "
                f"in {MANIFEST_NAME}): delete it and {again}"
            )
        try:
            arrays[role] = decode_idx(raw, name=str(path))
        except IDXError as error:
            raise UserError(f"{error}; {again}") from error
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
            raise UserError(
                f"{folder}: {part} images {images.shape} and labels {labels.shape} do not match; "
                f"{again}"
            )
        out_of_range = np.flatnonzero(labels >= len(info.classes))
        if len(out_of_range):
            position = int(out_of_range[0])
            raise UserError(
                f"{folder / info.files[f'{part}_labels'].name}: label {int(labels[position])} "
                f"at position {position} ({len(out_of_range)} in all) is not a class of "
                f"{info.title} (0-{len(info.classes) - 1}): the file is corrupt; {again}"
            )
    return arrays


def load_split(
    data_dir: str | os.PathLike,
    dataset: str,
    normal_class: int,
    train_limit: int = 0,
    test_limit: int = 0,
    seed: int = 0,
) -> OneClassSplit:
    """The one-class split of ``dataset`` with ``normal_class`` as normal (see OneClassSplit).

    ``train_limit`` / ``test_limit`` > 0 take a seeded random subset (CPU quick presets); the
    test subset keeps both labels. The files must be those ``grad2vae fetch`` verified: each is
    re-hashed against the manifest, its shape and labels checked (``UserError`` naming the file).
    """
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    info = DATASETS[dataset]
    if (
        isinstance(normal_class, bool)
        or not isinstance(normal_class, (int, np.integer))
        or not (0 <= normal_class < len(info.classes))
    ):
        raise UserError(
            f"normal class {normal_class!r} is not a class of {info.title}: "
            f"use 0-{len(info.classes) - 1}"
        )
    normal_class = int(normal_class)
    if train_limit < 0 or test_limit < 0:
        raise UserError("train_limit and test_limit must be 0 (everything) or positive")
    if test_limit == 1:
        raise UserError(
            "test_limit must be at least 2 so that normal and anomalous images are both present"
        )

    folder = Path(data_dir) / dataset
    needed = [MANIFEST_NAME] + [idx_file.name for idx_file in info.files.values()]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise UserError(
            f"{info.title} is not in {folder} (missing {', '.join(missing)}): run "
            f"`grad2vae fetch --data-dir {data_dir}` or `snakemake data` first"
        )
    arrays = _read_checked(folder, info, data_dir)

    # Separate generators, so the test subset does not depend on the train limit.
    train_rng = np.random.default_rng([seed, 0])
    test_rng = np.random.default_rng([seed, 1])
    train_labels = arrays["train_labels"]
    train_indices = _subset(np.flatnonzero(train_labels == normal_class), train_limit, train_rng)
    test_classes = arrays["test_labels"].astype(np.int64)
    test_indices = _stratified_subset(test_classes != normal_class, test_limit, test_rng)
    test_classes = test_classes[test_indices]
    return OneClassSplit(
        dataset=dataset,
        normal_class=normal_class,
        train_x=_to_tensor(arrays["train_images"][train_indices]),
        test_x=_to_tensor(arrays["test_images"][test_indices]),
        test_labels=torch.from_numpy((test_classes != normal_class).astype(np.int64)),
        test_classes=torch.from_numpy(test_classes),
        train_indices=torch.from_numpy(train_indices.astype(np.int64)),
        test_indices=torch.from_numpy(test_indices.astype(np.int64)),
    )
