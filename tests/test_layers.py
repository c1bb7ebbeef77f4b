"""The layers of the package hold, and the checks that say so can fail.

`make lint` runs the import-linter contracts of pyproject.toml ([tool.importlinter]) over the
code as written; these tests run the same contracts over a copy of the package with one import
added that breaks each, and check at run time that the stages after training load no torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "grad2vae"
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent))

CONTRACTS = {
    contract["id"]: contract
    for contract in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
}

# contract id -> (module file of the copy, the import that breaks it)
BREAKS = {
    "torch-free-after-training": ("analysis/tables.py", "import torch"),
    "torch-free-after-training-indirect": (
        "report/sections.py",
        "import grad2vae.training.lifecycle",
    ),
    "no-command-imports": ("analysis/tables.py", "import grad2vae.figures.command"),
    "shared-below-stages": ("layout.py", "import grad2vae.analysis.tables"),
}


def lint_imports(source_root: Path, contract: str | None = None) -> subprocess.CompletedProcess:
    """lint-imports over the package under ``source_root`` with the project's contracts."""
    command = [LINT_IMPORTS, "--no-cache", "--config", str(ROOT / "pyproject.toml")]
    if contract:
        command += ["--contract", contract]
    env = dict(os.environ, PYTHONPATH=str(source_root))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture()
def package_copy(tmp_path: Path) -> Path:
    """A copy of src/ (the package only) that lint-imports sees instead of the installed one."""
    shutil.copytree(PACKAGE, tmp_path / "grad2vae", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_the_contracts_hold_for_the_code_as_written():
    assert LINT_IMPORTS, "lint-imports is missing: pip install -e '.[test]'"
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CONTRACTS)} kept, 0 broken" in result.stdout


def test_every_contract_is_broken_by_one_forbidden_import(package_copy):
    for break_id in BREAKS:
        contract = break_id.removesuffix("-indirect")
        assert contract in CONTRACTS, f"no contract {contract} in pyproject.toml"
    for break_id, (module, line) in BREAKS.items():
        contract = break_id.removesuffix("-indirect")
        path = package_copy / "grad2vae" / module
        original = path.read_text()
        path.write_text(original + f"\n{line}  # added by the test: breaks {contract}\n")
        try:
            result = lint_imports(package_copy, contract)
        finally:
            path.write_text(original)
        assert result.returncode != 0, f"{break_id}: {line} in {module} went unnoticed"
        assert "BROKEN" in result.stdout and "0 broken" not in result.stdout, result.stdout
    # and the copy, restored, passes: it was the added import each time
    assert lint_imports(package_copy).returncode == 0


AFTER_TRAINING = ("grad2vae.analysis", "grad2vae.figures", "grad2vae.report")


def test_the_stages_after_training_load_no_torch(tmp_path):
    """What the static contract says, at run time: `grad2vae report --help` and every module of
    analysis/, figures/ and report/ load without torch, and so do aggregate, figures and report
    run over finished runs (a CAE + OC-SVM with its oracle bound among them)."""
    from test_aggregate import write_fake_run

    from grad2vae.models.cae_ocsvm import GRID_KEYS

    results = tmp_path / "results"
    for model in ("grad2vae", "vae", "cae_ocsvm"):
        for normal_class in (0, 1):
            extra = {key: 0.6 for key in GRID_KEYS} if model == "cae_ocsvm" else None
            write_fake_run(results, "mnist", model, normal_class, 0, auc_extra=extra)
    grid = ["--datasets", "mnist", "--models", "grad2vae", "vae", "cae_ocsvm",
            "--normal-classes", "0", "1", "--seeds", "0"]  # fmt: skip
    code = f"""
import importlib, pkgutil, sys
from grad2vae.cli import main

def torch_modules():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))

for command in ("report", "aggregate", "figures"):
    try:
        main([command, "--help"])
    except SystemExit:
        pass
    assert not torch_modules(), command + " --help: " + str(torch_modules()[:3])
for name in {AFTER_TRAINING!r}:
    package = importlib.import_module(name)
    for module in pkgutil.walk_packages(package.__path__, name + "."):
        importlib.import_module(module.name)
assert not torch_modules(), "imports: " + str(torch_modules()[:3])
results = {str(results)!r}
assert main(["aggregate", "--results-dir", results] + {grid!r}) == 0
assert main(["figures", "--results-dir", results, "--dpi", "40"]) == 0
assert main(["report", "--results-dir", results, "--report-dir", results + "/report"]) == 0
assert not torch_modules(), "running them: " + str(torch_modules()[:3])
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (results / "report" / "index.html").is_file()
