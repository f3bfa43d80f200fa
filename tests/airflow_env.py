"""A private, throw-away Airflow home for the test session.

Airflow reads ``AIRFLOW_HOME`` (and writes ``airflow.cfg`` there) when ``airflow`` is first
imported, and ``import airflow.sdk`` is enough to do that. So this module must be imported before
anything imports Airflow: ``tests/conftest.py`` imports it first. It only sets environment
variables; the metadata database is created on demand by :func:`migrate` (``airflow db migrate``
in a subprocess, once per session), so suites that never run a DAG (hooks, emulator) do not pay
for it.

The home is always a fresh temporary directory, never the developer's ``~/airflow`` nor an
``AIRFLOW_HOME`` they exported: ``dag.test()`` writes runs, XComs and asset events to that
database.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DAGS_FOLDER = Path(__file__).parent / "dags"
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-provider-batch-tests-"))
WORK_DIR = AIRFLOW_HOME / "work"
"""Where the test DAGs read inputs and land results (``BATCH_TEST_WORK_DIR`` for the DAG files)."""

ENVIRONMENT = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
    "BATCH_TEST_WORK_DIR": str(WORK_DIR),
}
# Unconditionally: a test run must never migrate or write into a real Airflow home.
os.environ.update(ENVIRONMENT)
WORK_DIR.mkdir(parents=True, exist_ok=True)
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)

_migrated = False


def airflow_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the virtualenv's ``airflow`` command against the test home."""
    airflow = Path(sys.executable).with_name("airflow")
    return subprocess.run(
        [str(airflow), *args],
        env={**os.environ, **ENVIRONMENT},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def migrate() -> None:
    """Create the metadata database (``airflow db migrate``), once per process."""
    global _migrated
    if _migrated:
        return
    done = airflow_cli("db", "migrate")
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    _migrated = True
