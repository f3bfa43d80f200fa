"""Helpers shared by the operator, sensor and DAG tests: connections to emulators, request
records, a minimal task context for unit-level calls, and reads of Airflow's metadata database.

Nothing here stands in for the provider's code. :class:`RecordingTI` and :class:`DictStateStore`
stand in for pieces of *Airflow's* task runtime (the task instance and the task state store that
the supervisor provides while a task runs), which do not exist outside a running task; they are
used only by unit-level tests that call ``execute``/``execute_complete``/``on_kill`` directly.
Everything the operator does over HTTP goes to a real emulator process.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_batch.emulator.process import EmulatorProcess
    from airflow_provider_batch.operators.batch import OpenAIBatchOperator

API_KEY = "sk-batch-test-0123456789-do-not-leak"
"""The connection's password in every test: it must never appear in trigger or defer kwargs."""
CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
FAST_RETRIES = {"retry_initial_wait": 0.01, "retry_max_wait": 0.2, "retry_max_total": 20}
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MANIFEST_KEYS = frozenset(
    {
        "batch_id",
        "status",
        "endpoint",
        "model",
        "input_file_id",
        "output_file_id",
        "error_file_id",
        "request_counts",
        "usage",
        "errors",
        "metadata",
        "created_at",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "expires_at",
    }
)
"""The keys of the manifest the operator and the sensor hand downstream (before results are landed)."""


DIALECTS = ("openai", "azure")
"""The dialects lifecycle tests run on (``@pytest.mark.parametrize("dialect", DIALECTS)``, with
the ``dialect`` fixture of ``tests/conftest.py``)."""
AZURE_API_VERSION = "2024-10-21"


def emulator_flags(dialect: str) -> tuple[str, ...]:
    """The emulator flags of a dialect (``azure-v1`` is the azure dialect reached another way).
    Uploads stay ``pending`` briefly, so every Azure test also covers the wait for ``processed``."""
    return ("--dialect", "azure", "--file-processing-delay", "0.2") if dialect.startswith("azure") else ()


def connection(
    server: EmulatorProcess, dialect: str, password: str = API_KEY, **extra: Any
) -> dict[str, Any]:
    """An Airflow connection to ``server`` as a user of ``dialect`` would write it: OpenAI's at the
    base URL; Azure's with ``api_type``, ``azure_endpoint`` and ``api_version``; or, for
    ``azure-v1``, an OpenAI connection whose base URL is the endpoint's ``/openai/v1``."""
    if dialect == "azure":
        azure = {"api_type": "azure", "azure_endpoint": server.root_url, "api_version": AZURE_API_VERSION}
        return {"conn_type": "openai_batch", "password": password, "extra": {**azure, **extra}}
    return {"conn_type": "openai_batch", "host": server.base_url, "password": password, "extra": extra}


def use_emulator(
    monkeypatch: pytest.MonkeyPatch,
    conn_id: str,
    server: EmulatorProcess,
    dialect: str = "openai",
    **extra: Any,
) -> None:
    """Point connection ``conn_id`` (an ``AIRFLOW_CONN_*`` variable) at ``server``."""
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(connection(server, dialect, **{**FAST_RETRIES, **extra})),
    )


def quick_operator(conn_id: str, task_id: str, **kwargs: Any) -> OpenAIBatchOperator:
    """A fresh operator (as each worker run gets) on ``conn_id``, waiting on the worker and polling the
    emulator every few hundredths of a second; ``kwargs`` add to or override that."""
    from airflow_provider_batch.operators.batch import OpenAIBatchOperator

    defaults: dict[str, Any] = {
        "task_id": task_id,
        "endpoint": CHAT,
        "conn_id": conn_id,
        "deferrable": False,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
    }
    return OpenAIBatchOperator(**{**defaults, **kwargs})


def chat_record(custom_id: str, content: str = "hello", **body: Any) -> dict[str, Any]:
    """A request record as the operator's ``requests`` takes it (``method``/``url`` filled in)."""
    return {
        "custom_id": custom_id,
        "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], **body},
    }


def wait_for_status(
    server: EmulatorProcess, batch_id: str, statuses: frozenset[str] = TERMINAL, timeout: float = 30
) -> Any:
    """Poll the emulator (with the plain SDK) until the batch reaches one of ``statuses``."""
    client = server.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not reach {sorted(statuses)} in {timeout} s")


def batches_of_task(server: EmulatorProcess, dag_id: str, task_id: str) -> list[Any]:
    """Every batch the emulator holds for one Airflow task (by the operator's metadata tags)."""
    return [
        batch
        for batch in server.client().batches.list(limit=100)  # iterating pages through them all
        if (batch.metadata or {}).get("airflow_dag_id") == dag_id
        and (batch.metadata or {}).get("airflow_task_id") == task_id
    ]


