"""Faults a careful user meets: damaged data and run files, paths that cannot be written, a full
disk, interruptions. Each must end in a message that names the file or setting and what to do
(rc 2 for the command), cost no finished work and leave nothing half-written."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_train_argv, write_synthetic_dataset
from test_aggregate import grid, run_aggregate, write_fake_run
from test_data import synthetic  # noqa: F401 - the fixture

from grad2vae import atomic, cli
from grad2vae.data import command as fetch
from grad2vae.data import datasets as data
from grad2vae.errors import UserError
from grad2vae.layout import CHECKPOINT, LOCK, RUN_DIR, TRAIN_LOG

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def grad2vae(argv, capsys) -> tuple[int, str]:
    """``grad2vae ARGV`` in this process: (exit code, what it printed on stderr)."""
    code = cli.main([str(part) for part in argv])
    return code, capsys.readouterr().err


@contextlib.contextmanager
def small_mount(size: str = "1m"):
    """A tmpfs of ``size`` (root only, else the test is skipped), unmounted afterwards."""
    if not IS_ROOT or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    point = Path("/tmp") / f"grad2vae-test-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], capture_output=True
    )
    if mounted.returncode != 0:
        point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
        point.rmdir()


def remount_read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


# --------------------------------------------------------------------------------------------
# Damaged data
# --------------------------------------------------------------------------------------------
def copy_of_data(tmp_path: Path, name: str = "mnist") -> Path:
    root = tmp_path / "data"
    write_synthetic_dataset(root, name, train_per_class=30, test_per_class=10)
    return root


def test_out_of_range_label_is_refused_with_the_file_and_what_to_do(tmp_path, capsys):
    root = copy_of_data(tmp_path)
    labels = root / "mnist" / "t10k-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[8 + 17] = 255  # after the 8-byte IDX header: the 18th test label
    labels.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte: label 255 at position 17"):
        data.load_split(root, "mnist", 3)
    code, err = grad2vae(tiny_train_argv("cae", root, tmp_path / "run"), capsys)
    assert code == 2 and "grad2vae fetch" in err and "label 255" in err
    assert not (tmp_path / "run").exists()  # refused before training: nothing left behind


def test_a_changed_pixel_byte_is_refused_against_the_manifests_hash(
    synthetic,  # noqa: F811 - the fixture
    tmp_path,
):
    fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    data.load_split(tmp_path / "data", "mnist", 0)  # verified files load
    images = tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    raw[-1] ^= 0x01
    images.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="changed since `grad2vae fetch` verified it") as error:
        data.load_split(tmp_path / "data", "mnist", 0)
    assert str(images) in str(error.value) and "fetch --data-dir" in str(error.value)


def test_fetch_removes_the_temporary_file_a_killed_fetch_left(
    synthetic,  # noqa: F811 - the fixture
    tmp_path,
):
    target = tmp_path / "data" / "mnist"
    fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process id that no longer runs
    stale = target / f".tmp-t10k-images-idx3-ubyte-{dead.pid}-x1y2z3"
    stale.write_bytes(b"\0" * 1000)
    older = target / ".tmp-train-images-idx3-ubyte-abc123"  # a name from before process ids
    older.write_bytes(b"\0" * 10)
    alive = target / f".tmp-MANIFEST.json-{os.getpid()}-q9"  # this process: being written
    alive.write_bytes(b"{")
    fetch.fetch(tmp_path / "data", ["mnist"], ["local"], local_dir=synthetic)
    assert not stale.exists() and not older.exists() and alive.exists()


# --------------------------------------------------------------------------------------------
# Paths that cannot be used
# --------------------------------------------------------------------------------------------
def test_out_dir_empty_a_file_or_under_a_file_is_a_clear_error(tiny_data_dir, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for out_dir, expected in (
        ("", "--out-dir is empty"),
        (a_file, "is a file, not a folder"),
        (a_file / "run", "is a file, not a folder"),
    ):
        code, err = grad2vae(tiny_train_argv("cae", tiny_data_dir, out_dir), capsys)
        assert code == 2, err
        assert expected in err and "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]


def test_data_dir_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    code, err = grad2vae(["fetch", "--data-dir", a_file, "--sources", "local"], capsys)
    assert code == 2 and "--data-dir" in err and "is a file, not a folder" in err


def test_read_only_folders_are_clear_errors_and_a_finished_run_there_is_fine(tiny_data_dir, capsys):
    with small_mount("64m") as mount:
        out_dir = mount / "run"
        assert grad2vae(tiny_train_argv("cae", tiny_data_dir, out_dir), capsys)[0] == 0
        remount_read_only(mount)
        # finished: nothing to do, even though its final checkpoint cannot be released
        code, err = grad2vae(tiny_train_argv("cae", tiny_data_dir, out_dir), capsys)
        assert code == 0, err
        code, err = grad2vae(tiny_train_argv("cae", tiny_data_dir, mount / "other"), capsys)
        assert code == 2 and "--out-dir" in err and "read-only file system" in err
        code, err = grad2vae(["fetch", "--data-dir", mount / "data", "--sources", "local"], capsys)
        assert code == 2 and "--data-dir" in err and "Traceback" not in err


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tiny_data_dir, capsys):
    # cae's model.pt (~3 MB) does not fit: the first write that fails is a torch.save
    with small_mount("1m") as mount:
        code, err = grad2vae(tiny_train_argv("cae", tiny_data_dir, mount / "run"), capsys)
        assert code == 2, err
        assert "no space left on device" in err and str(mount / "run") in err
        assert not list((mount / "run").glob(".tmp-*"))


def test_an_out_of_space_write_is_named_without_a_mount(tmp_path, monkeypatch):
    """The same translation on any machine: ENOSPC, and torch's errno-less short write."""
    with pytest.raises(UserError, match=r"x\.bin: no space left on device"):
        with atomic.atomic_path(tmp_path / "x.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1, 1, 0))
    with pytest.raises(UserError, match=r"y\.pt: no space left on device"):
        with atomic.atomic_path(tmp_path / "y.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 5 vs 3")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic.atomic_path(tmp_path / "z.pt"):
            raise RuntimeError("a bug")


# --------------------------------------------------------------------------------------------
# Runs refused or interrupted
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, expected",
    [(["--device", "cuda"], "cuda"), (["--test-limit", "1"], "test_limit")],
    ids=["cuda-without-gpu", "test-limit-1"],
)
def test_a_run_refused_before_training_leaves_no_folder(
    tiny_data_dir, tmp_path, capsys, monkeypatch, extra, expected
):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = tiny_train_argv("cae", tiny_data_dir, tmp_path / "run") + extra
    code, err = grad2vae(argv, capsys)
    assert code == 2 and expected in err.lower()
    assert not (tmp_path / "run").exists()


