"""The GPU path on a real CUDA device (issue 14). Marked ``gpu``: on a machine without CUDA every
test here skips, saying so, and ``-m "not gpu"`` leaves them out; ``scripts/gpu-acceptance`` runs
them. Each uses the tiny synthetic dataset of conftest.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from grad2vae.layout import CHECKPOINT, METRICS
from grad2vae.training import command as train
from grad2vae.training import devices
from grad2vae.training.run_config import RunConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (run scripts/gpu-acceptance on one)"
    ),
]

ROOT = Path(__file__).resolve().parents[1]


def config(seed: int = 0, epochs: int = 4, model: str = "vae") -> RunConfig:
    return RunConfig(
        model=model, dataset="mnist", normal_class=2, seed=seed, latent_dim=4, epochs=epochs,
        batch_size=16, lr=1e-3, lr_decay_epoch=0, lr_decay_factor=0.1, eval_every=1,
        eval_batch_size=50, train_limit=30, test_limit=40,
    )  # fmt: skip


def train_command(data_dir: Path, out_dir: Path, device: str, *extra: str) -> list[str]:
    cfg = config()
    return [
        sys.executable, "-m", "grad2vae.cli", "train", "--model", cfg.model,
        "--dataset", cfg.dataset, "--normal-class", str(cfg.normal_class), "--seed", str(cfg.seed),
        "--latent-dim", "4",
        "--epochs", str(cfg.epochs), "--batch-size", "16", "--lr-decay-epoch", "0",
        "--lr-decay-factor", "0.1", "--eval-batch-size", "50",
        "--train-limit", "30", "--test-limit", "40", "--checkpoint-every", "1", "--device", device,
        "--data-dir", str(data_dir), "--out-dir", str(out_dir), "--no-progress", *extra,
    ]  # fmt: skip


def numbers(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("auc", "auc_reconstruction", "auc_scores", "score_means")}


def test_gpu_killed_run_resumes_on_the_other_device_with_identical_metrics(tiny_data_dir, tmp_path):
    count = torch.cuda.device_count()
    first, second = ("cuda:1", "cuda:0") if count > 1 else ("cuda:0", "cuda:0")
    reference = train.train_one(
        config(), tmp_path / "reference", data_dir=tiny_data_dir, device=second
    )
    out = tmp_path / "killed"
    process = subprocess.Popen(train_command(tiny_data_dir, out, first), cwd=ROOT)
    deadline = time.monotonic() + 300
    while (
        not (out / CHECKPOINT).exists() and process.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / METRICS).exists(), "the run finished before it could be killed"
    resumed = train.train_one(config(), out, data_dir=tiny_data_dir, device=second)
    assert resumed["resumes"] == 1
    assert numbers(resumed) == numbers(reference)


def test_gpu_vmapped_seed_group_equals_runs_alone_within_tolerance(tiny_data_dir, tmp_path):
    seeds = [0, 1, 2]
    alone = [train.train_one(config(s), tmp_path / "alone" / f"seed{s}", data_dir=tiny_data_dir,
                             device="cuda:0")
             for s in seeds]  # fmt: skip
    group = train.train_seeds([config(s) for s in seeds],
                              [tmp_path / "group" / f"seed{s}" for s in seeds],
                              data_dir=tiny_data_dir, device="cuda:0",
                              seed_batching="vmap")  # fmt: skip
    # The VAE has no BatchNorm and trains without TF32 (devices.deterministic): its scores agree
    # to ~1e-5 relative as on the CPU (test_train: seen <= 2e-7), so the 4 x 36 normal/anomalous
    # pairs keep their order and the AUCs are equal (one swapped pair would be 1/144 = 0.007).
    for one, grouped in zip(alone, group):
        assert grouped["seed_batching"] == "vmap"
        assert grouped["auc"] == pytest.approx(one["auc"], abs=1e-3)


def test_gpu_seed_group_larger_than_the_free_memory_splits_and_finishes(
    tiny_data_dir, tmp_path, monkeypatch, caplog
):
    seeds = [0, 1, 2, 3]

    def room_for_one(device):  # as if the card were nearly full
        return 1

    monkeypatch.setattr(devices, "available_memory", room_for_one)
    caplog.set_level("INFO", logger="grad2vae.training.cohort")
    group = train.train_seeds([config(s, epochs=2) for s in seeds],
                              [tmp_path / f"seed{s}" for s in seeds],
                              data_dir=tiny_data_dir, device="cuda:0")  # fmt: skip
    assert "sub-cohorts of 1" in caplog.text and len(group) == 4


def test_gpu_two_jobs_take_distinct_cards_or_wait(tmp_path):
    """Two jobs started side by side under --resources gpu=2: distinct cards when there are two,
    one after the other when there is one (never on the same card at once)."""
    script = (
        "import sys, time; from grad2vae import devices; "
        f"d = devices.resolve_device('auto', slot_dir={str(tmp_path)!r}); "
        "print(d, time.time(), flush=True); time.sleep(3); print(time.time(), flush=True)"
    )
    jobs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=120)[0].split() for job in jobs]
    assert all(job.returncode == 0 for job in jobs)
    (dev_a, start_a, end_a), (dev_b, start_b, end_b) = (
        (o[0], float(o[1]), float(o[2])) for o in outputs
    )
    if torch.cuda.device_count() > 1:
        assert dev_a != dev_b
    else:
        assert start_b >= end_a - 0.5 or start_a >= end_b - 0.5  # one waited for the other
