"""Fixtures of the end-to-end tier: per database backend (SQLite, PostgreSQL) one emulator that
requires a canary API key and one real Airflow (api-server, scheduler with the LocalExecutor,
dag-processor, triggerer) serving ``tests/e2e/dags``. Both are session-scoped and shared by every
test of that backend; pytest groups the tests by backend, so one stack runs at a time. Everything
started here is stopped by PID in ``finally`` blocks, also when a test or a start fails, and by
the guardian (``airflow_provider_batch/emulator/guardian.py``) when pytest itself is killed.
"""

from __future__ import annotations

import configparser
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from airflow_stack import AirflowStack, Postgres  # noqa: E402

from airflow_provider_batch.emulator.process import EmulatorProcess  # noqa: E402
from airflow_provider_batch.tokens import estimate_request  # noqa: E402
from tests.e2e.dags.e2e_common import (  # noqa: E402
    ALL_DAGS,
    BUDGET_CONN_ID,
    BUDGET_MODELS,
    BUDGET_SET_DAG,
    CHAT,
    CONN_ID,
    MARK_FAILED_DAG,
    PARALLELISM,
    SHARD_REQUESTS,
    SUCCESS_DAG,
    WORKER_KILLED_DAG,
    budget_requests,
)
from tests.e2e.support import E2E, KillWatcher, MetadataDB  # noqa: E402

DAGS_FOLDER = Path(__file__).resolve().parent / "dags"
CANARY = f"sk-e2e-canary-{secrets.token_hex(16)}"
"""The connection's API key. The emulator refuses any other key, so every call really carries it;
it must never surface in logs, XCom or the metadata database."""
BACKENDS = ["sqlite", "postgres"]


def budget_shard_tokens() -> tuple[int, int]:
    """The smallest and largest input tokens of a budget run's shard, counted as the operator and
    the emulator count them (their texts are the same in every run)."""
    counts = []
    for model in BUDGET_MODELS.values():
        requests = budget_requests(model, "run")
        for start in range(0, len(requests), SHARD_REQUESTS):
            shard = requests[start : start + SHARD_REQUESTS]
            counts.append(sum(estimate_request(CHAT, request["body"]).input for request in shard))
    return min(counts), max(counts)


def budget_token_limit() -> int:
    """An enqueued-token limit that holds two budget shards at once and never three."""
    smallest, largest = budget_shard_tokens()
    limit = 2 * largest + largest // 2
    assert 3 * smallest > limit, (smallest, largest)
    return limit


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def database(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetadataDB]:
    """An empty metadata database: a SQLite file, or a fresh PostgreSQL cluster on a free port."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "airflow.db"
        yield MetadataDB(f"sqlite:///{path}", [path, path.with_name("airflow.db-wal")])
        return
    server = Postgres()
    try:
        yield MetadataDB(server.start(), [server.data_dir])
    finally:
        server.stop()


@pytest.fixture(scope="session")
def emulator(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp(f"emulator-{backend}"), api_key=CANARY) as server:
        yield server


@pytest.fixture(scope="session")
def e2e(
    backend: str, database: MetadataDB, emulator: EmulatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[E2E]:
    """A running Airflow on ``backend`` with connection ``openai_e2e`` on the emulator."""
    base = tmp_path_factory.mktemp(f"airflow-{backend}")
    work = base / "work"
    work.mkdir()
    connection = {
        "conn_type": "openai_batch",
        "host": emulator.base_url,
        "password": CANARY,
        # Enough retries that 30 % transient faults never exhaust them (0.3**11 per call).
        "extra": {"max_retries": 10, "retry_initial_wait": 0.2, "retry_max_wait": 2, "retry_max_total": 120},
    }
    budgeted = {
        **connection,
        "extra": {
            **connection["extra"],
            "max_enqueued_tokens": {BUDGET_MODELS[BUDGET_SET_DAG]: budget_token_limit()},
        },
    }
    stack = AirflowStack(
        base / "home",
        DAGS_FOLDER,
        database_url=database.url,
        env={
            f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(connection),
            f"AIRFLOW_CONN_{BUDGET_CONN_ID.upper()}": json.dumps(budgeted),
            "E2E_WORK_DIR": str(work),
            "AIRFLOW__CORE__PARALLELISM": str(PARALLELISM),
            # A SIGKILLed triggerer's triggers move to a new one once its heartbeat is this old.
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
        },
    )
    watcher = KillWatcher(stack, work / "kill-requests")
    try:
        stack.migrate()
        stack.start()
        for dag_id in ALL_DAGS:
            stack.wait_for_dag(dag_id, timeout=180)
        watcher.start()
        config = configparser.ConfigParser(interpolation=None)
        config.read(stack.home / "airflow.cfg")
        database.fernet_key = config.get("core", "fernet_key", fallback="")
        yield E2E(backend, stack, emulator, database, work, CANARY, watcher)
    finally:
        watcher.stop()
        stack.stop()


@pytest.fixture(scope="session")
def concurrent_runs(e2e: E2E) -> dict[str, str]:
    """Runs that do not disturb each other, started together to save time: success (with the
    slot probes), mark-failed and worker-killed. The success DAG goes first so that its batch
    task is queued before anything else (the probes' proof relies on it)."""
    return {dag_id: e2e.stack.trigger(dag_id) for dag_id in (SUCCESS_DAG, MARK_FAILED_DAG, WORKER_KILLED_DAG)}
