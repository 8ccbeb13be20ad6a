# One-command set-up and run. Every target installs what it needs first; re-running on a set-up machine installs
# nothing (the stamp file .venv/.installed is newer than pyproject.toml and constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install smoke test test-fast lint results readme lock clean-venv

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch comes from the local wheel folder (a CUDA build that also runs on CPU); exact pins from constraints.txt
	$(PIP) install --upgrade -c constraints.txt torch torchvision
	$(PIP) install -c constraints.txt -e '.[dev]'
	# pyiqa without its declared requirements (a second OpenCV, ~0.8 GB of tools); its run-time needs are ours
	$(PIP) install --no-deps -c constraints.txt pyiqa
	# MATLAB's NIQE parameters from the basicsr==1.4.2 sdist (Apache-2.0) into $(VENV)/share/magicbokeh; idempotent
	$(PY) -m magicbokeh.evaluation.assets
	@touch $(STAMP)

install: $(STAMP)

## The main job: the smoke experiment (tiny model, built-in synthetic data, CPU).
smoke: install
	$(PY) scripts/train.py experiment=smoke

## The test suite (what CI runs).
test: install
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
	$(PY) scripts/benchmark.py renderer
	$(PY) scripts/benchmark.py speed --size 256
	$(PY) scripts/study_capacity.py
	$(PY) scripts/study_smoke.py
	$(PY) scripts/study_vsd.py
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
