# schedcmp -- `make run` sets up and runs the default comparison on the built-in model; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Which torch to install. Users with a GPU get the normal range; without one (and in CI) the CPU wheel.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'torch>=2.1,<3' || echo 'torch==2.13.0')
PLAN ?= configs/seed-doc.yaml
PROMPT ?= a red circle on a blue background
OUT ?= out/seed-doc
PYTEST_ARGS ?=
# The samplers' oracle, without its training-side dependencies (see pyproject.toml's test extra).
KDIFFUSION_SPEC ?= k-diffusion==0.1.1.post1

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed-run
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps "$(KDIFFUSION_SPEC)"
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/schedcmp run $(PLAN) --model builtin:shapes --prompt "$(PROMPT)" --out $(OUT) --overwrite

test: $(VENV)/.installed-test
	$(BIN)/ruff check schedcmp tests benchmarks
	$(BIN)/python -m pytest -n 2 $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/scheduler_step.py

clean:
	rm -rf $(VENV) out .pytest_cache
