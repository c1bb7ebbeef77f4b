"""The Slurm profiles on a real one-node Slurm cluster (issue 7).

`scripts/slurm-single-node start` brings up munged, slurmctld and slurmd on this machine: one
node `localhost`, partition `gpu`, two fake GPUs (`Gres=gpu:2`, backed by mknod device files), no
accounting database. The tests then run a tiny grid through the users' profile exactly as
committed, with the test-only overlay for a cluster without accounting:

    snakemake --profile profiles/slurm --profile profiles/slurm-test

and check that

- every training run ran as a Slurm job of partition `gpu` granted one GPU (`--gpus=1`), whose
  job step saw that GPU in CUDA_VISIBLE_DEVICES (recorded from inside the step by the cluster's
  TaskProlog, and logged by the trainer), and that training fell back to the CPU;
- aggregation, figures and report ran locally (no Slurm job of theirs) and the report exists;
- a training job cancelled mid-run with `scancel` is retried per the profile (`retries`) and
  continues from its checkpoint;
- the metrics, per-epoch history and test scores equal those of a local run of the same
  configuration through `snakemake --profile profiles/local` (the interrupted run included);
- profiles/slurm-grouped puts the seeds of one model, dataset and class into one Slurm job.

The daemons are stopped at the end, also when a test fails. Where Slurm cannot run (not root, no
slurm-wlm/munge, a real site's /etc/slurm/slurm.conf) the tests skip with the reason; under
CI=true they fail instead.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import unavailable, write_synthetic_dataset

from grad2vae.layout import RUN_DIR, TRAIN_LOG

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-single-node"
PROFILES = REPO / "profiles"
SLURM_TOOLS = ("slurmctld", "slurmd", "munged", "sbatch", "srun", "squeue", "scontrol", "scancel")
LOCAL_RULES = ("data", "workflow_config", "aggregate", "figures", "report", "all")

# The tiny grid: one dataset, one class, one seed, two fast models; 12 epochs with a checkpoint
# after each, so that a run can be cancelled between checkpoints.
EPOCHS = 12
GRID = dict(datasets=["mnist"], normal_classes=[0], seeds=[0], models=["cae", "vae"])
CANCELLED_RUN = dict(dataset="mnist", model="vae", normal_class=0, seed=0)


def _which(tool: str) -> str | None:
    return shutil.which(tool) or (
        f"/usr/sbin/{tool}" if os.access(f"/usr/sbin/{tool}", os.X_OK) else None
    )


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster; its state dir (logs, jobenv/ records). Stopped afterwards."""
    if not sys.platform.startswith("linux"):
        unavailable("the one-node Slurm cluster needs Linux")
    if os.geteuid() != 0:
        unavailable("starting slurmctld/slurmd/munged needs root (run as root, or in CI)")
    missing = [tool for tool in SLURM_TOOLS if _which(tool) is None]
    if missing:
        unavailable(
            "Slurm is not installed (missing "
            f"{', '.join(missing)}): apt-get install slurm-wlm munge"
        )
    state = tmp_path_factory.mktemp("slurm-state")
    env = dict(os.environ, GRAD2VAE_SLURM_STATE=str(state))

    def stop():
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)

    try:
        started = subprocess.run(
            [str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180
        )
        if started.returncode != 0:
            stop()
            unavailable(f"scripts/slurm-single-node start failed:\n{started.stderr[-3000:]}")
        yield state
    finally:
        stop()


# --------------------------------------------------------------------------------------------
# helpers


def tiny_config(data_dir: Path, **changes) -> dict:
    config = dict(
        results_dir="results",
        report_dir="report",
        data=dict(dir=str(data_dir)),  # the synthetic files are there: the data rule does not run
        **GRID,
        train=dict(
            epochs=EPOCHS,
            batch_size=32,
            eval_every=1,
            eval_batch_size=100,
            checkpoint_every=1,
            device="auto",  # no CUDA here: the CPU, also when Slurm sets CUDA_VISIBLE_DEVICES
        ),
        resources=dict(train=dict(threads=1, gpu=1, mem_mb=1000, runtime=10)),
        figures=dict(roc_class=0, fig6_epochs=EPOCHS),
        report=dict(title="Slurm test"),
    )
    config.update(changes)
    return config


def snakemake(workdir: Path, config: dict, profiles: list[str], *targets: str, timeout: int = 600):
    """Start `snakemake --profile ...` in workdir (returns the Popen; output in
    workdir/snakemake.out)."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.test.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ)
    for name in ("CUDA_VISIBLE_DEVICES", "SNAKEMAKE_PROFILE"):
        env.pop(name, None)
    # grad2vae and snakemake of this environment also inside the Slurm jobs (sbatch --export=ALL)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(workdir / "config.test.yaml"),
        *[arg for profile in profiles for arg in ("--profile", str(PROFILES / profile))],
        *targets,
    ]  # fmt: skip
    with open(workdir / "snakemake.out", "w") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    process.output_path = workdir / "snakemake.out"
    process.timeout = timeout
    process.started = time.monotonic()
    return process


def end(process) -> None:
    """Stop a snakemake that is still running (SIGTERM: it cancels its Slurm jobs first)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def finish(process) -> str:
    """Wait for a snakemake started by snakemake(); its output; an assertion error if it failed."""
    try:
        process.wait(timeout=max(1, process.timeout - (time.monotonic() - process.started)))
    except subprocess.TimeoutExpired:
        end(process)
        pytest.fail(f"snakemake timed out; output:\n{process.output_path.read_text()[-6000:]}")
    output = process.output_path.read_text()
    assert process.returncode == 0, f"snakemake failed ({process.returncode}):\n{output[-6000:]}"
    return output


def run_keys(grid: dict):
    for dataset in grid["datasets"]:
        for normal_class in grid["normal_classes"]:
            for model in grid["models"]:
                for seed in grid["seeds"]:
                    yield dict(dataset=dataset, model=model, normal_class=normal_class, seed=seed)


def slurm_comment(key: dict) -> str:
    """The --comment the executor gives a training job: its wildcards in the rule's order."""
    names = re.findall(r"\{(\w+)\}", RUN_DIR)
    return "rule_train_wildcards_" + "_".join(str(key[name]) for name in names)


def scontrol_job(job_id: str) -> dict[str, str]:
    """`scontrol show job -d` as a dict (the record lives MinJobAge=300 s after the job ends)."""
    result = subprocess.run(
        ["scontrol", "show", "job", "-d", job_id], capture_output=True, text=True, timeout=30
    )
    fields = {}
    for token in re.split(r"\s+", result.stdout.strip()):
        name, sep, value = token.partition("=")
        if sep and name not in fields:
            fields[name] = value
    return fields


class SlurmWatcher(threading.Thread):
    """Polls squeue while a workflow runs: every job it saw (state, comment, scontrol fields);
    optionally scancels the training job of one run as soon as that run wrote a checkpoint."""

    def __init__(self, cancel_run_dir: Path | None = None, cancel_comment: str | None = None):
        super().__init__(daemon=True)
        self.jobs: dict[str, dict] = {}
        self.cancel_run_dir = cancel_run_dir
        self.cancel_comment = cancel_comment
        self.cancelled: dict | None = None
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def poll(self):
        result = subprocess.run(
            ["squeue", "--noheader", "--states=all", "--format=%i|%j|%T|%k"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        for line in result.stdout.splitlines():
            job_id, name, state, comment = (line.split("|", 3) + ["", "", ""])[:4]
            if name == "wrap":  # not a Snakemake job
                continue
            job = self.jobs.setdefault(
                job_id, {"id": job_id, "comment": comment.strip(), "name": name}
            )
            job["state"] = state
            if "scontrol" not in job:
                job["scontrol"] = scontrol_job(job_id)
            if (
                self.cancel_run_dir is not None
                and self.cancelled is None
                and state == "RUNNING"
                and job["comment"] == self.cancel_comment
                and (self.cancel_run_dir / "checkpoint.pt").exists()
            ):
                # epochs done so far (read first: the cancelled job's Snakemake deletes its outputs)
                history = self.cancel_run_dir / "history.tsv"
                rows = len(history.read_text().splitlines()) - 1 if history.exists() else None
                subprocess.run(["scancel", job_id], check=True, timeout=30)
                self.cancelled = {"id": job_id, "epochs_done": rows}

    def run(self):
        try:
            while not self.stopping.is_set():
                self.poll()
                self.stopping.wait(0.1)
            self.poll()
        except BaseException as error:  # reported by the test
            self.error = error

    def stop(self):
        self.stopping.set()
        self.join(timeout=60)
        if self.error is not None:
            raise self.error


def jobs_of_run(watcher: SlurmWatcher, output: str) -> list[dict]:
    """The Slurm jobs of one Snakemake run: the executor names them after the run's ID."""
    match = re.search(r"SLURM run ID: (\S+)", output)
    assert match, f"no SLURM run ID in the output:\n{output[-3000:]}"
    jobs = [job for job in watcher.jobs.values() if job["name"] == match.group(1)]
    assert jobs, f"no Slurm job of run {match.group(1)} seen: {watcher.jobs}"
    return jobs


def jobenv(state: Path, job_id: str, step: str) -> dict[str, str]:
    """What the TaskProlog recorded inside one job step (scripts/slurm-single-node)."""
    path = state / "jobenv" / f"{job_id}.{step}"
    assert path.exists(), f"no TaskProlog record {path}: Slurm job {job_id} step {step} did not run"
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def history_without_timing(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def scores(path: Path) -> bytes:
    with gzip.open(path, "rb") as handle:
        return handle.read()


RESULT_KEYS = (
    "auc", "auc_reconstruction", "epochs", "parameters", "config_hash", "train_images",
    "test_images", "test_anomalies", "main_score", "threads", "device_type",
)  # fmt: skip


def assert_same_results(run_a: Path, run_b: Path):
    metrics_a = json.loads((run_a / "metrics.json").read_text())
    metrics_b = json.loads((run_b / "metrics.json").read_text())
    for key in RESULT_KEYS:
        assert metrics_a.get(key) == metrics_b.get(key), f"{key}: {run_a} vs {run_b}"
    assert history_without_timing(run_a / "history.tsv") == history_without_timing(
        run_b / "history.tsv"
    )
    assert scores(run_a / "scores.csv.gz") == scores(run_b / "scores.csv.gz"), (
        f"scores: {run_a} vs {run_b}"
    )


@pytest.fixture(scope="module")
def slurm_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm-data")
    write_synthetic_dataset(root, "mnist", train_per_class=30, test_per_class=10, seed=0)
    return root


# --------------------------------------------------------------------------------------------
# the tests: the profiles as files (no Slurm needed)


def load_profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def test_profiles_say_what_the_issue_asks():
    slurm = load_profile("slurm")
    assert slurm["executor"] == "slurm"
    assert slurm["set-resources"]["train"]["gpu"] == 1  # -> sbatch --gpus=1
    for key in ("runtime", "mem_mb"):
        assert slurm["set-resources"]["train"][key] > 0
    assert slurm["default-resources"]["slurm_partition"]
    assert slurm["retries"] >= 1 and 1 <= slurm["jobs"] <= 1000
    # test-only settings stay out of the users' profile
    assert not any(
        key.startswith(("slurm-no-account", "slurm-status-command", "slurm-init")) for key in slurm
    )
    # after Ctrl-C: resume what was interrupted instead of stopping on IncompleteFilesException
    assert load_profile("local") == {
        "cores": 8,
        "resources": {"gpu": 2},
        "rerun-incomplete": True,
    }
    test = load_profile("slurm-test")
    assert test["slurm-no-account"] is True and test["slurm-status-command"] == "squeue"
    assert test["slurm-init-seconds-before-status-checks"] <= 5
    assert "executor" not in test and "set-resources" not in test  # an overlay on profiles/slurm


def test_grouped_profile_makes_one_job_per_model_dataset_class(tmp_path):
    """Dry run of config.yaml's 800 runs with profiles/slurm-grouped: 80 group jobs, each holding
    the 10 seeds of one (dataset, model, normal class)."""
    result = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "-n",
            "--snakefile", str(REPO / "Snakefile"), "--configfile", str(REPO / "config.yaml"),
            "--directory", str(tmp_path),  # an empty folder: no run is done yet
            "--profile", str(PROFILES / "slurm"), "--profile", str(PROFILES / "slurm-grouped"),
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout + result.stderr
    groups: dict[str, list[dict]] = {}
    current = None
    for line in output.splitlines():
        header = re.search(r"Group job (\S+) \(", line)
        if header:
            current = groups.setdefault(header.group(1), [])
        elif current is not None and line.strip().startswith("wildcards:"):
            current.append(
                dict(item.split("=") for item in line.split(":", 1)[1].strip().split(", "))
            )
        elif line and not line.startswith((" ", "[")):
            current = None
    assert len(groups) == 80, sorted(groups)
    for name, members in groups.items():
        assert len(members) == 10, (name, members)
        first = members[0]
        assert {m["seed"] for m in members} == {str(seed) for seed in range(10)}, name
        for key in ("dataset", "model", "normal_class"):
            assert {m[key] for m in members} == {first[key]}, (name, members)
        assert name == f"seeds_{first['dataset']}_{first['model']}_{first['normal_class']}"


# --------------------------------------------------------------------------------------------
# the tests on a real Slurm


@pytest.mark.slow
def test_profiles_slurm_on_a_real_slurm(slurm_cluster, slurm_data, tmp_path):
    started = time.monotonic()
    config = tiny_config(slurm_data)
    keys = list(run_keys(GRID))
    on_slurm, on_workstation = tmp_path / "slurm", tmp_path / "local"

    # The local reference run (profiles/local: --cores 8 --resources gpu=2) goes side by side.
    local = snakemake(on_workstation, config, ["local"])
    watcher = SlurmWatcher(
        cancel_run_dir=on_slurm / "results" / RUN_DIR.format(**CANCELLED_RUN),
        cancel_comment=slurm_comment(CANCELLED_RUN),
    )
    watcher.start()
    try:
        output = finish(snakemake(on_slurm, config, ["slurm", "slurm-test"]))
        slurm_seconds = time.monotonic() - started
        finish(local)
    finally:
        watcher.stop()
        end(local)
    print(f"slurm run {slurm_seconds:.0f} s, both {time.monotonic() - started:.0f} s")

    # The cancel happened mid-run, and the profile's retry resubmitted the job.
    assert watcher.cancelled is not None, (
        "the training job to cancel was never seen running with a checkpoint"
    )
    assert 1 <= watcher.cancelled["epochs_done"] < EPOCHS, watcher.cancelled
    assert watcher.jobs[watcher.cancelled["id"]]["state"] == "CANCELLED"
    assert "Trying to restart job" in output, "the cancelled job was not retried"

    jobs = jobs_of_run(watcher, output)
    # Local rules stayed local: every Slurm job is a training job.
    assert all(job["comment"].startswith("rule_train_wildcards_") for job in jobs), [
        j["comment"] for j in jobs
    ]
    for rule in LOCAL_RULES:
        assert not any(job["comment"].startswith(f"rule_{rule}") for job in jobs)

    for key in keys:
        run_dir = on_slurm / "results" / RUN_DIR.format(**key)
        run_jobs = [job for job in jobs if job["comment"] == slurm_comment(key)]
        completed = [job for job in run_jobs if job["state"] == "COMPLETED"]
        assert len(completed) == 1, (key, run_jobs)
        for job in run_jobs:
            fields = job["scontrol"]
            assert fields.get("Partition") == "gpu", fields  # profiles/slurm's partition
            assert fields.get("TresPerJob") == "gres:gpu:1", fields  # --gpus=1
        job = completed[0]
        # Inside the job: the batch step was granted one GPU, and the step that ran the trainer
        # (srun, step 0) saw it as CUDA_VISIBLE_DEVICES.
        batch, step = (
            jobenv(slurm_cluster, job["id"], "batch"),
            jobenv(slurm_cluster, job["id"], "0"),
        )
        assert batch.get("SLURM_JOB_GPUS") in ("0", "1"), batch
        assert step.get("CUDA_VISIBLE_DEVICES") == batch["SLURM_JOB_GPUS"], (batch, step)
        # The trainer saw that CUDA_VISIBLE_DEVICES and fell back to the CPU.
        log = (on_slurm / "results" / TRAIN_LOG.format(**key)).read_text()
        assert (
            f"CUDA_VISIBLE_DEVICES={step['CUDA_VISIBLE_DEVICES']} but CUDA is not available" in log
        ), log
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["device_type"] == "cpu"
        if key == CANCELLED_RUN:
            assert len(run_jobs) == 2, run_jobs  # cancelled, then the retry
            assert metrics["resumes"] >= 1, metrics
            assert re.search(r"resuming after epoch \d+", log), log
        else:
            assert metrics["resumes"] == 0
        assert not (run_dir / "checkpoint.pt").exists()
        # The same numbers as on the workstation, to the last bit (the resumed run included).
        assert_same_results(run_dir, on_workstation / "results" / RUN_DIR.format(**key))

    # The report, from the local rules.
    assert (on_slurm / "report" / "index.html").stat().st_size > 0
    with open(on_slurm / "results" / "aggregate" / "status.csv", newline="") as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    assert statuses == ["complete"] * len(keys)


@pytest.mark.slow
def test_profile_slurm_grouped_one_job_per_model_dataset_class(slurm_cluster, slurm_data, tmp_path):
    """profiles/slurm-grouped: the seeds of one (dataset, model, class) train one after another in
    one Slurm job holding one GPU."""
    grid = dict(datasets=["mnist"], normal_classes=[0], seeds=[0, 1], models=["cae"])
    config = tiny_config(slurm_data, **grid)
    config["train"].update(epochs=2, checkpoint_every=0)
    keys = list(run_keys(grid))
    targets = [f"results/{RUN_DIR.format(**key)}/metrics.json" for key in keys]
    watcher = SlurmWatcher()
    watcher.start()
    try:
        output = finish(
            snakemake(tmp_path, config, ["slurm", "slurm-grouped", "slurm-test"], *targets)
        )
    finally:
        watcher.stop()
    jobs = jobs_of_run(watcher, output)
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["state"] == "COMPLETED"
    assert job["scontrol"].get("TresPerJob") == "gres:gpu:1", job
    # one srun step per seed, each on the job's one GPU
    gpu = jobenv(slurm_cluster, job["id"], "batch")["SLURM_JOB_GPUS"]
    for step in range(len(keys)):
        assert jobenv(slurm_cluster, job["id"], str(step)).get("CUDA_VISIBLE_DEVICES") == gpu
    for target in targets:
        assert (tmp_path / target).exists()
