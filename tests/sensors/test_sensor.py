"""``OpenAIBatchSensor`` called directly on real batches: the deferrable path defers to the
operator's trigger (and never asks it to cancel), poke mode really pokes and returns the manifest
through ``PokeReturnValue``, ``soft_fail`` skips on a bad batch in both modes, and the trigger's
timeout becomes ``AirflowSensorTimeout``. The DAG-level view of the same is in
``tests/test_dag_end_to_end.py``.

As in ``tests/operators``, the context's task instance and state store are doubles of Airflow's
runtime (``tests.batch_testing.make_context``); batches, HTTP and trigger events are real.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import (  # airflow.sdk.exceptions (3.2+) or airflow.exceptions
    AirflowSensorTimeout,
    AirflowSkipException,
    TaskDeferred,
)
from airflow.sdk import PokeReturnValue

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.exceptions import (
    OpenAIBatchFailed,
    OpenAIBatchPollingError,
    OpenAIBatchTriggerEventError,
)
from airflow_provider_batch.operators.batch import DEFER_METHOD_NAME
from airflow_provider_batch.sensors.batch import OpenAIBatchSensor
from airflow_provider_batch.triggers.batch import DEFER_GRACE, OpenAIBatchTrigger
from tests.batch_testing import (
    API_KEY,
    CHAT,
    chat_record,
    event,
    make_context,
    route_count,
    use_emulator,
    wait_for_status,
)

CONN = "batch_sensor"
GET_BATCH = "GET /v1/batches/{id}"
CANCEL = "POST /v1/batches/{id}/cancel"


@pytest.fixture
def server(make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    server = make_emulator()
    use_emulator(monkeypatch, CONN, server)
    return server


def submit(server: EmulatorProcess, lines: int = 3, **metadata: str) -> str:
    """Create a batch with the plain SDK: the sensor waits on batches submitted elsewhere."""
    client = server.client()
    body = "".join(
        json.dumps({**chat_record(f"s-{i}", f"sensor {i}"), "method": "POST", "url": CHAT}) + "\n"
        for i in range(lines)
    )
    file = client.files.create(file=("in.jsonl", body.encode()), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint=CHAT, completion_window="24h", metadata=metadata or None
    ).id


def sensor(batch_id: str, **kwargs: Any) -> OpenAIBatchSensor:
    defaults: dict[str, Any] = {
        "task_id": "unit_sensor",
        "batch_id": batch_id,
        "conn_id": CONN,
        "poke_interval": 0.05,
        "max_poll_interval": 0.2,
    }
    return OpenAIBatchSensor(**{**defaults, **kwargs})


async def run_trigger(deferred: TaskDeferred) -> dict[str, Any]:
    _, kwargs = deferred.trigger.serialize()
    trigger = OpenAIBatchTrigger(**kwargs)
    return (await asyncio.wait_for(anext(trigger.run()), 30)).payload


async def test_deferrable_sensor_defers_to_the_operators_trigger_without_cancel(
    server: EmulatorProcess,
) -> None:
    batch_id = submit(server, emulator_line_delay="0.2")
    context = make_context("unit_sensor")
    before = time.time()

    with pytest.raises(TaskDeferred) as deferred:
        sensor(batch_id, deferrable=True, timeout=600).execute(context)

    trigger = deferred.value.trigger
    assert isinstance(trigger, OpenAIBatchTrigger)
    assert deferred.value.method_name == DEFER_METHOD_NAME
    classpath, kwargs = trigger.serialize()
    assert kwargs["batch_id"] == batch_id
    assert kwargs["conn_id"] == CONN
    assert kwargs["cancel_on_kill"] is False, "waiting on a batch gives no right to cancel it"
    assert before + 600 <= kwargs["end_time"] <= time.time() + 600
    assert deferred.value.timeout.total_seconds() == pytest.approx(600 + 0.2 + DEFER_GRACE)
    assert deferred.value.timeout.total_seconds() > kwargs["end_time"] - time.time()
    assert API_KEY not in json.dumps([classpath, kwargs, deferred.value.kwargs])
    assert context["ti"].xcoms["batch_url"] == f"{server.base_url}/batches/{batch_id}"

    payload = await run_trigger(deferred.value)
    manifest = sensor(batch_id, deferrable=True).execute_complete(context, event=payload)

    assert manifest["batch_id"] == batch_id
    assert manifest["status"] == "completed"
    assert manifest["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert context["ti"].xcoms["output_file_id"] == manifest["output_file_id"] is not None
    assert route_count(server, CANCEL) == 0


def test_deferrable_sensor_on_a_finished_batch_returns_without_deferring(server: EmulatorProcess) -> None:
    batch_id = submit(server)
    wait_for_status(server, batch_id)

    manifest = sensor(batch_id, deferrable=True).execute(make_context("unit_sensor"))

    assert manifest["status"] == "completed"
    assert manifest["batch_id"] == batch_id


def test_poke_reports_progress_then_the_manifest(server: EmulatorProcess) -> None:
    batch_id = submit(server, emulator_line_delay="0.3")
    context = make_context("unit_sensor")
    poking = sensor(batch_id, deferrable=False, mode="poke")

    assert poking.poke(context) is False
    wait_for_status(server, batch_id)
    done = poking.poke(context)

    assert isinstance(done, PokeReturnValue)
    assert done.is_done is True
    assert done.xcom_value["batch_id"] == batch_id
    assert done.xcom_value["status"] == "completed"


def test_poke_mode_execute_really_pokes_until_done(server: EmulatorProcess) -> None:
    batch_id = submit(server, lines=3, emulator_line_delay="0.2")
    context = make_context("unit_sensor")

    manifest = sensor(batch_id, deferrable=False, mode="poke", timeout=60).execute(context)

    assert manifest["status"] == "completed"
    assert manifest["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert route_count(server, GET_BATCH) >= 3, "several pokes while the batch ran"


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "poke"])
def test_soft_fail_skips_a_failed_batch(server: EmulatorProcess, deferrable: bool) -> None:
    batch_id = submit(server, emulator_fail_validation="token_limit_exceeded")
    wait_for_status(server, batch_id)

    with pytest.raises(AirflowSkipException):
        sensor(batch_id, deferrable=deferrable, mode="poke", soft_fail=True).execute(
            make_context("unit_sensor")
        )
    with pytest.raises(OpenAIBatchFailed, match="token_limit_exceeded"):
        sensor(batch_id, deferrable=deferrable, mode="poke").execute(make_context("unit_sensor"))


def test_soft_fail_skips_a_failed_batch_after_resume() -> None:
    # Airflow's own resume path (BaseSensorOperator.resume_execution) applies soft_fail there.
    failed = event("failed", status="failed", batch_id="batch_x")
    with pytest.raises(AirflowSkipException):
        sensor("batch_x", deferrable=True, soft_fail=True).resume_execution(
            DEFER_METHOD_NAME, {"event": failed}, make_context("unit_sensor")
        )
    with pytest.raises(OpenAIBatchFailed):
        sensor("batch_x", deferrable=True).resume_execution(
            DEFER_METHOD_NAME, {"event": failed}, make_context("unit_sensor")
        )


async def test_trigger_timeout_is_a_sensor_timeout_and_cancels_nothing(server: EmulatorProcess) -> None:
    batch_id = submit(server, emulator_line_delay="1")
    context = make_context("unit_sensor")
    with pytest.raises(TaskDeferred) as deferred:
        sensor(batch_id, deferrable=True, timeout=0.5).execute(context)

    payload = await run_trigger(deferred.value)

    assert payload["termination_reason"] == "timeout"
    with pytest.raises(AirflowSensorTimeout):
        sensor(batch_id, deferrable=True, timeout=0.5).execute_complete(context, event=payload)
    with pytest.raises(AirflowSkipException):
        sensor(batch_id, deferrable=True, timeout=0.5, soft_fail=True).resume_execution(
            DEFER_METHOD_NAME, {"event": payload}, context
        )
    assert route_count(server, CANCEL) == 0
    assert server.client().batches.retrieve(batch_id).status == "in_progress"
    server.client().batches.cancel(batch_id)


@pytest.mark.parametrize("payload", [None, {**event(), "schema_version": 3}, {**event(), "status": "weird"}])
def test_sensor_rejects_untrusted_events(payload: Any) -> None:
    with pytest.raises(OpenAIBatchTriggerEventError):
        sensor("batch_unit", deferrable=True).execute_complete(make_context("unit_sensor"), event=payload)


def test_an_unknown_batch_id_says_what_to_check(server: EmulatorProcess) -> None:
    with pytest.raises(OpenAIBatchPollingError) as raised:
        sensor("batch_does_not_exist", mode="poke").execute(make_context("unit_sensor"))

    message = str(raised.value)
    assert message.startswith(
        f"Could not follow batch batch_does_not_exist on connection '{CONN}' ({server.base_url}):"
        " Polling failed: HTTP 404"
    )
    assert "not cancelled" in message
    assert "Check the batch id" in message
