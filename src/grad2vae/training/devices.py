"""Device choice for a run: CUDA when present, else the CPU; GPU slots for jobs side by side.

``resolve_device`` turns ``--device`` into a device: ``cpu`` -> the CPU; ``cuda:N`` -> exactly
that device (no slot); ``auto`` -> CUDA if ``torch.cuda.is_available()``, else the CPU; ``cuda``
-> like ``auto`` but an error when CUDA is missing. Every ``auto``/``cuda`` job takes a *GPU
slot*, a non-blocking ``fcntl.flock`` on a slot file in the slot dir (default
``.snakemake/gpu-slots``) held until the process ends; there are ``device_count x jobs_per_gpu``
slots, and a job that finds every slot taken waits, or raises ``UserError`` after ``timeout``
seconds if one is given. With several MIG instances in ``CUDA_VISIBLE_DEVICES`` a job takes one
and narrows ``CUDA_VISIBLE_DEVICES`` to it before CUDA initialises. docs/design-notes.md gives
every rule (slot files, MIG, file systems without ``flock``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import platform
import re
import socket
import time
from pathlib import Path
from typing import Iterator

import torch

from grad2vae.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_SLOT_DIR = Path(".snakemake") / "gpu-slots"

# cuBLAS needs this set before the CUDA context exists to run deterministically.
CUBLAS_WORKSPACE = ":4096:8"


@dataclasses.dataclass(frozen=True)
class GpuSlot:
    """A held slot: ``index`` among the slots, ``device_index`` the visible CUDA device."""

    index: int
    device_index: int
    path: Path
    fd: int


# Locks held for the process lifetime (closing the descriptor would release the lock).
_HELD: list[GpuSlot] = []


def _visible_entries() -> list[str]:
    raw = os.environ.get("CUDA_VISIBLE_DEVICES") or ""
    return [entry.strip() for entry in raw.split(",") if entry.strip()]


def _visible_ids(device_count: int) -> list[str]:
    """The physical identity of each visible device: its UUID where torch reports one (the same
    card has the same UUID in every job, whatever index a scheduler's cgroup gives it), else its
    CUDA_VISIBLE_DEVICES entry, else its index."""
    try:
        uuids = [str(torch.cuda.get_device_properties(index).uuid) for index in range(device_count)]
        if all(uuids) and len(set(uuids)) == device_count:
            return uuids
    except Exception:  # noqa: BLE001 - no UUID (old driver, mocked device): fall back below
        pass
    entries = _visible_entries()
    if len(entries) >= device_count:
        return entries[:device_count]
    return [str(index) for index in range(device_count)]


def _slot_filename(slot: int, device_count: int, visible_ids: list[str]) -> str:
    device_index = slot % device_count
    physical = re.sub(r"[^A-Za-z0-9_.-]", "_", visible_ids[device_index])
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname() or "localhost")
    return f"{host}-gpu{physical}-{slot // device_count}.lock"


#: errno values of a non-blocking flock on a lock that another process holds
BUSY_ERRNOS = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def try_flock(fd: int, path: Path, way_out: str) -> bool:
    """Take an exclusive non-blocking ``flock`` on ``fd`` (the file ``path``): True if taken,
    False if another process holds it. Any other failure is the file system's (no flock on some
    cluster file systems: ENOLCK, ENOSYS, EOPNOTSUPP), never "busy": a UserError that names it
    and ``way_out``. The caller closes ``fd`` when this does not return True."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in BUSY_ERRNOS:
            return False
        name = errno.errorcode.get(error.errno, str(error.errno))
        raise UserError(
            f"cannot lock {path}: the file system does not support flock there ({name}: "
            f"{error.strerror}); {way_out}"
        ) from None
    return True