def test_a_refused_run_keeps_a_folder_it_did_not_make(tiny_data_dir, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    argv = tiny_train_argv("cae", tiny_data_dir, tmp_path / "run") + ["--test-limit", "1"]
    assert grad2vae(argv, capsys)[0] == 2
    assert (tmp_path / "run").is_dir() and not (tmp_path / "run" / LOCK).exists()


def test_ctrl_c_prints_how_to_resume_without_a_traceback(tiny_data_dir, tmp_path, capsys):
    from grad2vae.training import command as train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "train_seeds", interrupted)
        code, err = grad2vae(tiny_train_argv("cae", tiny_data_dir, tmp_path / "run"), capsys)
    assert code == 130
    assert "interrupted" in err and "resumes from its last checkpoint" in err
    assert "Traceback" not in err


def test_a_finished_run_whose_outputs_were_deleted_is_only_evaluated_again(
    tiny_data_dir, tmp_path, capsys
):
    """What Snakemake does after Ctrl-C while a job finished: it deletes the job's declared
    outputs (--rerun-incomplete) and runs it again."""
    out_dir = (
        tmp_path / "results" / RUN_DIR.format(dataset="mnist", model="cae", normal_class=3, seed=0)
    )
    argv = tiny_train_argv("cae", tiny_data_dir, out_dir) + ["--epochs", "2"]
    assert grad2vae(argv, capsys)[0] == 0
    first = json.loads((out_dir / "metrics.json").read_text())
    history = (out_dir / "history.tsv").read_text()
    assert (out_dir / CHECKPOINT).exists()
    for name in ("metrics.json", "history.tsv", "scores.csv.gz", "model.pt"):
        (out_dir / name).unlink()
    assert grad2vae(argv, capsys)[0] == 0
    again = json.loads((out_dir / "metrics.json").read_text())
    assert again["resumes"] == 1 and first["resumes"] == 0  # not trained from scratch
    assert again["auc"] == first["auc"]
    assert (out_dir / "history.tsv").read_text() == history
    # the aggregation reads the run, then releases the final checkpoint
    work = {"datasets": ["mnist"], "models": ["cae"], "normal_classes": [3], "seeds": [0]}
    config = tmp_path / "workflow_config.json"
    config.write_text(json.dumps(work))
    argv = ["aggregate", "--results-dir", tmp_path / "results", "--workflow-config", config]
    assert grad2vae(argv + ["--release-checkpoints"], capsys)[0] == 0
    assert not (out_dir / CHECKPOINT).exists()


