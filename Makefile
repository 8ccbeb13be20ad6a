# One-command set-up and run. Every target installs what it needs first; re-running on a set-up machine installs
# nothing (the stamp file .venv/.installed is newer than pyproject.toml and constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install browser smoke test test-fast lint results readme lock clean-venv gpu-wheels gpu-check

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch comes from the local wheel folder (a CUDA build that also runs on CPU); exact pins from constraints.txt
	$(PIP) install --upgrade -c constraints.txt torch torchvision
	$(PIP) install -c constraints.txt -e '.[dev]'
	# pyiqa without its declared requirements (a second OpenCV, ~0.8 GB of tools); its run-time needs are ours
	$(PIP) install --no-deps -c constraints.txt pyiqa
	# gradio (the demo) likewise: it caps pillow below our pin; its run-time needs are in pyproject.toml
	$(PIP) install --no-deps -c constraints.txt gradio
	# MATLAB's NIQE parameters from the basicsr==1.4.2 sdist (Apache-2.0) into $(VENV)/share/magicbokeh; idempotent
	$(PY) -m magicbokeh.evaluation.assets
	@touch $(STAMP)

install: $(STAMP)

## Debian's headless Chromium for the demo's browser test (playwright drives /usr/bin/chromium; no browser download).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else \
	  echo "warning: /usr/bin/chromium is missing and this is not a root Debian shell, so the browser test will fail;"; \
	  echo "         install it with: sudo apt-get install chromium chromium-driver (or deselect: -m 'not browser')"; \
	fi

## The main job: the smoke experiment (tiny model, built-in synthetic data, CPU).
smoke: install
	$(PY) scripts/train.py experiment=smoke

## The test suite (what CI runs), the browser test included.
test: install browser
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(VENV)/bin/ruff check magicbokeh scripts tests

## Re-make the results files under results/ (one command each, recorded in the file), then re-render the README.
## Run it from a committed tree: each file records the commit and whether tracked code was modified.
results: install
	$(PY) scripts/train.py experiment=smoke
	$(PY) scripts/benchmark.py degradation
	$(PY) scripts/benchmark.py degradation-presets
	$(PY) scripts/benchmark.py renderer
	$(PY) scripts/benchmark.py model
	$(PY) scripts/benchmark.py inference
	$(PY) scripts/benchmark.py inference --small-images --results inference_small_images
	$(PY) scripts/benchmark.py speed --size 256
	$(PY) scripts/benchmark.py metrics --threads 1
	$(PY) scripts/study_capacity.py
	$(PY) scripts/study_smoke.py
	$(PY) scripts/study_vsd.py
	$(PY) scripts/study.py study=ablation_fama scale=smoke
	$(PY) scripts/study.py study=ablation_depth scale=smoke
	$(PY) scripts/study.py study=ablation_strategy scale=smoke
	$(PY) scripts/benchmark.py readme
	$(PY) -m magicbokeh.utils.results README.md

## Re-render the README's result tables from results/*.json.
readme: install
	$(PY) -m magicbokeh.utils.results README.md

## Re-pin constraints.txt from the current venv.
lock:
	( echo "# Exact versions known to work together (pip freeze of a fresh install). Used by the Makefile via 'pip -c'."; \
	  echo "# Regenerate: make lock"; $(PIP) freeze --exclude-editable | grep -v '^magicbokeh' ) > constraints.txt

clean-venv:
	rm -rf $(VENV)

## The GPU check (scripts/gpu_check.sh): gpu-marked tests and every benchmark on a CUDA device, figures in results/gpu/.
## On the GPU machine: make gpu-check (its own python3). Dry run here: make gpu-check PYTHON=.venv/bin/python
## GPU_CHECK_ARGS="--device cpu --quick".
GPU_CHECK_ARGS ?=
gpu-check:
	PYTHON=$(PYTHON) bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

## Wheels for a Python 3.12 x86-64 machine that has torch, accelerate, transformers, OpenCV, scikit-image, pytest, ...
## but not the packages below (and no registry): the exact versions of constraints.txt, into .whl/ (git-ignored).
## antlr4-python3-runtime 4.9.3 (omegaconf's parser) exists only as a source archive: its pure-Python wheel is built.
GPU_WHEEL_PACKAGES := diffusers hydra-core omegaconf peft
GPU_WHEEL_PLATFORMS := $(foreach n,2_28 2_27 2_17,--platform manylinux_$(n)_x86_64) --platform manylinux2014_x86_64
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(GPU_WHEEL_PLATFORMS) --platform any -d .whl \
	  $$(for p in $(GPU_WHEEL_PACKAGES); do grep -i "^$$p==" constraints.txt; done)
	$(PYTHON) -m pip wheel --no-deps --no-binary=:all: -w .whl $$(grep -i '^antlr4-python3-runtime==' constraints.txt)
	@ls -l .whl && du -sh .whl
