# The README's two commands: `make run` and `make test`. Each creates .venv when
# it is missing, installs the project into it, makes sure the data is present,
# then does its job. Nothing is installed by hand.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
KERNEL := vqlib
PROFILE ?= quick

.PHONY: run test fuzz lint format data bench figures ray-vs-local lab explore-check clean-results help

help:
	@echo "make run    - the whole study (quick profile) -> results/reports/index.html"
	@echo "make test   - lint (ruff) and the test suite on the real data"
	@echo "make fuzz   - the parser properties of tests/test_fuzz.py with 50 times the examples"
	@echo "make format - ruff's fixes and formatting, in place"
	@echo "make bench  - speed benchmarks -> results/bench/bench.json"
	@echo "make figures - the README's figures from the published study -> docs/figures/"
	@echo "make lab    - JupyterLab on the explorer (notebooks/05_explore.ipynb), on 127.0.0.1"
	@echo "make explore-check - the explorer in JupyterLab in headless Chromium -> docs/figures/explorer.png"

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

# The README's figures, drawn from the published study alone (results/published/, checkpoints/pretrained/):
# no data, no training, no GPU.
figures: $(STAMP)
	$(BIN)/vqlib figures

# The quick grid with the local pool and as Ray tasks, same placement (needs root: a private
# network namespace for Ray).
ray-vs-local: data
	bash benchmarks/ray_vs_local.sh

# JupyterLab refuses to run as root unless told (--allow-root), and CI and the project's
# machines run as root; it listens on this machine only.
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_PORT ?= 8888

lab: data
	$(BIN)/jupyter lab --ip=127.0.0.1 --port=$(LAB_PORT) $(LAB_ROOT) --ServerApp.root_dir=notebooks \
	  --LabApp.default_url=/lab/tree/05_explore.ipynb

# The explorer in a real browser (Debian's chromium, driven by Playwright): runs notebook 05 in
# JupyterLab, moves a slider, presses an edit button, checks the images change, and saves
# docs/figures/explorer.png. VQVAE= and CLASSIFIER= choose the checkpoints (default: the grid's
# best, else the published one; a tiny one is trained when there is none).
explore-check: data
	$(BIN)/python tests/explore_browser.py $(if $(VQVAE),--vqvae-checkpoint $(VQVAE)) \
	  $(if $(CLASSIFIER),--classifier-checkpoint $(CLASSIFIER)) $(if $(PRIOR),--prior-checkpoint $(PRIOR)) \
	  $(if $(SCREENSHOT),--screenshot $(SCREENSHOT))

clean-results:
	rm -rf results/grid results/reports results/classifier results/analysis results/bench checkpoints/vqvae checkpoints/classifier
