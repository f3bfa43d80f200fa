# Every target creates .venv on first use and installs the project with the pinned constraints,
# so a machine with only Python 3.11 and pip gets the same versions we test with.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

# The newest Python that Airflow 3.3 supports and CI machines have: python3.13 from the PATH, or pyenv's.
NEWEST_PYTHON ?= $(firstword $(shell python3.13 -c 'import sys; print(sys.executable)' 2>/dev/null) \
	$(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13))

# The second tiers: the lowest supported Airflow and openai SDK, and the newest Python.
LOWEST_VENV := .venv-airflow-3.1
NEWEST_VENV := .venv-py3.13
# Every tier that needs no real scheduler: all but the end-to-end and the package tiers.
NO_SCHEDULER := -m "not e2e and not package" -p no:cacheprovider

.PHONY: install lint typecheck format test test-current test-lowest test-py313 test-package docs demo bench \
	emulator try clean

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

typecheck: install
	$(BIN)/mypy

# The whole suite on the pinned versions (but the package tier); then the unit, emulator and
# dag.test() tiers on the lowest supported Airflow (3.1) and openai SDK (3.0), so both ends of the
# declared ranges are tested, and on Python 3.13; then the built wheel, installed alone.
test: lint typecheck docs test-current test-lowest test-py313 test-package

test-current: install
	$(BIN)/pytest -q

# $(call tier_venv,DIR,PYTHON,CONSTRAINTS): a second tier's virtualenv, with the project editable.
define tier_venv
$(1)/.installed-stamp: pyproject.toml $(3)
	test -x $(1)/bin/python || $(2) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --disable-pip-version-check -c $(3) -e '.[test]'
	touch $$@
endef
$(eval $(call tier_venv,$(LOWEST_VENV),$(PYTHON),constraints-airflow-3.1.txt))
$(eval $(call tier_venv,$(NEWEST_VENV),$(or $(NEWEST_PYTHON),python3.13),constraints.txt))

test-lowest: $(LOWEST_VENV)/.installed-stamp
	$(LOWEST_VENV)/bin/pytest -q $(NO_SCHEDULER)

test-py313: $(NEWEST_VENV)/.installed-stamp
	$(NEWEST_VENV)/bin/pytest -q $(NO_SCHEDULER)

# Builds the sdist and the wheel, installs the wheel alone (with constraints.txt) into a fresh
# virtualenv and checks what Airflow and a user see of it (tests/test_wheel.py).
test-package: install
	$(BIN)/pytest -q -m package -p no:cacheprovider

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

# Your own DAGs on the emulator: a fresh Airflow home under .try/, the emulator, connection
# openai_default on it; a shell there (or CMD), and the emulator stopped when it ends.
try: install
	$(BIN)/python scripts/try_dags.py --dags "$(DAGS)" -- $(CMD)

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(NEWEST_VENV) .pytest_cache .ruff_cache .mypy_cache site dist .demo
