# Every target creates .venv on first use and installs the project with the pinned constraints,
# so a machine with only Python 3.11 and pip gets the same versions we test with.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

LOWEST_VENV := .venv-airflow-3.1
LOWEST_STAMP := $(LOWEST_VENV)/.installed-stamp

.PHONY: install lint format test test-current test-lowest docs demo bench emulator clean

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

# The whole suite on the pinned versions, then the unit and dag.test() tiers on the lowest
# supported Airflow (3.1) and openai SDK (3.0), so both ends of the declared ranges are tested.
test: lint docs test-current test-lowest

test-current: install
	$(BIN)/pytest -q

$(LOWEST_STAMP): pyproject.toml constraints-airflow-3.1.txt
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-airflow-3.1.txt -e '.[test]'
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	$(LOWEST_VENV)/bin/pytest -q -m "not e2e" -p no:cacheprovider

docs: install
	$(BIN)/mkdocs build --strict --quiet --site-dir site

demo: install
	$(BIN)/python scripts/demo.py

# The benchmarks measure the official provider side by side: it is installed only here (extra "bench").
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,docs,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	for script in benchmarks/[!_]*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

emulator: install
	$(BIN)/python -m airflow_provider_batch.emulator --port 8000 --data-dir .emulator

clean:
	rm -rf $(VENV) $(LOWEST_VENV) .pytest_cache .ruff_cache site .demo