def try_acquire_gpu_slot(
    n_slots: int, slot_dir: str | os.PathLike, device_count: int, ids: list[str] | None = None
) -> GpuSlot | None:
    """Take the first free one of ``n_slots`` slots without blocking; ``None`` if all are held.

    The lock stays held for the rest of the process (see ``release_gpu_slots`` for tests)."""
    if n_slots < 1 or device_count < 1:
        raise UserError(
            "need at least one GPU slot and one device "
            f"(got {n_slots} slots, {device_count} devices)"
        )
    slot_dir = Path(slot_dir)
    slot_dir.mkdir(parents=True, exist_ok=True)
    ids = ids or _visible_ids(device_count)
    for slot in range(n_slots):
        path = slot_dir / _slot_filename(slot, device_count, ids)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        way_out = (
            "put the GPU slot locks on a local disk with "
            "--slot-dir (e.g. --slot-dir /tmp/gpu-slots)"
        )
        try:
            taken = try_flock(fd, path, way_out)
        except UserError:
            os.close(fd)
            raise
        if not taken:
            os.close(fd)
            continue
        # For people looking at the folder: who holds it. Not used for locking.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        held = GpuSlot(index=slot, device_index=slot % device_count, path=path, fd=fd)
        _HELD.append(held)
        return held
    return None


def acquire_gpu_slot(
    n_slots: int,
    slot_dir: str | os.PathLike,
    device_count: int,
    timeout: float | None = None,
    poll_seconds: float = 2.0,
    ids: list[str] | None = None,
) -> GpuSlot:
    """Take a free slot, waiting while all are held; ``UserError`` after ``timeout`` seconds.
    ``ids``: the devices' identities for the slot file names (default: ``_visible_ids``)."""
    start = time.monotonic()
    announced = False
    while True:
        slot = try_acquire_gpu_slot(n_slots, slot_dir, device_count, ids)
        if slot is not None:
            if announced:
                log.info("GPU slot %d free after %.0f s", slot.index, time.monotonic() - start)
            return slot
        waited = time.monotonic() - start
        if timeout is not None and waited >= timeout:
            raise UserError(
                f"all {n_slots} GPU slots in {slot_dir} are held by other processes "
                f"(waited {waited:.0f} s); wait for them, raise --gpu-slots, or pick a device "
                "with --device cuda:N"
            )
        if not announced:
            log.info("all %d GPU slots in %s are busy; waiting for one to free", n_slots, slot_dir)
            announced = True
        time.sleep(
            poll_seconds if timeout is None else min(poll_seconds, max(0.05, timeout - waited))
        )


def release_gpu_slots() -> None:
    """Drop every slot this process holds (tests; a normal run keeps its slot until it exits)."""
    global _MIG_INSTANCE
    _MIG_INSTANCE = None
    while _HELD:
        slot = _HELD.pop()
        os.close(slot.fd)


#: the MIG instance (its CUDA_VISIBLE_DEVICES entry) this process took, if any
_MIG_INSTANCE: str | None = None


def mig_instance() -> str | None:
    """The MIG instance this process was given by ``resolve_device`` (recorded in metrics.json)."""
    return _MIG_INSTANCE


def claim_mig_instance(
    entries: list[str],
    slot_dir: str | os.PathLike,
    jobs_per_gpu: int = 1,
    timeout: float | None = None,
    poll_seconds: float = 2.0,
) -> str:
    """One of the MIG instances in ``entries`` (CUDA_VISIBLE_DEVICES of MIG UUIDs), by the same
    slot locks as whole cards: a process sees only one MIG instance, so without this every job
    would run on the first while the others idle."""
    slot = acquire_gpu_slot(
        len(entries) * jobs_per_gpu, slot_dir, len(entries), timeout=timeout,
        poll_seconds=poll_seconds, ids=entries,
    )  # fmt: skip
    return entries[slot.device_index]


