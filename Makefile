# Every target that needs the environment runs `setup` first, so each works alone on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FHIR_VENV := .venv-fhir
FHIR_STAMP := $(FHIR_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint clean

setup: $(STAMP) $(FHIR_STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; vigil needs Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# The FHIR server the integration tests start (sekmet-fhir), in its own venv with exact pins.
$(FHIR_STAMP): requirements-fhir-server.txt
	$(PYTHON) -m venv $(FHIR_VENV)
	$(FHIR_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-fhir-server.txt
	$(FHIR_VENV)/bin/python -m pip check
	@touch $(FHIR_STAMP)

# The demo needs only the main venv (no FHIR server): NDJSON + SQLite on the bundled sample.
demo: $(STAMP)
	$(BIN)/vigil demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# For a developer: everything but the slow tests.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) $(FHIR_VENV) build *.egg-info src/*.egg-info .pytest_cache
