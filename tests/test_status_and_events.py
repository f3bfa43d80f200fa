"""The pure core: statuses, the poll decision, the wait state, the schedule, the event schema and
the exception table. Plain values in, plain values out."""

from __future__ import annotations

import json
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
    OpenAIBatchPartialFailure,
    OpenAIBatchPollingError,
    OpenAIBatchTimeout,
    OpenAIBatchTriggerEventError,
    ending_error,
)
from airflow_provider_batch.status import (
    DEFER_GRACE,
    IN_PROGRESS,
    OBSERVATION_GRACE,
    TERMINAL,
    BatchSnapshot,
    BatchStatus,
    PollFailure,
    PollSchedule,
    Wait,
    classify_completion,
    decide,
    format_utc,
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


def test_wait_reports_each_observation_and_an_unknown_status_once() -> None:
    wait = Wait(
        "batch_1", end_time=NOW + 3600, schedule=PollSchedule(initial=10, maximum=40, rng=random.Random(1))
    )
    counts = {"total": 4, "completed": 1, "failed": 0}
    assert 9 <= wait.pause(NOW) <= 11
    first = wait.observe(snapshot("in_progress", request_counts=counts, created_at=int(NOW) - 750), NOW)
    assert 13.5 <= first.pause <= 16.5
    assert first.progress == (
        f"Batch batch_1 in_progress: 1 of 4 lines done (25%), 0 failed; 12m30s since created;"
        f" next look in {round(first.pause)}s; deadline in 1h00m ({format_utc(NOW + 3600)})"
    )
    again = wait.observe(snapshot("in_progress", request_counts=counts), NOW + 15)
    assert again.progress is not None
    assert again.progress.startswith(
        "Batch batch_1 in_progress: 1 of 4 lines done (25%), 0 failed; 15s waited"
    )
    strange = [wait.observe(snapshot("paused"), NOW).warning for _ in range(3)]
    assert strange[0] is not None
    assert "paused" in strange[0]
    assert strange[1:] == [None, None]
    failed = wait.observe(PollFailure(True, "HTTP 500: boom", 500), NOW)
    assert failed.warning is not None
    assert "1/5" in failed.warning
    assert f"next look in {round(failed.pause)}s" in failed.warning
    done = wait.observe(snapshot("completed", request_counts={"total": 4, "completed": 4, "failed": 0}), NOW)
    assert done.decision.reason == "completed"
    assert done.pause == 0
    assert done.progress == "Batch batch_1 completed: 4 of 4 lines done (100%), 0 failed; 0s waited"


def test_the_wait_looks_again_when_the_progress_says_the_lines_end() -> None:
    wait = Wait("batch_1", end_time=NOW + 86_400, schedule=PollSchedule(initial=30, maximum=300, jitter=0))
    assert wait.pause(NOW) == 30
    wait.observe(
        snapshot("in_progress", request_counts={"total": 1000, "completed": 300, "failed": 0}), NOW + 30
    )
    # 650 lines in 45 s: the last 50 need about 3.5 s, so the next look comes at the floor (10 s),
    # not after the schedule's 67.5 s.
    step = wait.observe(
        snapshot("in_progress", request_counts={"total": 1000, "completed": 940, "failed": 10}), NOW + 75
    )
    assert step.pause == 10
    # All lines done: finalizing is looked at again after half as long as it has lasted so far.
    finalizing = {"total": 1000, "completed": 990, "failed": 10}
    moment, pauses = NOW + 85, []
    for _ in range(8):
        pauses.append(wait.observe(snapshot("finalizing", request_counts=finalizing), moment).pause)
        moment += pauses[-1]
    assert pauses[:6] == [10, 10, 10, 15, 22.5, 33.75]
    # The early looks are spent: the schedule again.
    assert pauses[-1] > 100


def test_no_progress_no_prediction() -> None:
    wait = Wait("batch_1", end_time=NOW + 86_400, schedule=PollSchedule(initial=30, maximum=300, jitter=0))
    wait.pause(NOW)
    stuck = {"total": 1000, "completed": 300, "failed": 0}
    wait.observe(snapshot("in_progress", request_counts=stuck), NOW + 30)
    assert wait.observe(snapshot("in_progress", request_counts=stuck), NOW + 75).pause == 67.5
    assert wait.predicted_end(NOW + 75) is None
    assert Wait("batch_1", end_time=NOW).predicted_end(NOW) is None


@pytest.mark.parametrize("shape", ["linear", "stalls at 90 %", "bursts", "finalizes for 3 h"])
def test_predictions_keep_a_24_hour_batch_within_300_status_calls(shape: str) -> None:
    """The budget of ``benchmarks/polling_cost.py``: a batch that uses its whole window, with
    progress that tempts the prediction in different ways, costs at most 300 status calls."""
    total, ends = 50_000, 86_400.0

    def done_at(elapsed: float) -> int:
        share = elapsed / ends
        if shape == "stalls at 90 %":
            share = min(0.9, share * 20)
        elif shape == "bursts":
            share = min(1.0, (elapsed // 3600) / 24 + (0.04 if elapsed % 3600 > 3000 else 0.0))
        elif shape == "finalizes for 3 h":
            share = min(1.0, elapsed / (ends - 3 * 3600))
        return min(total, int(total * share))

    for seed in range(5):
        wait = Wait("batch_1", end_time=NOW + 90_000, schedule=PollSchedule(rng=random.Random(seed)))
        elapsed, calls = wait.pause(NOW), 0
        while elapsed < ends:
            calls += 1
            done = done_at(elapsed)
            status = "in_progress" if done < total else "finalizing"
            counts = {"total": total, "completed": done, "failed": 0}
            elapsed += wait.observe(snapshot(status, request_counts=counts), NOW + elapsed).pause
        assert calls <= 300, (shape, seed, calls)


def test_wait_never_sleeps_past_the_deadline() -> None:
    wait = Wait("batch_1", end_time=NOW + 2, schedule=PollSchedule(initial=30))
    assert wait.pause(NOW) == pytest.approx(2)
    assert wait.pause(NOW + 5) == 0


def test_an_observation_may_run_past_the_deadline_only_by_the_grace() -> None:
    wait = Wait("batch_1", end_time=NOW + 100)
    assert wait.observation_budget(NOW) == 100 + OBSERVATION_GRACE
    assert wait.observation_budget(NOW + 100) == OBSERVATION_GRACE
    assert wait.observation_budget(NOW + 500) == OBSERVATION_GRACE
    # Airflow's deferral timeout fires DEFER_GRACE (plus the longest pause) past the deadline:
    # whatever an observation started before it, the trigger's own event comes first.
    assert OBSERVATION_GRACE < DEFER_GRACE


def test_a_saved_wait_carries_its_failures_warnings_and_last_state_over() -> None:
    first = Wait("batch_1", end_time=float("inf"), max_failures=3)
    first.observe(snapshot("in_progress", request_counts={"total": 2, "completed": 1, "failed": 0}), NOW)
    first.observe(snapshot("paused"), NOW)
    first.observe(PollFailure(True, "HTTP 503: busy", 503), NOW)
    saved = json.loads(json.dumps(first.saved()))

    second = Wait("batch_1", end_time=float("inf"), max_failures=3)
    second.restore(saved)
    second.observe(PollFailure(True, "HTTP 503: busy", 503), NOW)
    ended = second.observe(PollFailure(True, "HTTP 503: busy", 503), NOW)
    assert (ended.decision.done, ended.decision.reason) == (True, "polling_error")
    assert second.last is not None
    assert second.last.status == "paused"

    third = Wait("batch_1", end_time=float("inf"))
    third.restore(saved)
    assert third.observe(snapshot("paused"), NOW).warning is None  # reported once, by the first

    other = Wait("batch_2", end_time=float("inf"))
    other.restore(saved)
    assert (other.failures, other.last, other.unknown_reported) == (0, None, False)


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


API_BATCH = {
    "id": "batch_1",
    "object": "batch",
    "endpoint": "/v1/embeddings",
    "model": "text-embedding-3-small",
    "status": "completed",
    "input_file_id": "file-in",
    "output_file_id": "file-out",
    "error_file_id": "",
    "completion_window": "24h",
    "request_counts": {"total": 2, "completed": 2, "failed": 0},
    "usage": {"input_tokens": 7, "output_tokens": 0, "total_tokens": 7},
    "errors": None,
    "metadata": {"airflow_dag_id": "d", "team": "search"},
    "created_at": 1_700_000_000,
    "in_progress_at": 1_700_000_030,
    "finalizing_at": 1_700_000_600,
    "completed_at": 1_700_000_660,
    "failed_at": None,
    "expired_at": None,
    "cancelling_at": None,
    "cancelled_at": None,
    "expires_at": 1_700_086_400,
}


def test_snapshot_keeps_the_batch_ids_metadata_and_every_timestamp() -> None:
    shot = BatchSnapshot.from_api(API_BATCH)
    assert shot.input_file_id == "file-in"
    assert shot.metadata == {"airflow_dag_id": "d", "team": "search"}
    assert (shot.created_at, shot.in_progress_at, shot.finalizing_at, shot.completed_at) == (
        1_700_000_000,
        1_700_000_030,
        1_700_000_600,
        1_700_000_660,
    )
    assert shot.expires_at == 1_700_086_400
    assert (shot.failed_at, shot.expired_at, shot.cancelling_at, shot.cancelled_at) == (None,) * 4


def test_snapshot_round_trips_through_json_and_ignores_unknown_keys() -> None:
    shot = BatchSnapshot.from_api({**API_BATCH, "errors": {"data": [{"code": "x", "message": "y"}]}})
    data = json.loads(json.dumps(shot.to_dict()))
    assert BatchSnapshot.from_dict(data) == shot
    assert BatchSnapshot.from_dict({**data, "added_later": 1}) == shot


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
        "message": "Batch batch_1 is completed.",
        "batch": {
            "batch_id": "batch_1",
            "status": "completed",
            "endpoint": "/v1/chat/completions",
            "model": "gpt-4o-mini",
            "input_file_id": None,
            "output_file_id": "file-out",
            "error_file_id": None,
            "request_counts": {"total": 2, "completed": 2, "failed": 0},
            "usage": {"total_tokens": 9},
            "errors": [],
            "metadata": None,
            "created_at": None,
            "in_progress_at": None,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "expires_at": None,
        },
    }
    assert json.loads(json.dumps(event)) == event
    assert validate_event(event) is event
    assert snapshot_from_event(event).output_file_id == "file-out"


def test_an_event_without_an_observation_still_names_its_batch() -> None:
    failure = PollFailure(retryable=False, message="HTTP 404: no such batch", http_status=404)
    decision = decide(failure, now=NOW, end_time=NOW + 1, failures=0, max_failures=5)
    event = build_event("batch_1", decision, None)
    assert event["batch"] is None
    assert snapshot_from_event(validate_event(event)) == BatchSnapshot(batch_id="batch_1", status="")


def test_an_event_carries_at_most_twenty_batch_errors() -> None:
    errors = tuple({"code": "invalid_json_line", "message": "x", "line": n, "param": None} for n in range(50))
    decision = decide(
        snapshot("failed", errors=errors), now=NOW, end_time=NOW + 1, failures=0, max_failures=5
    )
    event = build_event("batch_1", decision, snapshot("failed", errors=errors))
    assert [error["line"] for error in event["batch"]["errors"]] == list(range(20))


def test_schema_1_events_of_an_older_triggerer_still_read() -> None:
    written_by_0_1 = {
        "schema_version": 1,
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
    batch = snapshot_from_event(validate_event(written_by_0_1))
    assert (batch.batch_id, batch.status, batch.output_file_id) == ("batch_1", "completed", "file-out")
    assert batch.request_counts == {"total": 2, "completed": 2, "failed": 0}


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
        ({**finished(), "batch": ["completed"]}, "not an object"),
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


def test_partial_failure_message_ranks_codes_and_names_ids_and_where_to_look() -> None:
    error = OpenAIBatchPartialFailure(
        "Batch batch_1 completed, but 40 of 1,000 lines failed (more than max_failed_fraction=0.0).",
        batch_id="batch_1",
        errors_by_code={"server_error": 3, "rate_limit_exceeded": 37},
        failed_ids=[f"req-{n}" for n in range(40)],
        results_uri="s3://bucket/results.jsonl",
        error_file_id="file-err",
    )
    lines = str(error).splitlines()
    assert lines[1] == "Failed lines by error: rate_limit_exceeded (37), server_error (3)"
    assert lines[2] == "First failed custom_ids: " + ", ".join(f"req-{n}" for n in range(10))
    assert lines[3:] == [
        "Every request's outcome, in input order: s3://bucket/results.jsonl",
        "OpenAI's error file: file-err",
    ]
    assert (error.results_uri, len(error.failed_ids)) == ("s3://bucket/results.jsonl", 40)


@pytest.mark.parametrize("reason", sorted(REASON_TO_EXCEPTION))
def test_each_ending_raises_the_tables_error_with_a_message_that_says_what_happened(reason: str) -> None:
    batch = snapshot(
        {"polling_error": "in_progress", "timeout": "in_progress"}.get(reason, reason),
        request_counts={"total": 1000, "completed": 700, "failed": 20},
        output_file_id="file-out",
        errors=({"code": "invalid_json_line", "message": "bad", "line": 3, "param": None},),
    )
    error = ending_error(reason, batch, detail="The last look failed.", where="connection 'c' (http://x/v1)")
    assert type(error) is REASON_TO_EXCEPTION[reason]
    assert error.batch_id == "batch_1"
    expected = {
        "failed": "Batch batch_1 failed: the API rejected it before running it, so nothing was billed.",
        "expired": "Batch batch_1 expired: the 24 h completion window closed with 720 of 1,000 lines done.",
        "cancelled": "Batch batch_1 was cancelled with 720 of 1,000 lines done.",
        "timeout": "Batch batch_1 did not end within the task's timeout: it was in_progress, with 720 of",
        "polling_error": "Could not follow batch batch_1 on connection 'c' (http://x/v1): The last look",
    }[reason]
    assert str(error).startswith(expected)
    if reason in ("expired", "cancelled"):
        assert "output file file-out" in str(error)
    if reason == "failed":
        assert "line 3: [invalid_json_line] bad" in str(error)


def test_an_ending_before_any_observation_still_reads_well() -> None:
    error = ending_error("timeout", BatchSnapshot("batch_1", ""), detail="", where="connection 'c'")
    assert str(error) == (
        "Batch batch_1 did not end within the task's timeout: it was never observed, with 0 of 0 lines done."
    )