def resolve_device(
    spec: str = "auto",
    gpu_slots: int | None = None,
    slot_dir: str | os.PathLike = DEFAULT_SLOT_DIR,
    slot_timeout: float | None = None,
    jobs_per_gpu: int = 1,
) -> torch.device:
    """Turn ``--device`` (auto | cpu | cuda | cuda:N) into a device, taking a GPU slot if needed.

    ``jobs_per_gpu``: how many jobs may share one card (default 1: never); the slots are the
    visible cards times that. Several MIG instances in CUDA_VISIBLE_DEVICES: the job takes one
    and narrows CUDA_VISIBLE_DEVICES to it before CUDA initialises."""
    global _MIG_INSTANCE
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if spec != "auto" and match is None:
        raise UserError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N")
    if jobs_per_gpu < 1:
        raise UserError(f"--jobs-per-gpu must be at least 1 (got {jobs_per_gpu})")
    entries = _visible_entries()
    several_mig = len(entries) > 1 and all(entry.upper().startswith("MIG-") for entry in entries)
    if several_mig and (match is None or match.group(1) is None) and _MIG_INSTANCE is None:
        # Before any CUDA call: CUDA reads CUDA_VISIBLE_DEVICES once, when it initialises.
        _MIG_INSTANCE = claim_mig_instance(entries, slot_dir, jobs_per_gpu, timeout=slot_timeout)
        os.environ["CUDA_VISIBLE_DEVICES"] = _MIG_INSTANCE
        log.info(
            "MIG: took instance %s of %d (CUDA_VISIBLE_DEVICES narrowed to it)",
            _MIG_INSTANCE,
            len(entries),
        )
    available = torch.cuda.is_available()
    if not available:
        if spec == "auto":
            if os.environ.get("CUDA_VISIBLE_DEVICES"):
                log.info(
                    "CUDA_VISIBLE_DEVICES=%s but CUDA is not available: running on the CPU",
                    os.environ["CUDA_VISIBLE_DEVICES"],
                )
            return torch.device("cpu")
        raise UserError(
            f"--device {spec} asked for CUDA but torch "
            "sees no CUDA device; use --device auto or cpu"
        )
    count = torch.cuda.device_count()
    if match is not None and match.group(1) is not None:
        index = int(match.group(1))
        if index >= count:
            raise UserError(
                f"--device {spec}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
            )
        return torch.device("cuda", index)
    if gpu_slots is not None and gpu_slots < 1:
        raise UserError(f"--gpu-slots must be at least 1 (got {gpu_slots})")
    allowed = count * jobs_per_gpu
    if gpu_slots is not None and gpu_slots > allowed:
        raise UserError(
            f"--gpu-slots {gpu_slots} is more than the {count} visible GPU(s) x {jobs_per_gpu} "
            "job(s) per GPU: jobs would share cards; lower --gpu-slots (with Snakemake: "
            f"--resources gpu={allowed}) or allow sharing with --jobs-per-gpu "
            f"{-(-gpu_slots // count)} (config: train.jobs_per_gpu)"
        )
    n_slots = gpu_slots if gpu_slots is not None else allowed
    if _MIG_INSTANCE is not None:
        return torch.device("cuda", 0)  # its slot is the MIG instance's, taken above
    # Always a slot, also with one visible card: two jobs started side by side (Snakemake's
    # --resources gpu=2 on a one-GPU machine) must not share it unless jobs_per_gpu says so. The
    # slot files are named by the card's UUID, so jobs granted different cards never wait.
    slot = acquire_gpu_slot(n_slots, slot_dir, count, timeout=slot_timeout)
    log.info(
        "took GPU slot %d of %d (%s) -> cuda:%d", slot.index, n_slots, slot.path, slot.device_index
    )
    return torch.device("cuda", slot.device_index)


#: allowance on top of the saved tensors for what a step holds besides them (temporaries, the
#: allocator's rounding and fragmentation); and what is left free on the card for the CUDA
#: context, cuBLAS/cuDNN workspaces and the evaluation: max(1 GiB, 10 % of the card)
ACTIVATION_ALLOWANCE = 1.5
MIN_FREE_BYTES = 1 << 30
FREE_FRACTION = 0.10


