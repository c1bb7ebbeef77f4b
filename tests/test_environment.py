"""The pins in pyproject.toml, the conda environment and the installed packages agree."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        match = PIN.match(requirement.strip())
        assert match, f"{requirement!r} is not an exact pin (name==version)"
        pins[match.group(1).lower()] = match.group(2)
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_runtime_dependency_is_an_exact_pin():
    pins = _pins(_pyproject()["project"]["dependencies"])
    assert pins["torch"] == "2.14.1"
    assert pins["torchvision"] == "0.29.1"
    assert pins["snakemake"].startswith("9.")
    for name in ("pandas", "scikit-learn", "seaborn", "jinja2", "snakemake-executor-plugin-slurm"):
        assert name in pins


def test_test_extras_are_exact_pins():
    _pins(_pyproject()["project"]["optional-dependencies"]["test"])


def test_conda_environments_pin_the_same_versions():
    runtime = _pins(_pyproject()["project"]["dependencies"])
    env_files = sorted((ROOT / "envs").glob("*.yaml"))
    assert env_files, "no conda environment under envs/"
    for env_file in env_files:
        env = yaml.safe_load(env_file.read_text())
        pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        conda_pins = _pins([r for r in pip_section if not r.startswith("-e")])
        assert conda_pins == runtime, f"{env_file.name} disagrees with pyproject.toml"
        python = next(
            d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")
        )
        assert python == "python=3.11"


def test_installed_versions_match_the_pins():
    pins = _pins(_pyproject()["project"]["dependencies"])
    for name, version in pins.items():
        installed = importlib.metadata.version(name)
        # CUDA builds carry a local tag, e.g. 2.14.1+cu130
        assert installed.split("+")[0] == version, (
            f"{name}: installed {installed}, pinned {version}"
        )
