# The README's two commands: `make quick` (set up, then run the CPU quick preset) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Snakemake's rules call the `grad2vae` command: the venv's bin must come first on PATH.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup quick test lint clean-results

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $(STAMP)

quick: $(STAMP)
	bash scripts/ensure-apt-lists
	$(BIN)/snakemake --cores 2 --configfile presets/quick.yaml
	@echo "report: $(CURDIR)/report/index.html"

test: $(STAMP)
	bash scripts/install-system-deps
	$(BIN)/python -m pytest -ra

# the Python scripts (no .py ending, so ruff is given them by name)
PY_SCRIPTS := scripts/gpu-acceptance scripts/outputs-digest

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(BIN)/ruff check src tests $(PY_SCRIPTS)
	$(BIN)/ruff format --check src tests $(PY_SCRIPTS)
	# the layers: analysis, figures and report torch-free; no command module imported (pyproject.toml)
	$(BIN)/lint-imports --no-cache

clean-results:
	rm -rf results/* report/*
	touch results/.gitkeep report/.gitkeep
