# Two commands do everything on a fresh machine: `make repro` and `make test`.
# Both create .venv from the lock file first (only when the lock changed).
# GPU=1 (e.g. `make setup GPU=1`) installs requirements-gpu.lock instead: TensorFlow with its CUDA
# libraries, for a machine with an NVIDIA GPU and driver. The choice sticks until GPU=0.
# The lock pins wheels for Python 3.11 (pyproject.toml's requires-python): python3.11 where it is
# installed, else python3, which must then be 3.11 (checked before .venv is made).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
PYTHON_VERSION := 3.11
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export PYTHONUNBUFFERED := 1
UI_PORT ?= 5000
# make repro: at most this many threads in flight (auto: every core); pipeline/tools/repro.py
JOBS ?= auto
# make test: test files side by side, each file in one worker (its module fixtures built once); most of
# the suite waits on subprocesses (dvc, servers, TensorFlow's start), so 2 workers pay on 2 cores (bench/RESULTS.md)
TEST_WORKERS ?= 2
CHROMIUM ?= /usr/bin/chromium
GPU ?= $(if $(wildcard $(VENV)/.installed-gpu),1,0)
LOCK := $(if $(filter 1,$(GPU)),requirements-gpu.lock,requirements.lock)
INSTALLED := $(VENV)/.installed-$(if $(filter 1,$(GPU)),gpu,cpu)

.PHONY: setup repro test test-fast lint format ui exps bench lock lock-gpu browser-deps server server-stop server-status server-deps resync

# A new .venv for every lock change: the two locks hold different wheels of one `tensorflow`
# package (tensorflow-cpu, tensorflow), which pip cannot swap in place.
$(INSTALLED): $(LOCK)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != tuple(map(int, "$(PYTHON_VERSION)".split("."))))' \
	  2>/dev/null || { echo "make: the locked dependencies need Python $(PYTHON_VERSION); '$(PYTHON)' is" \
	  "$$($(PYTHON) --version 2>/dev/null || echo 'not installed'). Install it (Debian/Ubuntu: sudo apt-get install -y" \
	  "python$(PYTHON_VERSION) python$(PYTHON_VERSION)-venv) or point make at one: make PYTHON=/path/to/python$(PYTHON_VERSION)" >&2; \
	  exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/python -m pip install --disable-pip-version-check -q -r $(LOCK)
	touch $@

setup: $(INSTALLED)

repro: setup      ## set up, then run the whole pipeline, independent stages side by side
	python -m pipeline repro -j $(JOBS)

test: setup browser-deps lint  ## set up, then lint and run the whole test suite (incl. end-to-end, browser and real-data tests)
	python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=40

lint: setup       ## ruff (lint and format check) and the layer contracts (pyproject.toml)
	ruff check .
	ruff format --check .
	lint-imports

format: setup     ## ruff's formatting and safe fixes, in place
	ruff format .
	ruff check --fix .

test-fast: setup  ## unit tests only
	python -m pytest -m "not slow and not e2e and not browser"

browser-deps:     ## Chromium for the MLflow UI browser test: Debian's chromium + chromium-driver, if missing
	@if [ -x "$(CHROMIUM)" ] || [ "$$PIPELINE_SKIP_BROWSER" = 1 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
	  echo "browser-deps: $(CHROMIUM) is missing and installing it needs root: run 'sudo make browser-deps'" \
	    "(or set PIPELINE_SKIP_BROWSER=1 to skip the browser test)" >&2; exit 0; fi; \
	echo "browser-deps: installing chromium and chromium-driver with apt-get"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	  chromium chromium-driver fonts-liberation >/dev/null && $(CHROMIUM) --version

ui: setup         ## the MLflow UI on http://127.0.0.1:$(UI_PORT), every design side by side
	python -m pipeline ui --root $(CURDIR) --port $(UI_PORT)

# A tracking server for several machines (pipeline/tracking/server.py): PostgreSQL (or SQLite) and proxied artifacts,
# all kept in SERVER_DIR. Stages log to it with MLFLOW_TRACKING_URI=http://127.0.0.1:$(SERVER_PORT).
SERVER_DIR ?= $(CURDIR)/.server
SERVER_PORT ?= 5050
SERVER_BACKEND ?= postgresql
SERVER_HOST ?= 127.0.0.1
server: setup $(if $(filter postgresql,$(SERVER_BACKEND)),server-deps)  ## start the MLflow tracking server (and its database)
	python -m pipeline server start --dir $(SERVER_DIR) --backend $(SERVER_BACKEND) --port $(SERVER_PORT) --host $(SERVER_HOST)

server-user: setup    ## create the tracking server's user NAME (its login: SERVER_DIR/users/NAME.credentials)
	@test -n "$(NAME)" || { echo "server-user: say who, e.g. make server-user NAME=alice" >&2; exit 2; }
	python -m pipeline server user --dir $(SERVER_DIR) $(NAME)

server-stop: setup    ## stop the tracking server and its database
	python -m pipeline server stop --dir $(SERVER_DIR)

server-status: setup  ## what runs in SERVER_DIR, and whether it answers
	python -m pipeline server status --dir $(SERVER_DIR)

server-deps: setup    ## Debian's postgresql, if missing (apt-get; needs root or sudo)
	python -m pipeline server install

resync: setup         ## log the runs kept while the tracking server was away (pipeline/tracking/spool.py)
	python -m pipeline resync

# `dvc exp show` keeps every param of every design; this keeps the columns worth comparing.
EXP_COLUMNS := Experiment|Created|test_accuracy|best_val_accuracy|train_seconds|^params$$|train\.(epochs|batch_size|optimizer|learning_rate)|normalize\.mode|experiments\.
exps: setup       ## every experiment's key params and metrics, in readable columns
	dvc exp show --no-pager --drop '.*' --keep '$(EXP_COLUMNS)'

bench: setup      ## benchmarks (not tests): results in bench/results/
	python bench/run_all.py

lock:             ## re-pin every dependency after editing pyproject.toml (then make lock-gpu)
	$(BIN)/python -m pip install -q -e '.[test]' && $(BIN)/python -m pip freeze --exclude-editable > requirements.lock

# The GPU lock is the CPU lock with tensorflow-cpu swapped for tensorflow[and-cuda] (TensorFlow and
# NVIDIA's CUDA wheels, gigabytes): pip's resolver pins them against the CPU lock's versions without
# downloading or installing them (--dry-run --report), so it runs on any machine.
TF_VERSION = $(shell sed -n 's/^tensorflow_cpu==//p' requirements.lock)
lock-gpu:         ## re-pin requirements-gpu.lock from requirements.lock
	grep -v '^tensorflow_cpu==' requirements.lock > $(VENV)/cpu-pins.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --dry-run --ignore-installed \
	  --report $(VENV)/gpu-report.json -c $(VENV)/cpu-pins.txt 'tensorflow[and-cuda]==$(TF_VERSION)'
	$(BIN)/python -c 'import json, re, sys; key = lambda name: re.sub(r"[-_.]+", "-", name).lower(); \
	  pins = {key(line.split("==")[0]): line.strip() for line in open(sys.argv[1]) if "==" in line}; \
	  new = [item["metadata"] for item in json.load(open(sys.argv[2]))["install"]]; \
	  pins.update({key(m["name"]): m["name"] + "==" + m["version"] for m in new if key(m["name"]) not in pins \
	               and key(m["name"]) not in ("pip", "setuptools", "wheel")}); \
	  print("\n".join(line for _, line in sorted(pins.items())))' $(VENV)/cpu-pins.txt $(VENV)/gpu-report.json \
	  > requirements-gpu.lock
