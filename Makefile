# The two set-up commands of the README. Each creates .venv when it is missing.
# DEMO_ARGS: extra options of `captum-vit demo` (the README test shrinks the demo with it).
PY ?= python3
DEMO_ARGS ?=
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test env lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m captum_vit.cli demo --out out/demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check captum_vit export tests benchmarks
	$(BIN)/mypy
