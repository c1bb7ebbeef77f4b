"""Device choice and GPU slots, with a fake device count (no GPU needed)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from grad2vae.errors import UserError
from grad2vae.training import devices


@pytest.fixture(autouse=True)
def _release_slots():
    yield
    devices.release_gpu_slots()


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend torch sees ``n`` CUDA devices."""

    def set_count(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return set_count


HOLDER = textwrap.dedent(
    """
    import sys, time
    from grad2vae.training import devices
    slot = devices.try_acquire_gpu_slot(
        int(sys.argv[2]), sys.argv[1], device_count=int(sys.argv[3])
    )
    print(slot.index if slot else "none", flush=True)
    time.sleep(float(sys.argv[4]))
    """
)


def _holder(slot_dir, n_slots=2, device_count=2, sleep=60.0):
    """A separate process that takes a slot and holds it while it sleeps; returns (proc, slot)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(slot_dir), str(n_slots), str(device_count), str(sleep)],
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().strip()


def test_cpu_when_no_cuda(fake_gpus, tmp_path, monkeypatch):
    fake_gpus(0)
    assert devices.resolve_device("auto", slot_dir=tmp_path) == torch.device("cpu")
    assert devices.resolve_device("cpu", slot_dir=tmp_path) == torch.device("cpu")
    # A scheduler set CUDA_VISIBLE_DEVICES but there is no working GPU: the CPU, not an error.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert devices.resolve_device("auto", slot_dir=tmp_path) == torch.device("cpu")
    with pytest.raises(UserError, match="no CUDA device"):
        devices.resolve_device("cuda", slot_dir=tmp_path)
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        devices.resolve_device("tpu", slot_dir=tmp_path)


def test_one_visible_device_is_cuda0_with_its_own_slot(fake_gpus, tmp_path, monkeypatch):
    """One card (a Slurm job granted one GPU, or a one-GPU workstation): cuda:0, locked, so that a
    second job started beside it (--resources gpu=2) waits instead of sharing the card."""
    fake_gpus(1)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # as Slurm sets it; never changed by us
    assert devices.resolve_device("auto", slot_dir=tmp_path / "slots") == torch.device("cuda", 0)
    assert [p.name.split("-gpu")[1] for p in (tmp_path / "slots").iterdir()] == ["3-0.lock"]
    with pytest.raises(UserError, match="all 1 GPU slots"):
        devices.resolve_device("auto", slot_dir=tmp_path / "slots", slot_timeout=0.05)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"


def test_explicit_device_index(fake_gpus, tmp_path):
    fake_gpus(2)
    assert devices.resolve_device("cuda:1", slot_dir=tmp_path) == torch.device("cuda", 1)
    with pytest.raises(UserError, match="only 2 CUDA device"):
        devices.resolve_device("cuda:2", slot_dir=tmp_path)


def test_jobs_side_by_side_take_distinct_gpus(fake_gpus, tmp_path):
    fake_gpus(2)
    first = devices.resolve_device("auto", slot_dir=tmp_path)
    second = devices.resolve_device("cuda", slot_dir=tmp_path)
    assert {first, second} == {torch.device("cuda", 0), torch.device("cuda", 1)}
    with pytest.raises(UserError, match="all 2 GPU slots"):
        devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0.2)


def test_more_slots_than_gpus_share_cards_only_when_allowed(fake_gpus, tmp_path):
    fake_gpus(2)
    with pytest.raises(UserError, match="--jobs-per-gpu 2"):
        devices.resolve_device("auto", gpu_slots=4, slot_dir=tmp_path)
    got = [
        devices.resolve_device("auto", gpu_slots=4, slot_dir=tmp_path, jobs_per_gpu=2)
        for _ in range(4)
    ]
    assert got == [torch.device("cuda", i) for i in (0, 1, 0, 1)]
    with pytest.raises(UserError):
        devices.resolve_device("auto", gpu_slots=0, slot_dir=tmp_path)


def test_slot_files_name_the_physical_device(fake_gpus, tmp_path, monkeypatch):
    fake_gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    devices.resolve_device("auto", slot_dir=tmp_path)
    devices.resolve_device("auto", slot_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and "-gpu5-0.lock" in names[0] and "-gpu7-0.lock" in names[1]
    # Another job given other devices does not compete for these slots.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0) == torch.device(
        "cuda", 0
    )


def test_slots_across_processes_and_freed_by_sigkill(tmp_path):
    holder, slot = _holder(tmp_path)
    try:
        assert slot == "0"
        mine = devices.try_acquire_gpu_slot(2, tmp_path, device_count=2)
        assert mine is not None and mine.index == 1 and mine.device_index == 1
        assert devices.try_acquire_gpu_slot(2, tmp_path, device_count=2) is None  # a third job
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        freed = devices.try_acquire_gpu_slot(2, tmp_path, device_count=2)
        assert freed is not None and freed.index == 0
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_waiting_job_gets_the_slot_when_a_holder_ends(tmp_path):
    holder, slot = _holder(tmp_path, n_slots=1, device_count=1, sleep=1.0)
    try:
        assert slot == "0"
        start = time.monotonic()
        got = devices.acquire_gpu_slot(1, tmp_path, device_count=1, timeout=60, poll_seconds=0.05)
        assert got.index == 0 and time.monotonic() - start < 50
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_deterministic_block_restores_settings():
    before = torch.are_deterministic_algorithms_enabled()
    precision_before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with devices.deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
        # no TF32 (PyTorch's default allows it for cuDNN convolutions)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        with torch.backends.cudnn.flags(enabled=True):  # old-API readers keep working
            pass
    assert torch.are_deterministic_algorithms_enabled() == before
    assert (
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    ) == precision_before


def test_device_name_of_cpu():
    assert isinstance(devices.device_name("cpu"), str) and devices.device_name("cpu")


_ALLOCATION_PATTERN = textwrap.dedent(
    """
    import resource, torch
    from grad2vae.training import devices

    print(devices.keep_freed_memory())

    def step():  # large tensors freed each step, as in a Grad2VAE step on the CPU
        big, medium = torch.ones(50_000_000), torch.ones(20_000_000)
        return big[:10] + medium[:10]

    for _ in range(2):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _page_faults_of_steps(malloc_setting: str | None) -> tuple[str, int]:
    env = {key: value for key, value in os.environ.items() if key != devices.MALLOC_ENV}
    if malloc_setting is not None:
        env[devices.MALLOC_ENV] = malloc_setting
    result = subprocess.run(
        [sys.executable, "-c", _ALLOCATION_PATTERN],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    mode, faults = result.stdout.split()
    return mode, int(faults)


@pytest.mark.skipif(
    sys.platform != "linux" or __import__("platform").libc_ver()[0] != "glibc", reason="glibc only"
)
def test_keep_freed_memory_reuses_pages_instead_of_faulting_them_in_again():
    kept_mode, kept_faults = _page_faults_of_steps(None)
    default_mode, default_faults = _page_faults_of_steps("default")
    assert (kept_mode, default_mode) == ("kept", "default")
    # 3 steps of 280 MB: ~205,000 fresh 4 KiB pages with glibc's default (every block mmapped and
    # unmapped), far fewer once freed memory is kept
    assert default_faults > 150_000
    assert kept_faults < default_faults / 2
