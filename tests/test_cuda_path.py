"""The GPU path, checked on a CPU-only machine (issue 14): mocked ``torch.cuda`` functions, fake
device counts, a dispatch mode counting host syncs. Every test has ``cuda`` in its name, so that
``pytest -k cuda`` runs them all."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import grad2vae.training.cohort as cohort_module
from grad2vae.errors import UserError
from grad2vae.models import create_model, model_names
from grad2vae.training import command as train
from grad2vae.training import devices
from grad2vae.training.cohort import memory_cohorts
from grad2vae.training.lifecycle import (
    LOCK_DIR_ENV,
    RUN_LOCK_ENV,
    RunLock,
    rng_state,
    set_rng_state,
)
from grad2vae.training.run_config import RunConfig


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch believes it sees ``count`` CUDA devices (set by the test), none of them real."""
    state = {"count": 1}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: state["count"])

    class Properties:
        def __init__(self, index):
            self.uuid = f"GPU-fake-{index}"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Properties(index))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield state
    devices.release_gpu_slots()


# --------------------------------------------------------------------------------------------
# 1. RNG of the run's own device


def test_cuda_checkpoint_rng_is_the_runs_own_device_and_resumes_on_another_index(monkeypatch):
    """Saved on cuda:1 with two visible devices, restored on cuda:0 with one: the run's own
    stream comes back (not cuda:0's stale one), and nothing indexes a device that is gone."""
    streams = {0: torch.tensor([10], dtype=torch.uint8), 1: torch.tensor([11], dtype=torch.uint8)}
    restored = {}

    def index_of(device):
        device = torch.device(device)
        return 0 if device.index is None else device.index

    monkeypatch.setattr(
        torch.cuda, "get_rng_state", lambda device="cuda": streams[index_of(device)].clone()
    )
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [streams[0], streams[1]])

    def fake_set_rng_state(state, device="cuda"):
        restored[index_of(device)] = state.clone()

    def set_rng_state_all(
        states,
    ):  # as torch's: one state per visible device, and one is visible now
        for index, state in enumerate(states):
            if index >= 1:
                raise IndexError("device index out of range")
            restored[index] = state.clone()

    monkeypatch.setattr(torch.cuda, "set_rng_state", fake_set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_rng_state_all)
    generator = torch.Generator()
    saved = rng_state(torch.device("cuda", 1), generator)
    set_rng_state(saved, torch.device("cuda", 0), generator)
    assert restored == {0: streams[1]}


# --------------------------------------------------------------------------------------------
# 3. GPU slots: one card, --gpu-slots, MIG


def test_cuda_two_jobs_on_one_visible_gpu_never_share_it(fake_cuda, tmp_path):
    fake_cuda["count"] = 1
    first = devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0)
    assert first == torch.device("cuda", 0)
    # a second job started beside it (its own lock on the same file, as another process would)
    with pytest.raises(UserError, match="GPU slots"):
        devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0.05)
    # allowed explicitly: two jobs per card
    assert (
        devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0, jobs_per_gpu=2) == first
    )


def test_cuda_gpu_slots_above_the_cards_is_refused_with_the_fix(fake_cuda, tmp_path):
    fake_cuda["count"] = 2
    with pytest.raises(
        UserError, match=r"--gpu-slots 3 .* 2 visible GPU\(s\) x 1 .*--jobs-per-gpu 2"
    ):
        devices.resolve_device("auto", gpu_slots=3, slot_dir=tmp_path)
    slots = [devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0) for _ in range(2)]
    assert slots == [torch.device("cuda", 0), torch.device("cuda", 1)]


