# The README's two commands: `make demo` and `make test`. Both create .venv if
# missing and install the pinned dependencies (constraints.txt) first. `make
# gpu-check` proves zoo on a CUDA device (benchmarks/gpu_check.py; one line and
# exit 0 without one). `make docs` builds the docs site (mkdocs.yml, docs/) into
# site/; `make test` builds it too (tests/test_docs.py), broken links failing it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEPS := setup.cfg pyproject.toml constraints.txt
DEMO_OUT := demo-out

.PHONY: demo test lint docs gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python $(DEPS)
	$(BIN)/python -m pip install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/zoo data make sweeps/demo.yaml --preview $(DEMO_OUT)/previews
	$(BIN)/zoo sweep plan sweeps/demo.yaml
	$(BIN)/zoo sweep run sweeps/demo.yaml --workers 2
	$(BIN)/zoo analyze sweeps/demo.yaml --out $(DEMO_OUT)/report
	$(BIN)/zoo data export micrograph --spec sweeps/demo-micrograph.yaml --out $(DEMO_OUT)/micrograph.mrc
	$(BIN)/zoo models list sweeps/demo.yaml --limit 5
	$(BIN)/zoo predict demo $(DEMO_OUT)/micrograph.mrc --out $(DEMO_OUT)/predict --force
	@echo "previews: $(abspath $(DEMO_OUT))/previews"
	@echo "report:   $(abspath $(DEMO_OUT))/report/report.html"
	@echo "overlay:  $(abspath $(DEMO_OUT))/predict/micrograph_overlay.png"

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The suite as two pytest processes side by side: the tests on the local SLURM cluster
# (their tasks mostly wait on the scheduler and on each other) beside all the others,
# on ports of their own (ZOO_TEST_PORT 15610: PostgreSQL there, the server 10 above; the
# rest use 15410-15460 and 15702-15703); the SLURM part's output follows the rest's.
test: lint
	@ZOO_TEST_PORT=15610 $(BIN)/python -m pytest -m slurm >.pytest-slurm.log 2>&1 & slurm=$$!; \
	$(BIN)/python -m pytest -m "not slurm"; rest=$$?; \
	wait $$slurm; code=$$?; echo "== the SLURM tests (pytest -m slurm) =="; cat .pytest-slurm.log; \
	exit $$(( rest != 0 ? rest : code ))

docs: $(VENV)/.installed-test
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

gpu-check: $(VENV)/.installed-test
	$(BIN)/python benchmarks/gpu_check.py