# --------------------------------------------------------------------------------------------
# Damaged run files in the aggregation
# --------------------------------------------------------------------------------------------
def _truncate(path: Path, keep: float = 0.5) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


@pytest.mark.parametrize("damaged", ["scores.csv.gz", "history.tsv"])
def test_a_damaged_run_file_is_a_failed_run_that_names_the_file(tmp_path, damaged):
    results = tmp_path / "results"
    for normal_class in (0, 1):
        write_fake_run(results, "mnist", "grad2vae", normal_class, 0)
    bad = results / RUN_DIR.format(dataset="mnist", model="grad2vae", normal_class=1, seed=0)
    _truncate(bad / damaged)
    payload, out = run_aggregate(tmp_path, grid(classes=[0, 1], seeds=[0]))
    assert payload["counts"] == {"complete": 1, "failed": 1, "missing": 0}
    status = pd.read_csv(out / "status.csv", keep_default_na=False).set_index("normal_class")
    assert status.loc[1, "status"] == "failed"
    assert str(bad / damaged) in status.loc[1, "reason"]
    assert "train it again" in status.loc[1, "reason"]
    assert list(pd.read_csv(out / "runs.csv")["normal_class"]) == [0]
    history = pd.read_csv(out / "history.csv.gz")
    assert set(history["normal_class"]) == {0}


def test_a_history_with_a_missing_epoch_is_damaged(tmp_path):
    results = tmp_path / "results"
    run = write_fake_run(results, "mnist", "grad2vae", 0, 0, epochs=3)
    lines = (run / "history.tsv").read_text().splitlines(keepends=True)
    (run / "history.tsv").write_text("".join(lines[:-1]))  # whole lines, one epoch short
    payload, out = run_aggregate(tmp_path, grid(classes=[0], seeds=[0]))
    status = pd.read_csv(out / "status.csv", keep_default_na=False)
    assert "2 epochs, metrics.json says 3" in status.loc[0, "reason"]


def test_the_reason_of_a_missing_metrics_json_is_not_a_success_line(tmp_path):
    results = tmp_path / "results"
    run = write_fake_run(results, "mnist", "vae", 1, 0)
    log = results / TRAIN_LOG.format(dataset="mnist", model="vae", normal_class=1, seed=0)
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1/3 ...\nvae mnist class 1 seed 0: auc 0.9829 -> results/runs/...\n")
    (run / "metrics.json").unlink()
    payload, out = run_aggregate(tmp_path, grid(classes=[1], models=["vae"], seeds=[0]))
    status = pd.read_csv(out / "status.csv", keep_default_na=False)
    reason = status.loc[0, "reason"]
    assert status.loc[0, "status"] == "failed"
    assert reason.startswith("metrics.json missing") and "auc 0.9829" not in reason


def test_figures_skip_an_unreadable_scores_file(tmp_path):
    """A scores file damaged after the aggregation (the ROC figure reads it) costs its curve,
    not the figures."""
    from grad2vae.figures import command as figures

    results = tmp_path / "results"
    for model in ("grad2vae", "vae"):
        write_fake_run(results, "mnist", model, 0, 0)
    payload, out = run_aggregate(tmp_path, grid(classes=[0], models=["grad2vae", "vae"], seeds=[0]))
    scores = results / RUN_DIR.format(dataset="mnist", model="vae", normal_class=0, seed=0)
    _truncate(scores / "scores.csv.gz")
    with gzip.open(scores / "scores.csv.gz", "rb") as handle, pytest.raises(EOFError):
        handle.read()
    figures.draw_all(results, out, tmp_path / "figures", 0, 3, 40)
    assert (tmp_path / "figures" / "roc_class0.png").exists()