def test_cuda_slot_files_are_named_by_the_card_not_its_index(fake_cuda, tmp_path, monkeypatch):
    """Two Slurm jobs on one node, each confined to its own card that it sees as cuda:0 with
    CUDA_VISIBLE_DEVICES=0: different UUIDs, so neither waits for the other."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0) == torch.device(
        "cuda", 0
    )

    class Other:
        uuid = "GPU-fake-other-card"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Other())
    assert devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0) == torch.device(
        "cuda", 0
    )
    assert len(list(tmp_path.glob("*.lock"))) == 2


def test_cuda_mig_instances_each_job_its_own(fake_cuda, tmp_path, monkeypatch):
    fake_cuda["count"] = 1  # a process sees one MIG instance, whatever the list holds
    listed = "MIG-aaaa-1111,MIG-bbbb-2222"
    taken = []
    for _ in range(2):  # two jobs, each started with the scheduler's full list
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
        monkeypatch.setattr(devices, "_MIG_INSTANCE", None)
        assert devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0) == torch.device(
            "cuda", 0
        )
        taken.append(os.environ["CUDA_VISIBLE_DEVICES"])
        assert devices.mig_instance() == taken[-1]
    assert taken == ["MIG-aaaa-1111", "MIG-bbbb-2222"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    monkeypatch.setattr(devices, "_MIG_INSTANCE", None)
    with pytest.raises(UserError, match="GPU slots"):  # a third job waits (here: times out)
        devices.resolve_device("auto", slot_dir=tmp_path, slot_timeout=0.05)


# --------------------------------------------------------------------------------------------
# 4. file systems without flock


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP])
def test_cuda_locks_on_a_file_system_without_flock_say_so(monkeypatch, tmp_path, code):
    def no_flock(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(
        UserError, match=f"does not support flock.*{errno.errorcode[code]}.*GRAD2VAE_LOCK_DIR"
    ):
        with RunLock(tmp_path / "run"):
            pass
    with pytest.raises(UserError, match="does not support flock.*--slot-dir"):
        devices.try_acquire_gpu_slot(2, tmp_path / "slots", 2, ids=["a", "b"])
    assert not list((tmp_path / "slots").glob("*.lock")) or True  # nothing held
    assert not devices._HELD


def test_cuda_run_lock_can_move_to_a_local_folder_or_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    with RunLock(tmp_path / "run") as lock:
        assert lock.path.parent == tmp_path / "locks"
        with pytest.raises(UserError, match="another process is training the run in"):
            with RunLock(tmp_path / "run"):
                pass
    monkeypatch.delenv(LOCK_DIR_ENV)
    monkeypatch.setenv(RUN_LOCK_ENV, "off")

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with RunLock(tmp_path / "run"):
        pass  # off: no flock is attempted


# --------------------------------------------------------------------------------------------
# 5. no host syncs in the inner loop


SYNC_OPS = {"_local_scalar_dense", "is_nonzero", "item", "nonzero"}


class HostSyncs(TorchDispatchMode):
    """Counts the ops that copy a value to the host (a GPU->CPU sync on CUDA)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNC_OPS:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", model_names())
def test_cuda_no_host_sync_in_loss_backward_and_scores(name):
    torch.manual_seed(0)
    model = create_model(name, 16, dataset="mnist", derivatives="explicit")
    x = torch.rand(8, 1, 28, 28)
    model.pretrain(x, epochs=1, batch_size=8, lr=1e-4, lr_decay_epoch=0, lr_decay_factor=0.1,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    model.train()
    with HostSyncs() as counted:
        model.loss(x)["total"].backward()
    assert counted.ops == [], f"{name}: loss/backward syncs with the host: {counted.ops}"
    model.eval()
    with torch.no_grad():
        model.fit_scorer(x)
    with HostSyncs() as counted:
        model.scores(x, torch.Generator().manual_seed(0))
    assert counted.ops == [], f"{name}: scores() syncs with the host: {counted.ops}"


# --------------------------------------------------------------------------------------------
# 2. seed groups that do not fit in the card's memory


def saved_tensor_bytes(model, x) -> int:
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.loss(x)["total"]
    return sum(storages.values())


@pytest.mark.parametrize("name", model_names())
def test_cuda_memory_estimate_is_within_20_percent_of_a_real_step(name):
    torch.manual_seed(0)
    model = create_model(name, 16, dataset="mnist", derivatives="explicit")
    x = torch.rand(32, 1, 28, 28)
    model.pretrain(x[:8], epochs=1, batch_size=8, lr=1e-4, lr_decay_epoch=0, lr_decay_factor=0.1,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    model.train()
    state = torch.get_rng_state()
    memory = model.training_memory(x[:1])
    assert torch.equal(torch.get_rng_state(), state)  # the run's RNG streams are untouched
    real = saved_tensor_bytes(model, x)
    assert memory["per_step_fixed"] + memory["per_image"] * 32 == pytest.approx(real, rel=0.2)
    assert memory["per_seed"] == 4 * 4 * sum(p.numel() for p in model.parameters())


def test_cuda_seeds_per_cohort_from_the_free_memory(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * gib, 80 * gib))
    memory = {
        "per_image": 8 * 2**20,
        "per_step_fixed": 0,
        "per_seed": 2**28,
    }  # 8 MiB per image, 256 MiB per seed
    # budget 20 - 8 (10 % of 80) = 12 GiB, less 10 x 0.25 GiB; a step: 128 x 8 MiB x 1.5 = 1.5 GiB
    assert devices.seeds_per_cohort(torch.device("cuda", 0), 10, 128, memory) == 6
    assert devices.seeds_per_cohort(torch.device("cuda", 0), 4, 128, memory) == 4
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(1.5 * gib), 80 * gib))
    assert devices.seeds_per_cohort(torch.device("cuda", 0), 10, 128, memory) == 1  # never 0
    assert devices.seeds_per_cohort(torch.device("cpu"), 10, 128, memory) == 10