def available_memory(device: torch.device) -> int | None:
    """Bytes a seed group may use on ``device``: the card's free memory less the margin above;
    None on the CPU (host memory is not planned here)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    return int(free - max(MIN_FREE_BYTES, FREE_FRACTION * total))


def per_step_bytes(memory: dict[str, int], batch_size: int) -> float:
    """Activation memory of one training step of one seed: its saved tensors (a model's
    ``training_memory``) x ``ACTIVATION_ALLOWANCE``."""
    return (
        memory.get("per_step_fixed", 0) + batch_size * memory["per_image"]
    ) * ACTIVATION_ALLOWANCE


def seeds_per_cohort(
    device: torch.device, n_seeds: int, batch_size: int, memory: dict[str, int]
) -> int:
    """How many of ``n_seeds`` runs can step together on ``device`` (all their weights and
    optimizer states stay on it; a step's activations per seed are ``per_step_bytes``). At
    least 1; ``n_seeds`` when the device does not say how much memory it has."""
    budget = available_memory(device)
    if budget is None:
        return n_seeds
    per_step = per_step_bytes(memory, batch_size)
    fitting = (budget - n_seeds * memory["per_seed"]) // max(per_step, 1)
    return int(max(1, min(n_seeds, fitting)))


def device_name(device: torch.device | str) -> str:
    """A human name for the device: the GPU's name, else the CPU model."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic algorithms wherever the device offers them (a warning where it does not)
    and full float32 (no TF32) inside the block; torch's previous settings are restored
    afterwards. TF32: PyTorch runs cuDNN convolutions in TF32 by default on Ampere and later
    GPUs; the project allows it only once its effect on the AUCs is measured, so it is off."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # The long-standing flags, not torch 2.9's fp32_precision: mixing the two APIs makes every
    # later read of the old flags (torch.backends.cudnn.flags(), ...) raise.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before[4:]


ASSUMPTIONS: tuple[str, ...] = (
    "device: CUDA when torch sees one, else the CPU; a CUDA_VISIBLE_DEVICES set by a scheduler "
    "is never changed — project requirement: the scheduler's allocation is respected",
    "float32 everywhere, TF32 off on GPUs (PyTorch's default runs cuDNN convolutions in TF32 "
    "on Ampere and later) — project requirement: TF32 only once its effect on the AUCs is "
    "measured, which needs a GPU and has not been done",
    "GPU jobs: each takes the first free of N flock'ed slot files (N = visible devices x "
    "jobs_per_gpu, default 1 job per GPU, also with one visible GPU), slot i -> cuda:(i mod "
    "count); a job finding all slots busy waits for one — project requirement (waiting rather "
    "than failing is our choice: the kernel frees a dead job's lock, so waiting cannot deadlock)",
    "several MIG instances in CUDA_VISIBLE_DEVICES: each job takes one by the same slot locks and "
    "sees only it — a CUDA process sees only one MIG instance",
    "several seeds in one process: the group steps together only as many seeds as fit in the "
    "card's free memory less max(1 GiB, 10 %), counting per seed the saved tensors of one step "
    "(measured on the model, training_memory) x 1.5 plus 4 x the parameters; the rest train "
    "after them in further sub-cohorts, logged — project requirement: a seed group must fit in "
    "the card's memory",
)


#: environment variable: "default" leaves the C allocator as it is (see ``keep_freed_memory``)
MALLOC_ENV = "GRAD2VAE_MALLOC"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> str:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    Why: a Grad2VAE training step on the CPU allocates and frees tensors of 100-200 MB (the
    N*d derivative maps). glibc serves every block above 32 MB with a fresh ``mmap`` and unmaps it
    on free, so each step page-faults and zero-fills those pages again; measured on the
    development CPU this was a quarter of the ``explicit`` step's time (docs/benchmarks.md).
    With ``M_MMAP_MAX = 0`` every block comes from the heap, and a high ``M_TRIM_THRESHOLD`` keeps
    freed heap memory mapped, so the next step reuses warm pages. Values are unaffected; the cost
    is that the process keeps its peak memory until it exits (about +10 % resident memory for a
    Grad2VAE run). It is what PyTorch's CPU tuning guides get by preloading jemalloc/tcmalloc,
    without a library to install.

    Called by the trainer and the benchmark for CPU work. Returns what was done, recorded in
    their output: "kept" (applied), "default" (``GRAD2VAE_MALLOC=default``: not applied), or
    "unavailable (...)" where the C library is not glibc."""
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        return "default"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return (
            f"unavailable ({platform.system()} {platform.libc_ver()[0] or 'non-glibc'} C library)"
        )
    import ctypes

    libc = ctypes.CDLL(None)  # the C library this process already uses
    if not libc.mallopt(_M_MMAP_MAX, 0) or not libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1):
        return "unavailable (mallopt refused)"
    return "kept"