def route_count(server: EmulatorProcess, route: str) -> int:
    """Requests the emulator received on ``route`` (e.g. ``"POST /v1/batches/{id}/cancel"``)."""
    return int(server.stats()["requests"].get(route, 0))


# A minimal task context for unit-level calls --------------------------------------------------------


class RecordingTI:
    """Double of Airflow's runtime task instance: the identity the operator reads, and an
    ``xcom_push`` that records instead of calling the supervisor."""

    def __init__(self, dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> None:
        self.dag_id = dag_id
        self.task_id = task_id
        self.run_id = run_id
        self.map_index = map_index
        self.try_number = 1
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)  # XCom values must be JSON; fail here as Airflow would
        self.xcoms[key] = value


class DictStateStore:
    """Double of Airflow 3.3's ``context["task_state_store"]`` accessor (get/set/delete/clear)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any, retention: Any = None) -> None:
        json.dumps(value)
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)

    def clear(self) -> None:
        self.values.clear()


def make_context(
    task_id: str = "unit_task", *, run_id: str | None = None, state_store: DictStateStore | None = None
) -> Context:
    """A context with what the provider reads: ``ti``, ``task_state_store``, ``dag_run``,
    ``outlet_events``. A fresh ``run_id`` by default, so the metadata look-up of one test never
    finds another test's batch on the shared emulator."""
    from airflow.sdk.execution_time.context import OutletEventAccessors

    ti = RecordingTI("unit_dag", task_id, run_id or f"manual__{uuid.uuid4().hex}")
    context = {
        "ti": ti,
        "task_instance": ti,
        "task_state_store": state_store if state_store is not None else DictStateStore(),
        "dag_run": SimpleNamespace(start_date=datetime.now(UTC), run_after=datetime.now(UTC)),
        "outlet_events": OutletEventAccessors(),
    }
    return cast("Context", context)


def event(termination_reason: str = "completed", **batch: Any) -> dict[str, Any]:
    """A valid trigger event payload (schema 2) ending for ``termination_reason``; ``batch``
    overrides fields of the completed batch it carries."""
    from airflow_provider_batch.events import REASON_TO_STATUS

    state: dict[str, Any] = {
        "batch_id": "batch_unit",
        "status": "completed",
        "endpoint": CHAT,
        "model": MODEL,
        "input_file_id": "file-in",
        "output_file_id": "file-out",
        "request_counts": {"total": 4, "completed": 4, "failed": 0},
        "usage": {"input_tokens": 4, "output_tokens": 8, "total_tokens": 12},
        "errors": [],
        "created_at": 1_700_000_000,
        **batch,
    }
    return {
        "schema_version": 2,
        "status": REASON_TO_STATUS[termination_reason],
        "termination_reason": termination_reason,
        "batch_id": state["batch_id"],
        "message": f"Batch {state['batch_id']} ended ({termination_reason}).",
        "batch": state,
    }


# Airflow's metadata database --------------------------------------------------------------------------


def xcoms_of(run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
    """Every XCom a task instance pushed in a run, by key, deserialized."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(XComModel).where(
                XComModel.run_id == run_id, XComModel.task_id == task_id, XComModel.map_index == map_index
            )
        ).all()
        return {row.key: XComModel.deserialize_value(row) for row in rows}


def task_states(run_id: str) -> dict[str, tuple[str | None, int]]:
    """``task_id -> (state, try_number)`` of a run; mapped instances as ``task_id[i]``."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return {
            (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): (
                None if ti.state is None else str(ti.state),
                ti.try_number,
            )
            for ti in session.scalars(select(TaskInstance).where(TaskInstance.run_id == run_id))
        }


def asset_events_of(dag_id: str, run_id: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    """``(asset uri, source task, extra)`` of the asset events a run emitted."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).where(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)
        ).all()
        return [(event.asset.uri, event.source_task_id, dict(event.extra or {})) for event in events]


def state_store_of(dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    """What the task state store holds for a task instance (Airflow 3.3's ``task_state_store``)."""
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(TaskStateStoreModel).where(
                TaskStateStoreModel.dag_id == dag_id,
                TaskStateStoreModel.run_id == run_id,
                TaskStateStoreModel.task_id == task_id,
            )
        ).all()
        return {row.key: json.loads(row.value) for row in rows}


def jsonl(path: Any) -> Iterator[dict[str, Any]]:
    with open(path) as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)