def test_cuda_seed_group_larger_than_the_free_memory_splits_with_identical_results(
    tiny_data_dir, tmp_path, monkeypatch, caplog
):
    def config(seed):
        return RunConfig(
            model="vae", dataset="mnist", normal_class=2, seed=seed, latent_dim=4, epochs=2,
            batch_size=16, lr=1e-3, lr_decay_epoch=0, lr_decay_factor=0.1, eval_every=1,
            eval_batch_size=50, train_limit=30, test_limit=40,
        )  # fmt: skip

    seeds = [0, 1, 2]
    alone = [train.train_one(config(s), tmp_path / "alone" / f"seed{s}", data_dir=tiny_data_dir,
                             device="cpu")
             for s in seeds]  # fmt: skip
    # a card with room for two of the three seeds' steps
    memory = {}

    def budget(device):
        return int(len(seeds) * memory["per_seed"] + 2.5 * devices.per_step_bytes(memory, 16))

    original = memory_cohorts

    def spy(runs, device, batch_size, train_x):
        memory.update(runs[0].model.training_memory(train_x[:1]))
        return original(runs, device, batch_size, train_x)

    monkeypatch.setattr(devices, "available_memory", budget)
    monkeypatch.setattr(cohort_module, "memory_cohorts", spy)
    caplog.set_level("INFO", logger="grad2vae.training.cohort")
    together = train.train_seeds([config(s) for s in seeds],
                                 [tmp_path / "group" / f"seed{s}" for s in seeds],
                                 data_dir=tiny_data_dir, device="cpu",
                                 seed_batching="sequential")  # fmt: skip
    assert "training them in sub-cohorts of 2, one after another" in caplog.text
    for one, grouped in zip(alone, together):
        assert grouped["auc"] == one["auc"] and grouped["auc_scores"] == one["auc_scores"]
    for s in seeds:
        assert (tmp_path / "group" / f"seed{s}" / "scores.csv.gz").read_bytes() == (
            tmp_path / "alone" / f"seed{s}" / "scores.csv.gz").read_bytes()  # fmt: skip


# --------------------------------------------------------------------------------------------
# the acceptance command


def test_cuda_acceptance_command_plans_and_refuses_without_a_gpu(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu-acceptance"
    dry = subprocess.run([sys.executable, str(script), "--dry-run", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert dry.returncode == 0 and "GPU tests" in dry.stdout and "-m gpu" in dry.stdout
    assert "--seeds-per-process 10" in dry.stdout and not any(tmp_path.iterdir())
    if not torch.cuda.is_available():
        real = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert real.returncode == 2 and "no CUDA device" in real.stderr


# --------------------------------------------------------------------------------------------
# the benchmark's GPU sections


def test_cuda_bench_keeps_what_it_measured_when_a_later_section_runs_out_of_memory(
    tmp_path, monkeypatch
):
    import json

    from grad2vae.bench import command as bench
    from grad2vae.cli import main

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(bench, "time_seed_groups", out_of_memory)
    path = tmp_path / "bench.json"
    with pytest.raises(torch.cuda.OutOfMemoryError):
        main(["bench", "--tiny", "--device", "cpu", "--models", "vae", "--output", str(path)])
    partial = json.loads(path.read_text())
    assert partial["complete"] is False and [r["variant"] for r in partial["rows"]] == []
    assert partial["peak_memory_bytes"] == {"mnist": {"vae": None}}  # measured before the crash


def test_cuda_bench_peak_memory_and_compile_sections(monkeypatch):
    from grad2vae.bench import gpu as bench_gpu

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(
        torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append("reset")
    )
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123)
    assert bench_gpu.peak_memory(torch.device("cuda", 0), lambda: calls.append("work")) == 123
    assert calls == ["reset", "work"]
    assert bench_gpu.peak_memory(torch.device("cpu"), lambda: calls.append("never")) is None

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None: compiled.append(mode) or fn)
    model = create_model("vae", 4)
    result = bench_gpu.time_compile(
        {"vae": model}, torch.rand(4, 1, 28, 28), repeats=1, steps=1, log=lambda _: None
    )
    assert compiled == ["reduce-overhead"]
    assert {
        "seconds_per_step_eager",
        "seconds_per_step_compiled",
        "speedup",
        "compile_seconds",
    } <= set(result["vae"])
    assert "skipped" in bench_gpu.time_tf32(
        {"vae": model}, torch.rand(4, 1, 28, 28), 1, 1, lambda _: None
    )
