# Every target that needs the environment runs `setup` first, so each works alone on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FHIR_VENV := .venv-fhir
FHIR_STAMP := $(FHIR_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup pacs demo test test-fast lint clean

setup: $(STAMP) $(FHIR_STAMP) pacs

# The PACS of the imaging tests, bench and demo: Debian's orthanc + orthanc-dicomweb, and
# dicom3tools (dciodvfy); installed without starting a service, a no-op once installed.
pacs:
	@.ci/install-pacs

# uv (pinned in constraints.txt: flwr needs it anyway) installs the pinned closure with the
# same versions as pip in seconds instead of minutes (parallel, no per-file Python work).
# It does not read pip's configuration, so the wheel directories and extra indexes pip is
# configured with on this machine are handed to it; pip itself is the fallback.
PIP_FIND := $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
PIP_EXTRA := $(or $(PIP_EXTRA_INDEX_URL),$(shell $(PYTHON) -m pip config get global.extra-index-url 2>/dev/null))
UV_SOURCES := $(foreach f,$(PIP_FIND),--find-links $(f)) $(foreach i,$(PIP_EXTRA),--extra-index-url $(i))

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; vigil needs Python 3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --index-strategy unsafe-best-match \
		$(UV_SOURCES) -c constraints.txt -e ".[dev]" \
		|| $(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

# The FHIR server the integration tests start (sekmet-fhir), in its own venv with exact pins.
$(FHIR_STAMP): requirements-fhir-server.txt
	$(PYTHON) -m venv $(FHIR_VENV)
	$(FHIR_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-fhir-server.txt
	$(FHIR_VENV)/bin/python -m pip check
	@touch $(FHIR_STAMP)

# The demo needs the main venv and the PACS (no FHIR server): sepsis on NDJSON + SQLite, imaging
# through a private Orthanc (`pacs`; without root it cannot install, and the demo scores the
# same DICOM through the folder source, saying so in its report).
demo: $(STAMP) pacs
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
