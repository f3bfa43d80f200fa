"""The pure core: statuses, the poll decision, the wait state, the schedule, the event schema and
the exception table. Plain values in, plain values out."""

from __future__ import annotations

import random

import pytest

from airflow_provider_batch.events import (
    EVENT_SCHEMA_VERSION,
    build_event,
    snapshot_from_event,
    validate_event,
)
from airflow_provider_batch.exceptions import (
    REASON_TO_EXCEPTION,
    OpenAIBatchCancelled,
    OpenAIBatchError,
    OpenAIBatchExpired,
    OpenAIBatchFailed,
    OpenAIBatchPollingError,
    OpenAIBatchTimeout,
    OpenAIBatchTriggerEventError,
)
from airflow_provider_batch.status import (
    IN_PROGRESS,
    TERMINAL,
    BatchSnapshot,
    BatchStatus,
    PollFailure,
    PollSchedule,
    Wait,
    classify_completion,
    decide,
)

NOW = 1_000_000.0


def snapshot(status: str, **fields: object) -> BatchSnapshot:
    return BatchSnapshot(batch_id="batch_1", status=status, **fields)  # type: ignore[arg-type]


def test_every_status_is_either_in_progress_or_terminal() -> None:
    assert set(BatchStatus) == IN_PROGRESS | TERMINAL
    assert not IN_PROGRESS & TERMINAL
    assert BatchStatus.CANCELLING in IN_PROGRESS  # partial results only appear at "cancelled"


@pytest.mark.parametrize(
    ("status", "done", "reason"),
    [
        ("validating", False, None),
        ("in_progress", False, None),
        ("finalizing", False, None),
        ("cancelling", False, None),
        ("completed", True, "completed"),
        ("failed", True, "failed"),
        ("expired", True, "expired"),
        ("cancelled", True, "cancelled"),
        ("COMPLETED", True, "completed"),
        ("paused_for_maintenance", False, None),
    ],
)
def test_decision_for_each_status(status: str, done: bool, reason: str | None) -> None:
    decision = decide(
        BatchSnapshot.from_api({"id": "b", "status": status}),
        now=NOW,
        end_time=NOW + 1,
        failures=2,
        max_failures=5,
    )
    assert (decision.done, decision.reason, decision.failures) == (done, reason, 0)
    assert decision.unknown_status == (
        "paused_for_maintenance" if status == "paused_for_maintenance" else None
    )


def test_deadline_ends_an_unfinished_batch_but_not_a_finished_one() -> None:
    assert (
        decide(snapshot("in_progress"), now=NOW, end_time=NOW, failures=0, max_failures=5).reason == "timeout"
    )
    assert (
        decide(snapshot("completed"), now=NOW, end_time=NOW - 60, failures=0, max_failures=5).reason
        == "completed"
    )
    unknown = decide(snapshot("mystery"), now=NOW, end_time=NOW, failures=0, max_failures=5)
    assert unknown.reason == "timeout"


def test_poll_failures_are_counted_up_to_the_budget() -> None:
    transient = PollFailure(retryable=True, message="HTTP 503: overloaded", http_status=503)
    first = decide(transient, now=NOW, end_time=NOW + 60, failures=0, max_failures=3)
    assert (first.done, first.failures) == (False, 1)
    last = decide(transient, now=NOW, end_time=NOW + 60, failures=2, max_failures=3)
    assert (last.done, last.reason, last.failures) == (True, "polling_error", 3)
    assert "3 times in a row" in last.message
    fatal = decide(
        PollFailure(False, "HTTP 401: bad key", 401), now=NOW, end_time=NOW + 60, failures=0, max_failures=3
    )
    assert (fatal.done, fatal.reason) == (True, "polling_error")
    late = decide(transient, now=NOW, end_time=NOW, failures=0, max_failures=3)
    assert late.reason == "timeout"


def test_wait_reports_progress_changes_and_an_unknown_status_once() -> None:
    wait = Wait(
        "batch_1", end_time=NOW + 3600, schedule=PollSchedule(initial=10, maximum=40, rng=random.Random(1))
    )
    counts = {"total": 4, "completed": 1, "failed": 0}
    assert 9 <= wait.pause(NOW) <= 11
    first = wait.observe(snapshot("in_progress", request_counts=counts), NOW)
    assert first.progress == "Batch batch_1 in_progress: 1 completed, 0 failed of 4"
    assert 13.5 <= wait.pause(NOW) <= 16.5
    assert wait.observe(snapshot("in_progress", request_counts=counts), NOW).progress is None
    strange = [wait.observe(snapshot("paused"), NOW).warning for _ in range(3)]
    assert strange[0] is not None
    assert "paused" in strange[0]
    assert strange[1:] == [None, None]
    failed = wait.observe(PollFailure(True, "HTTP 500: boom", 500), NOW)
    assert failed.warning is not None
    assert "1/5" in failed.warning
    assert wait.observe(snapshot("completed"), NOW).decision.reason == "completed"
    assert wait.last is not None
    assert wait.last.status == "completed"


def test_wait_never_sleeps_past_the_deadline() -> None:
    wait = Wait("batch_1", end_time=NOW + 2, schedule=PollSchedule(initial=30))
    assert wait.pause(NOW) == pytest.approx(2)
    assert wait.pause(NOW + 5) == 0


