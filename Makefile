# One command each: `make test` (set up + tests), `make repro` (set up + the main job).
# The environment lives in .venv/ and is rebuilt only when the pins change.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export USERNAME ?= mobilemoe
export MLFLOW_DISABLE_TELEMETRY := true
export HF_DATASETS_OFFLINE := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup lint test test-slow test-all repro lock clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml scripts/setup_venv.sh $(wildcard mobilemoe_kernels/csrc/*)
	PYTHON=$(PYTHON) TORCH_SPEC="$(TORCH_SPEC)" bash scripts/setup_venv.sh

# Lint and type checks (settings in pyproject.toml) run before the tests, as habits.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/python -m pytest -q

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m ""

repro: $(STAMP)
	$(VENV)/bin/python flows/full_repro.py run

# Re-freeze requirements.lock from pyproject.toml's pins in a scratch venv.
lock:
	rm -rf /tmp/mobilemoe-lock && $(PYTHON) -m venv /tmp/mobilemoe-lock
	/tmp/mobilemoe-lock/bin/pip install -q -U pip && /tmp/mobilemoe-lock/bin/pip install -q ".[test]"
	{ head -2 requirements.lock; /tmp/mobilemoe-lock/bin/pip freeze --exclude mobilemoe | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean-venv:
	rm -rf $(VENV)
