# specprune_ros: `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := .setup/venv.stamp
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup venv test demo clean

setup: venv

# The virtual environment with pinned dependencies and the package installed in editable mode.
# Re-runs only when requirements.txt or setup.py change, so a second `make setup` is quick.
venv: $(STAMP)
$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	mkdir -p $(dir $(STAMP)) && touch $(STAMP)

test: setup
	$(PY) -m pytest -q -rs

demo: setup
	$(VENV)/bin/specprune-demo

clean:
	rm -rf build install log .setup demo_out