def test_default_schedule_costs_at_most_300_status_calls_over_24_hours() -> None:
    schedule = PollSchedule(rng=random.Random(7))
    elapsed, calls = 0.0, 0
    while elapsed < 86_400:
        elapsed += schedule.interval(calls)
        calls += 1
    assert calls <= 300
    assert schedule.interval(0) <= 33  # but a short batch is seen finishing quickly


@pytest.mark.parametrize(
    ("counts", "fraction", "outcome"),
    [
        ({"total": 10, "completed": 10, "failed": 0}, 0.0, "success"),
        ({"total": 10, "completed": 9, "failed": 1}, 0.0, "too_many_failed_lines"),
        ({"total": 10, "completed": 9, "failed": 1}, 0.1, "success"),
        ({"total": 10, "completed": 0, "failed": 10}, 0.5, "too_many_failed_lines"),
        ({"total": 10, "completed": 0, "failed": 10}, 1.0, "success"),
        (None, 0.0, "success"),
    ],
)
def test_failed_line_policy(counts: dict[str, int] | None, fraction: float, outcome: str) -> None:
    assert classify_completion(counts, fraction) == outcome


def test_snapshot_normalises_empty_file_ids_and_keeps_errors() -> None:
    batch = {
        "id": "batch_1",
        "status": "failed",
        "output_file_id": "",
        "error_file_id": None,
        "errors": {"object": "list", "data": [{"code": "invalid_json_line", "message": "bad", "line": 3}]},
    }
    shot = BatchSnapshot.from_api(batch)
    assert (shot.output_file_id, shot.error_file_id) == (None, None)
    assert shot.errors == ({"code": "invalid_json_line", "message": "bad", "line": 3, "param": None},)


# events ----------------------------------------------------------------------------------------------


def finished(status: str = "completed") -> dict:
    shot = snapshot(
        status,
        request_counts={"total": 2, "completed": 2, "failed": 0},
        output_file_id="file-out",
        usage={"total_tokens": 9},
        model="gpt-4o-mini",
        endpoint="/v1/chat/completions",
    )
    decision = decide(shot, now=NOW, end_time=NOW + 1, failures=0, max_failures=5)
    return build_event("batch_1", decision, shot)


def test_event_is_plain_json_with_the_documented_keys() -> None:
    event = finished()
    assert event == {
        "schema_version": EVENT_SCHEMA_VERSION,
        "status": "success",
        "termination_reason": "completed",
        "batch_id": "batch_1",
        "openai_status": "completed",
        "request_counts": {"total": 2, "completed": 2, "failed": 0},
        "output_file_id": "file-out",
        "error_file_id": None,
        "errors": [],
        "usage": {"total_tokens": 9},
        "model": "gpt-4o-mini",
        "endpoint": "/v1/chat/completions",
        "message": "Batch batch_1 is completed.",
    }
    assert validate_event(event) is event
    assert snapshot_from_event(event).output_file_id == "file-out"


def test_an_unfinished_decision_makes_no_event() -> None:
    decision = decide(snapshot("in_progress"), now=NOW, end_time=NOW + 1, failures=0, max_failures=5)
    with pytest.raises(ValueError, match="ends the wait"):
        build_event("batch_1", decision, None)


@pytest.mark.parametrize(
    ("event", "complaint"),
    [
        (None, "got NoneType"),
        ("success", "got str"),
        ({**finished(), "schema_version": EVENT_SCHEMA_VERSION + 1}, "upgrade the provider"),
        ({**finished(), "schema_version": None}, "schema_version"),
        ({**finished(), "status": "succeeded"}, "Unknown trigger event status"),
        ({**finished(), "termination_reason": "magic"}, "termination_reason"),
        ({**finished(), "batch_id": ""}, "no batch_id"),
    ],
)
def test_untrustworthy_events_are_rejected(event: object, complaint: str) -> None:
    with pytest.raises(OpenAIBatchTriggerEventError, match=complaint):
        validate_event(event)


def test_unknown_extra_keys_are_ignored() -> None:
    event = {**finished(), "added_in_a_later_version": 1}
    assert validate_event(event)["batch_id"] == "batch_1"


# exceptions ----------------------------------------------------------------------------------------


def test_reason_table_maps_every_bad_ending() -> None:
    assert {
        "failed": OpenAIBatchFailed,
        "expired": OpenAIBatchExpired,
        "cancelled": OpenAIBatchCancelled,
        "timeout": OpenAIBatchTimeout,
        "polling_error": OpenAIBatchPollingError,
    } == REASON_TO_EXCEPTION
    assert all(issubclass(error, OpenAIBatchError) for error in REASON_TO_EXCEPTION.values())


def test_failed_batch_message_shows_the_api_errors() -> None:
    errors = [
        {
            "code": "token_limit_exceeded",
            "message": "Enqueued token limit reached",
            "line": None,
            "param": None,
        },
        *(
            {"code": "invalid_json_line", "message": "not JSON", "line": n, "param": None}
            for n in range(2, 9)
        ),
    ]
    error = OpenAIBatchFailed("Batch batch_1 failed.", batch_id="batch_1", errors=errors)
    text = str(error)
    assert "[token_limit_exceeded] Enqueued token limit reached" in text
    assert "line 2: [invalid_json_line] not JSON" in text
    assert "and 3 more" in text
    assert error.errors == errors
