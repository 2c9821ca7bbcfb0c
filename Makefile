# Two commands do everything on a fresh machine: `make repro` and `make test`.
# Both create .venv from the lock file first (only when the lock changed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1
UI_PORT ?= 5000

.PHONY: setup repro test test-fast ui bench lock clean-tracking

$(VENV)/.installed: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	touch $@

setup: $(VENV)/.installed

repro: setup      ## set up, then run the whole pipeline
	dvc repro

test: setup       ## set up, then run the whole test suite (incl. end-to-end and real-data tests)
	python -m pytest

test-fast: setup  ## unit tests only
	python -m pytest -m "not slow and not e2e and not browser"

ui: setup         ## the MLflow UI on http://127.0.0.1:$(UI_PORT), every design side by side
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --default-artifact-root $(CURDIR)/mlruns \
	  --host 127.0.0.1 --port $(UI_PORT)

bench: setup      ## benchmarks (not tests): results in bench/results/
	python bench/run_all.py

lock:             ## re-pin every dependency after editing pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]' && $(BIN)/python -m pip freeze --exclude-editable > requirements.lock
