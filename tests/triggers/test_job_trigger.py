"""OpenAIBatchJobTrigger against a real emulator: one event for a whole round, observed through the
listing, deadlines, failed looks, on_kill cancelling only what has not ended, and the synchronous
wait ending in the same payload."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.triggers.base import TriggerEvent

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.events import validate_event
from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.status import PollSchedule
from airflow_provider_batch.triggers.job import OpenAIBatchJobTrigger
from tests.batch_testing import DIALECTS, connection, route_count, wait_for_status
from tests.triggers.test_trigger import submit

CONN_ID = "job_trigger_emulator"
API_KEY = "sk-job-trigger-canary-7c2d"
LIST = "GET /v1/batches"
RETRIEVE = "GET /v1/batches/{id}"
CANCEL = "POST /v1/batches/{id}/cancel"


@pytest.fixture
def connect(monkeypatch: pytest.MonkeyPatch, dialect: str) -> Callable[[EmulatorProcess], None]:
    def point_at(server: EmulatorProcess) -> None:
        fields = connection(server, dialect, API_KEY, retry_initial_wait=0.01, retry_max_wait=0.05)
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(fields))

    return point_at


def make_trigger(batch_ids: list[str], **overrides: Any) -> OpenAIBatchJobTrigger:
    kwargs: dict[str, Any] = {
        "conn_id": CONN_ID,
        "batch_ids": batch_ids,
        "end_time": time.time() + 60,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
    }
    return OpenAIBatchJobTrigger(**(kwargs | overrides))


async def collect(trigger: OpenAIBatchJobTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


def only_payload(events: list[TriggerEvent]) -> dict[str, Any]:
    assert len(events) == 1, events
    return validate_event(events[0].payload)


def statuses(payload: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(batch["batch_id"], batch.get("status")) for batch in payload["batches"]]


# serialization -------------------------------------------------------------------------------------


def test_serialize_round_trips_through_the_trigger_table_without_a_secret() -> None:
    from airflow.jobs.triggerer_job_runner import TriggerRunner
    from airflow.models.trigger import Trigger
    from airflow.serialization.serialized_objects import BaseSerialization

    trigger = make_trigger(
        ["batch_a", "batch_b"], end_time=1_900_000_000.5, round_number=2, created_after=1_899_990_000
    )
    row = Trigger.from_object(trigger)
    kwargs = BaseSerialization.deserialize(BaseSerialization.serialize(row.kwargs))
    rebuilt = TriggerRunner().get_trigger_by_classpath(row.classpath)(**kwargs)
    assert row.classpath == "airflow_provider_batch.triggers.job.OpenAIBatchJobTrigger"
    assert rebuilt.serialize() == trigger.serialize()
    assert trigger.serialize()[1] == {
        "conn_id": CONN_ID,
        "batch_ids": ["batch_a", "batch_b"],
        "round_number": 2,
        "created_after": 1_899_990_000.0,
        "end_time": 1_900_000_000.5,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
        "max_consecutive_failures": 5,
        "cancel_on_kill": True,
    }
    assert json.loads(json.dumps(trigger.serialize()[1])) == trigger.serialize()[1]
    assert API_KEY not in json.dumps(trigger.serialize())


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"batch_ids": []}, ValueError),
        ({"batch_ids": "batch_a"}, ValueError),
        ({"batch_ids": ["batch_a", ""]}, ValueError),
        ({"batch_ids": ["batch_a", "batch_a"]}, ValueError),
        ({"round_number": 0}, ValueError),
        ({"round_number": True}, ValueError),
        ({"created_after": "yesterday"}, TypeError),
        ({"end_time": "tomorrow"}, TypeError),
        ({"poll_interval": 0}, ValueError),
        ({"poll_interval": 10, "max_poll_interval": 5}, ValueError),
        ({"max_consecutive_failures": 0}, ValueError),
    ],
)
def test_bad_arguments_are_rejected_at_construction(
    overrides: dict[str, Any], error: type[Exception]
) -> None:
    batch_ids = overrides.pop("batch_ids", ["batch_a", "batch_b"])
    with pytest.raises(error):
        make_trigger(batch_ids, **overrides)


def test_defer_timeout_and_message_follow_the_deadline() -> None:
    trigger = make_trigger(["batch_a", "batch_b"], end_time=time.time() + 3600, round_number=3)
    assert 3600 + 0.2 + 50 < trigger.defer_timeout().total_seconds() <= 3600 + 0.2 + 60
    message = trigger.deferral_message("http://server/batches/batch_a")
    assert message.startswith("Deferring: round 3's 2 batches are watched in the triggerer")
    assert message.endswith("First batch's page: http://server/batches/batch_a")


# one event for the round ------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_round_ends_in_one_event_carrying_every_batch(
    make_emulator: Callable[..., EmulatorProcess],
    connect: Callable,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    server = make_emulator("--line-delay", "0.02")
    connect(server)
    batch_ids = [
        submit(server, tmp_path, lines=4),
        submit(server, tmp_path, lines=2, emulator_fail_validation="token_limit_exceeded"),
        submit(server, tmp_path, lines=10, emulator_expire_after_lines="3"),
    ]
    server.reset_stats()

    payload = only_payload(await collect(make_trigger(batch_ids, round_number=2)))

    assert (payload["status"], payload["termination_reason"], payload["batch_id"]) == (
        "success",
        "round_ended",
        batch_ids[0],
    )
    assert statuses(payload) == list(zip(batch_ids, ["completed", "failed", "expired"], strict=True))
    assert payload["batches"][0]["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert payload["batches"][1]["errors"][0]["code"] == "token_limit_exceeded"
    assert payload["message"] == "Round 2: all 3 batches ended (1 completed, 1 failed, 1 expired)."
    # Every look was one listing call; no batch was retrieved on its own.
    assert route_count(server, LIST) >= 1
    assert route_count(server, RETRIEVE) == 0
    seen = capsys.readouterr().out  # the triggerer's structured log goes to stdout
    assert "Round 2: 3 batches (" in seen
    assert "lines done" in seen


async def test_the_deadline_ends_the_round_with_the_last_states(
    emulator: EmulatorProcess, connect: Callable, tmp_path: Path
) -> None:
    connect(emulator)
    finished = submit(emulator, tmp_path, lines=1)
    stuck = submit(emulator, tmp_path, lines=1, emulator_validating_delay="30")
    wait_for_status(emulator, finished)

    payload = only_payload(await collect(make_trigger([stuck, finished], end_time=time.time() + 0.4)))

    assert (payload["status"], payload["termination_reason"]) == ("timeout", "timeout")
    assert statuses(payload) == [(stuck, "validating"), (finished, "completed")]
    assert "1 of 2 batches had not ended at the deadline" in payload["message"]
    emulator.client().batches.cancel(stuck)


async def test_a_deadline_already_past_ends_at_the_first_look_even_unseen(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable
) -> None:
    server = make_emulator()
    connect(server)
    server.configure(faults={"rate": 1.0, "kinds": ["503"], "routes": "^GET"})
    payload = only_payload(await collect(make_trigger(["batch_a", "batch_b"], end_time=time.time() - 1)))
    assert payload["termination_reason"] == "timeout"
    assert payload["batches"] == [{"batch_id": "batch_a"}, {"batch_id": "batch_b"}]


# failed looks -------------------------------------------------------------------------------------


async def test_failed_looks_are_tolerated_then_end_in_an_error_without_cancel(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    batch_ids = [submit(server, tmp_path, lines=1) for _ in range(3)]
    # Two listings fail (each after its retries): tolerated, the round still ends.
    server.configure(faults={"rate": 1.0, "kinds": ["503"], "routes": "^GET /v1/batches$", "count": 12})
    payload = only_payload(await collect(make_trigger(batch_ids, max_consecutive_failures=3)))
    assert payload["termination_reason"] == "round_ended"
    assert server.stats()["total_faults"] == 12

    stuck = [submit(server, tmp_path, lines=1, emulator_validating_delay="30") for _ in range(2)]
    server.configure(faults={"rate": 1.0, "kinds": ["503"], "routes": "^GET /v1/batches$", "count": -1})
    server.reset_stats()
    payload = only_payload(await collect(make_trigger(stuck, max_consecutive_failures=2)))
    assert (payload["status"], payload["termination_reason"]) == ("error", "polling_error")
    assert "2 times in a row" in payload["message"]
    assert route_count(server, RETRIEVE) == 0
    assert route_count(server, CANCEL) == 0


async def test_a_batch_that_does_not_exist_ends_the_round_in_an_error(
    emulator: EmulatorProcess, connect: Callable, tmp_path: Path
) -> None:
    connect(emulator)
    real = submit(emulator, tmp_path, lines=1)
    payload = only_payload(await collect(make_trigger([real, "batch_does_not_exist"])))
    assert payload["termination_reason"] == "polling_error"
    assert "batch_does_not_exist" in payload["message"]
    assert "404" in payload["message"]


# on_kill ----------------------------------------------------------------------------------------------


async def test_on_kill_cancels_only_the_batches_not_seen_ended(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    quick = submit(server, tmp_path, lines=1)
    slow = [submit(server, tmp_path, lines=50, emulator_line_delay="0.05") for _ in range(2)]
    trigger = make_trigger([quick, *slow])
    runner = asyncio.ensure_future(collect(trigger))
    await asyncio.to_thread(wait_for_status, server, quick)
    await asyncio.sleep(0.6)  # a few looks (every 0.2 s at most) see it completed
    runner.cancel()  # what the triggerer does first when a user kills the task
    await trigger.on_kill()
    await trigger.cleanup()

    assert route_count(server, CANCEL) == 2
    client = server.client()
    assert {client.batches.retrieve(batch_id).status for batch_id in slow} <= {"cancelling", "cancelled"}
    assert client.batches.retrieve(quick).status == "completed"


async def test_on_kill_before_any_look_cancels_every_batch_and_swallows_errors(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    done = submit(server, tmp_path, lines=1)
    running = submit(server, tmp_path, lines=50, emulator_line_delay="0.05")
    wait_for_status(server, done)
    await make_trigger([done, running]).on_kill()  # cancelling the completed one is a 400: logged
    assert route_count(server, CANCEL) == 2
    assert server.client().batches.retrieve(running).status in {"cancelling", "cancelled"}


async def test_on_kill_respects_cancel_on_kill_false(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator()
    connect(server)
    running = submit(server, tmp_path, lines=50, emulator_line_delay="0.05")
    trigger = make_trigger([running], cancel_on_kill=False)
    await trigger.on_kill()
    await trigger.cleanup()
    assert route_count(server, CANCEL) == 0
    server.client().batches.cancel(running)


# the synchronous twin -----------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_wait_for_batches_returns_the_triggers_payload(
    make_emulator: Callable[..., EmulatorProcess], connect: Callable, tmp_path: Path
) -> None:
    server = make_emulator("--line-delay", "0.02")
    connect(server)
    batch_ids = [
        submit(server, tmp_path, lines=5),
        submit(server, tmp_path, lines=2, emulator_fail_validation="token_limit_exceeded"),
    ]
    hook = OpenAIBatchHook(conn_id=CONN_ID)
    server.reset_stats()

    synchronous = await asyncio.to_thread(
        hook.wait_for_batches,
        batch_ids,
        end_time=time.time() + 60,
        schedule=PollSchedule(initial=0.05, maximum=0.2),
        round_number=4,
    )

    assert route_count(server, RETRIEVE) == 0
    assert synchronous["termination_reason"] == "round_ended"
    assert statuses(synchronous) == list(zip(batch_ids, ["completed", "failed"], strict=True))
    deferred = only_payload(await collect(make_trigger(batch_ids, round_number=4)))
    assert synchronous == deferred
