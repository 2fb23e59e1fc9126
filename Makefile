# The README's two commands: `make demo` and `make test`. Both create .venv if
# missing and install the pinned dependencies (constraints.txt) first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := setup.cfg pyproject.toml constraints.txt
DEMO_OUT := demo-out

.PHONY: demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python $(DEPS)
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/zoo data make sweeps/demo-datasets.yaml --preview $(DEMO_OUT)/previews
	@echo "previews: $(abspath $(DEMO_OUT))/previews"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest
