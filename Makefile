# Every target creates .venv on first use and installs the project with the pinned constraints,
# so a machine with only Python 3.11 and pip gets the same versions we test with.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install lint format test docs demo bench emulator clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,docs]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint docs
	$(BIN)/pytest -q

docs: install
	$(BIN)/mkdocs build --strict --quiet --site-dir site

demo: install
	$(BIN)/python scripts/demo.py

bench: install
	for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

emulator: install
	$(BIN)/python -m airflow_provider_batch.emulator --port 8000 --data-dir .emulator

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
