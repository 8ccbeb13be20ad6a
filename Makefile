# One-command set-up and run. Every target installs what it needs first; re-running on a set-up machine installs
# nothing (the stamp file .venv/.installed is newer than pyproject.toml and constraints.txt).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install browser smoke test test-fast lint lock clean-venv

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

## Re-pin constraints.txt from the current venv.
lock:
	( echo "# Exact versions known to work together (pip freeze of a fresh install). Used by the Makefile via 'pip -c'."; \
	  echo "# Regenerate: make lock"; $(PIP) freeze --exclude-editable | grep -v '^magicbokeh' ) > constraints.txt

clean-venv:
	rm -rf $(VENV)
