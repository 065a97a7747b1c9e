# The README's two commands: `make run` and `make test`. Each creates .venv when
# it is missing, installs the project into it, makes sure the data is present,
# then does its job. Nothing is installed by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := vqlib
PROFILE ?= quick

.PHONY: run test fuzz lint format data bench lab clean-results help

help:
	@echo "make run    - the whole study (quick profile) -> results/reports/index.html"
	@echo "make test   - lint (ruff) and the test suite on the real data"
	@echo "make fuzz   - the parser properties of tests/test_fuzz.py with 50 times the examples"
	@echo "make format - ruff's fixes and formatting, in place"
	@echo "make bench  - speed benchmarks -> results/bench/bench.json"
	@echo "make lab    - JupyterLab with the project's kernel"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned, so that no other package can pull a CUDA build.
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	# A named kernel inside the venv: papermill and JupyterLab run notebooks in it.
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python (vqlib)" > /dev/null
	touch $(STAMP)

# The data: already here, or the Debian package (on Debian as root), or the download.
data: $(STAMP)
	@$(BIN)/vqlib data --no-download 2>/dev/null || { \
	  if command -v apt-get > /dev/null && [ "$$(id -u)" = 0 ]; then \
	    echo "installing the Debian package dataset-fashion-mnist"; \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist > /dev/null) || true; \
	  fi; \
	  $(BIN)/vqlib data; }

run: data
	$(BIN)/vqlib run --profile $(PROFILE)

# ruff first: a style violation fails the test command (and CI) in seconds.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint data
	$(BIN)/python -m pytest -q

# The same Hypothesis properties as make test, deeper: VQLIB_FUZZ_SCALE multiplies every example count.
fuzz: $(STAMP)
	VQLIB_FUZZ_SCALE=$${VQLIB_FUZZ_SCALE:-50} $(BIN)/python -m pytest -q tests/test_fuzz.py

bench: data
	$(BIN)/python benchmarks/bench.py

lab: data
	$(BIN)/jupyter lab --notebook-dir=notebooks

clean-results:
	rm -rf results/grid results/reports results/classifier results/analysis results/bench checkpoints/vqvae checkpoints/classifier
