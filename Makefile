# The two commands a newcomer needs: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
# The PostgreSQL server the postgres-marked tests use (each test makes its own database).
HELIOS_HPO_TEST_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
export HELIOS_HPO_TEST_POSTGRES_URL

.PHONY: install serve test test-fast lint typecheck pytest docs docs-serve bench compat clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,peers]"
	touch $@

install: $(VENV)/.installed

serve: install
	$(VENV)/bin/helios-hpo serve

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(MAKE) docs

# The documentation site (docs/, mkdocs.yml) into site/; warnings fail it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr 127.0.0.1:8001

typecheck: install
	$(VENV)/bin/mypy

# Test processes (pytest-xdist; 0 runs one). With 2, one per core here, the suite takes
# about 19 minutes instead of 31; the Docker engine's tests and the Slurm cluster's each
# stay in a single process (--dist loadgroup).
PYTEST_WORKERS ?= 2

pytest: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

test: lint typecheck pytest

# The edit-test loop: no engines, no PostgreSQL, no slow tests.
test-fast: install
	HELIOS_HPO_TEST_POSTGRES_URL= $(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow and not docker and not postgres"

# helios-ml 1.4.1's own test suite against our helios and against helios-ml itself
# (a throwaway environment, cached in ~/.cache/helios-hpo), side by side.
compat: install
	$(PY) bench/helios_compat.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache site
