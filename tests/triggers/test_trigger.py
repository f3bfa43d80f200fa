"""OpenAIBatchTrigger against a real emulator: one event per outcome, deadlines that survive a
re-creation, tolerated poll failures, no blocking of the event loop, on_kill versus cleanup. The
lifecycle tests run on OpenAI's API and on Azure's (an ``AzureOpenAI`` connection; batches in the
classic ``/chat/completions`` form)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_batch import status as status_module
from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.hooks.batch import SHARED_ASYNC_CLIENTS, OpenAIBatchHook
from airflow_provider_batch.observer import observers
from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger
from tests.batch_testing import DIALECTS, connection

CONN_ID = "trigger_emulator"
API_KEY = "sk-trigger-canary-5f1e"


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch, dialect: str) -> Callable[[EmulatorProcess], None]:
    """Point the trigger's connection at a server, written for the test's ``dialect``."""

    def point_at(server: EmulatorProcess) -> None:
        fields = connection(server, dialect, API_KEY, retry_initial_wait=0.01)
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(fields))

    return point_at


def submit(server: EmulatorProcess, tmp_path: Path, lines: int = 3, **metadata: str) -> str:
    """Create a chat batch with the server's SDK client (Azure: the classic endpoint form, once
    the upload is processed)."""
    client = server.client()
    endpoint = "/chat/completions" if server.dialect == "azure" else "/v1/chat/completions"
    path = tmp_path / "requests.jsonl"
    with path.open("w") as out:
        for index in range(lines):
            body: dict[str, Any] = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"q{index}"}],
            }
            request = {
                "custom_id": f"r{index}",
                "method": "POST",
                "url": endpoint,
                "body": body,
            }
            out.write(json.dumps(request) + "\n")
    uploaded = client.files.create(file=path, purpose="batch")
    while uploaded.status != "processed":
        time.sleep(0.05)
        uploaded = client.files.retrieve(uploaded.id)
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
        metadata=metadata,
    )
    return batch.id


def make_trigger(batch_id: str, **overrides: Any) -> OpenAIBatchTrigger:
    kwargs: dict[str, Any] = {
        "conn_id": CONN_ID,
        "batch_id": batch_id,
        "end_time": time.time() + 60,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
    }
    return OpenAIBatchTrigger(**(kwargs | overrides))


async def collect(trigger: OpenAIBatchTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


def only_payload(events: list[TriggerEvent]) -> dict[str, Any]:
    assert len(events) == 1, events
    return events[0].payload


# serialization -----------------------------------------------------------------------------------


def test_serialize_round_trips_through_the_trigger_table_shape() -> None:
    from airflow.jobs.triggerer_job_runner import TriggerRunner
    from airflow.models.trigger import Trigger
    from airflow.serialization.serialized_objects import BaseSerialization

    trigger = make_trigger("batch_abc", end_time=1_900_000_000.5, cancel_on_kill=False)
    row = Trigger.from_object(trigger)
    kwargs = BaseSerialization.deserialize(BaseSerialization.serialize(row.kwargs))
    rebuilt = TriggerRunner().get_trigger_by_classpath(row.classpath)(**kwargs)
    assert row.classpath == "airflow_provider_batch.triggers.batch.OpenAIBatchTrigger"
    assert rebuilt.serialize() == trigger.serialize()
    assert trigger.serialize()[1] == {
        "conn_id": CONN_ID,
        "batch_id": "batch_abc",
        "end_time": 1_900_000_000.5,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
        "max_consecutive_failures": 5,
        "cancel_on_kill": False,
    }
    assert API_KEY not in json.dumps(trigger.serialize()[1])


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"end_time": "tomorrow"}, TypeError),
        ({"poll_interval": 0}, ValueError),
        ({"poll_interval": 10, "max_poll_interval": 5}, ValueError),
        ({"max_consecutive_failures": 0}, ValueError),
    ],
)
def test_bad_arguments_are_rejected_at_construction(
    overrides: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        make_trigger("batch_x", **overrides)
    with pytest.raises(ValueError, match="batch_id"):
        make_trigger("")


# one event per outcome ---------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_completed_batch_yields_one_success_event_after_the_transitions(
    make_emulator: Callable[..., EmulatorProcess],
    connect: Callable,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    server = make_emulator("--validating-delay", "0.6", "--finalizing-delay", "0.6", "--line-delay", "0.05")
    connect(server)
    batch_id = submit(server, tmp_path, lines=4)
    payload = only_payload(await collect(make_trigger(batch_id)))
    assert payload["status"] == "success"
    assert payload["termination_reason"] == "completed"
    assert payload["batch"]["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert payload["batch"]["output_file_id"]
    assert payload["batch"]["error_file_id"] is None
    seen = capsys.readouterr().out  # the triggerer's structured log goes to stdout
    for status in ("validating", "in_progress", "finalizing"):
        assert f"{batch_id} {status}" in seen


@pytest.mark.parametrize(
    ("metadata", "status", "reason"),
    [
        ({"emulator_fail_validation": "token_limit_exceeded"}, "failed", "failed"),
        ({"emulator_expire_after_lines": "1", "emulator_line_delay": "0.05"}, "expired", "expired"),
    ],
)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_failed_and_expired_batches(
    dialect_emulator: EmulatorProcess,
    connect: Callable,
    tmp_path: Path,
    metadata: dict[str, str],
    status: str,
    reason: str,
) -> None:
    connect(dialect_emulator)
    payload = only_payload(await collect(make_trigger(submit(dialect_emulator, tmp_path, **metadata))))
    assert (payload["status"], payload["termination_reason"], payload["batch"]["status"]) == (
        status,
        reason,
        status,
    )
    if status == "failed":
        assert payload["batch"]["errors"][0]["code"] == "token_limit_exceeded"
    else:
        assert payload["batch"]["output_file_id"]
        assert payload["batch"]["error_file_id"]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_cancelling_is_waited_out_until_cancelled(
    dialect_emulator: EmulatorProcess, connect: Callable, tmp_path: Path
) -> None:
    connect(dialect_emulator)
    batch_id = submit(
        dialect_emulator, tmp_path, lines=20, emulator_line_delay="0.05", emulator_cancelling_delay="0.4"
    )
    dialect_emulator.client().batches.cancel(batch_id)
    payload = only_payload(await collect(make_trigger(batch_id)))
    assert (payload["status"], payload["batch"]["status"]) == ("cancelled", "cancelled")
    assert payload["batch"]["error_file_id"]  # the unfinished lines, written once cancelling is over


@pytest.mark.parametrize(
    "metadata",
    [
        {"emulator_validating_delay": "30"},
        {"emulator_line_delay": "5"},
        {"emulator_finalizing_delay": "30"},
    ],
)
async def test_deadline_yields_timeout_with_the_last_status(
    emulator: EmulatorProcess, connect: Callable, tmp_path: Path, metadata: dict[str, str]
) -> None:
    connect(emulator)
    batch_id = submit(emulator, tmp_path, lines=1, **metadata)
    await asyncio.sleep(0.1)
    payload = only_payload(await collect(make_trigger(batch_id, end_time=time.time() + 0.3)))
    assert payload["status"] == "timeout"
    assert payload["batch"]["status"] in {"validating", "in_progress", "finalizing"}
    emulator.client().batches.cancel(batch_id)


async def test_deadline_is_wall_clock_and_survives_re_creation(
    emulator: EmulatorProcess, connect: Callable, tmp_path: Path
) -> None:
    """A triggerer restart re-creates the trigger from serialize(): the deadline must not reset."""
    connect(emulator)
    batch_id = submit(emulator, tmp_path, lines=1, emulator_validating_delay="30")
    first = make_trigger(batch_id, end_time=time.time() + 0.6)
    runner = asyncio.ensure_future(collect(first))
    await asyncio.sleep(0.4)
    runner.cancel()  # the "restart"
    restarted = OpenAIBatchTrigger(**first.serialize()[1])
    started = time.monotonic()
    payload = only_payload(await collect(restarted))
    assert payload["status"] == "timeout"
    assert time.monotonic() - started < 0.5  # the remaining ~0.2 s, not a fresh 0.6 s
    emulator.client().batches.cancel(batch_id)


# failures while polling --------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_transient_poll_failures_are_tolerated(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    batch_id = submit(server, tmp_path)
    server.configure(
        faults={"rate": 1.0, "kinds": ["500", "503", "drop", "429"], "count": 4, "routes": "GET"}
    )
    payload = only_payload(await collect(make_trigger(batch_id)))
    assert payload["status"] == "success"
    assert server.stats()["total_faults"] == 4


async def test_persistent_poll_failures_end_in_an_error_event_without_cancel(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    batch_id = submit(server, tmp_path, emulator_validating_delay="30")
    server.configure(faults={"rate": 1.0, "kinds": ["503"], "routes": "GET"})
    server.reset_stats()
    payload = only_payload(await collect(make_trigger(batch_id, max_consecutive_failures=3)))
    assert (payload["status"], payload["termination_reason"]) == ("error", "polling_error")
    assert "3 times in a row" in payload["message"]
    stats = server.stats()["requests"]
    assert stats["GET /v1/batches/{id}"] == 3 * 6  # three observations, each tried six times
    assert "POST /v1/batches/{id}/cancel" not in stats


async def test_a_vanished_batch_is_a_polling_error_at_once(
    emulator: EmulatorProcess, connect: Callable
) -> None:
    connect(emulator)
    payload = only_payload(await collect(make_trigger("batch_does_not_exist")))
    assert payload["termination_reason"] == "polling_error"
    assert "404" in payload["message"]


# the event loop is never blocked ----------------------------------------------------------------


async def test_polling_never_blocks_the_event_loop(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    """A watchdog like the triggerer's: a coroutine that should wake every 10 ms measures how late it
    is while 20 triggers poll an emulator that adds 100 ms to every call."""
    server = make_emulator("--latency", "0.1", "--line-delay", "0.02")
    connect(server)
    batch_ids = [submit(server, tmp_path, lines=10) for _ in range(20)]
    worst = 0.0
    stop = asyncio.Event()

    async def watchdog() -> None:
        nonlocal worst
        while not stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            worst = max(worst, time.perf_counter() - before - 0.01)

    watcher = asyncio.create_task(watchdog())
    results = await asyncio.gather(*(collect(make_trigger(batch_id)) for batch_id in batch_ids))
    stop.set()
    await watcher
    assert all(only_payload(events)["status"] == "success" for events in results)
    # Any blocking HTTP call would stall the loop for at least the 100 ms of added latency.
    assert worst < 0.1, f"the loop stalled for {worst * 1000:.0f} ms"


async def test_triggers_share_one_observer_and_client_and_hand_them_back(
    emulator: EmulatorProcess, connect: Callable, tmp_path: Path
) -> None:
    connect(emulator)
    batch_ids = [submit(emulator, tmp_path, lines=4, emulator_line_delay="0.25") for _ in range(5)]
    triggers = [make_trigger(batch_id) for batch_id in batch_ids]
    runs = [asyncio.ensure_future(collect(trigger)) for trigger in triggers]
    await asyncio.sleep(0.3)
    config = await OpenAIBatchHook(conn_id=CONN_ID).aconfig()
    assert observers()[CONN_ID].users == 5, "one observer for the connection's five triggers"
    # The observer's own lease, plus its sweep's while one is under way: never one per trigger.
    assert SHARED_ASYNC_CLIENTS.users(config) in (1, 2), "whose one client serves them all"
    await asyncio.gather(*runs)
    assert CONN_ID not in observers()
    assert SHARED_ASYNC_CLIENTS.users(config) == 0


# on_kill versus cleanup --------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_on_kill_cancels_the_batch_once(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    batch_id = submit(server, tmp_path, lines=50, emulator_line_delay="0.05")
    trigger = make_trigger(batch_id)
    runner = asyncio.ensure_future(collect(trigger))
    await asyncio.sleep(0.2)
    runner.cancel()  # what the triggerer does first when a user kills the task
    await trigger.on_kill()
    await trigger.cleanup()
    assert server.stats()["requests"]["POST /v1/batches/{id}/cancel"] == 1
    assert server.client().batches.retrieve(batch_id).status in {"cancelling", "cancelled"}


async def test_on_kill_respects_cancel_on_kill_false_and_cleanup_never_cancels(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    batch_id = submit(server, tmp_path, lines=50, emulator_line_delay="0.05")
    trigger = make_trigger(batch_id, cancel_on_kill=False)
    await trigger.on_kill()
    await trigger.cleanup()
    assert "POST /v1/batches/{id}/cancel" not in server.stats()["requests"]
    assert server.client().batches.retrieve(batch_id).status == "in_progress"
    server.client().batches.cancel(batch_id)


async def test_on_kill_swallows_errors(emulator: EmulatorProcess, connect: Callable, tmp_path: Path) -> None:
    connect(emulator)
    batch_id = submit(emulator, tmp_path)
    await collect(make_trigger(batch_id))  # completed: cancelling it now is a 400
    await make_trigger(batch_id).on_kill()  # logged, not raised


async def test_a_hanging_status_call_cannot_outlast_the_deadline(
    make_emulator: Callable[..., EmulatorProcess],
    connect: Callable,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A status call that hangs near the deadline (the HTTP timeout plus the retry policy allow 15
    minutes) is cut short ``OBSERVATION_GRACE`` past it, so the trigger's own timeout event, with
    the batch's last state, comes before Airflow's deferral timeout would end the task blind."""
    monkeypatch.setattr(status_module, "OBSERVATION_GRACE", 1.0)  # 30 s in production; the rule is the same
    server = make_emulator()
    connect(server)
    batch_id = submit(server, tmp_path, lines=1, emulator_line_delay="60")
    trigger = make_trigger(batch_id, end_time=time.time() + 2, poll_interval=0.2, max_poll_interval=0.2)
    airflow_gives_up_at = time.time() + trigger.defer_timeout().total_seconds()
    run = asyncio.ensure_future(collect(trigger))
    while not server.stats()["requests"].get("GET /v1/batches/{id}"):  # noqa: ASYNC110 (another process)
        await asyncio.sleep(0.05)
    await asyncio.to_thread(server.configure, faults={"latency": 600})  # every later call hangs

    payload = only_payload(await asyncio.wait_for(run, timeout=30))

    ended = time.time()
    assert payload["termination_reason"] == "timeout"
    assert payload["batch"]["status"] == "in_progress", "the last state seen is kept"
    assert ended <= trigger.end_time + status_module.OBSERVATION_GRACE + 1.0
    assert ended < airflow_gives_up_at
    await asyncio.to_thread(server.configure, faults={"latency": 0})
    server.client().batches.cancel(batch_id)
