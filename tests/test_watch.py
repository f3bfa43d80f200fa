"""The wait for a job's round of batches: plain snapshots and failures in, decisions, pauses and
progress lines out (no I/O, no clock)."""

from __future__ import annotations

import random

import pytest

from airflow_provider_batch.events import build_round_event, validate_event
from airflow_provider_batch.status import OBSERVATION_GRACE, BatchSnapshot, PollFailure, PollSchedule
from airflow_provider_batch.watch import RoundWait, round_progress

NOW = 1_000_000.0
IDS = ("batch_a", "batch_b", "batch_c")
OUTAGE = PollFailure(retryable=True, message="HTTP 503: busy", http_status=503)
GONE = PollFailure(retryable=False, message="HTTP 404: No batch found", http_status=404)


def snap(batch_id: str, status: str, done: int = 0, total: int = 0, failed: int = 0) -> BatchSnapshot:
    counts = {"total": total, "completed": done - failed, "failed": failed} if total else None
    return BatchSnapshot(batch_id=batch_id, status=status, request_counts=counts)


def round_wait(**overrides: object) -> RoundWait:
    kwargs: dict[str, object] = {
        "batch_ids": IDS,
        "end_time": NOW + 86_400,
        "schedule": PollSchedule(initial=30, maximum=300, jitter=0),
        "max_failures": 3,
    }
    return RoundWait(**(kwargs | overrides))  # type: ignore[arg-type]


def look(*snapshots: BatchSnapshot) -> dict[str, BatchSnapshot | PollFailure]:
    return {snapshot.batch_id: snapshot for snapshot in snapshots}


def test_the_round_ends_when_every_batch_ended_whatever_its_terminal_status() -> None:
    wait = round_wait()
    step = wait.observe(look(snap("batch_a", "completed"), snap("batch_b", "in_progress")), NOW)
    assert not step.decision.done
    assert wait.unfinished() == ["batch_b", "batch_c"]  # never seen counts as unfinished

    # Only the unfinished batches are looked at again; the ended one keeps its last snapshot.
    step = wait.observe(look(snap("batch_b", "expired"), snap("batch_c", "failed")), NOW + 60)
    assert (step.decision.done, step.decision.reason) == (True, "round_ended")
    assert step.decision.message == "Round 1: all 3 batches ended (1 completed, 1 failed, 1 expired)."
    assert [wait.last[batch_id].status for batch_id in IDS] == ["completed", "expired", "failed"]
    assert wait.unfinished() == []
    assert step.pause == 0.0


def test_cancelling_is_not_the_end_of_a_round() -> None:
    wait = round_wait(batch_ids=("batch_a",))
    assert not wait.observe(look(snap("batch_a", "cancelling")), NOW).decision.done
    assert wait.observe(look(snap("batch_a", "cancelled")), NOW + 30).decision.reason == "round_ended"


def test_a_failed_look_is_one_failure_however_many_batches_it_failed() -> None:
    wait = round_wait()
    wait.observe(look(snap("batch_a", "in_progress")), NOW)
    for attempt in (1, 2):
        step = wait.observe(dict.fromkeys(IDS, OUTAGE), NOW + attempt)
        assert not step.decision.done
        assert wait.failures == attempt
        assert step.warning is not None
        assert f"({attempt}/3)" in step.warning
        assert "batch batch_a (1 of 3 not observed): HTTP 503: busy" in step.warning
    assert wait.last["batch_a"].status == "in_progress", "a failed look forgets nothing"

    # A good look resets the count; three failed looks in a row then end the round.
    assert wait.observe(look(snap("batch_a", "in_progress")), NOW + 10).decision.failures == 0
    for attempt in (1, 2, 3):
        step = wait.observe(
            {"batch_a": snap("batch_a", "in_progress"), "batch_b": OUTAGE}, NOW + 10 + attempt
        )
    assert (step.decision.done, step.decision.reason) == (True, "polling_error")
    assert "3 times in a row" in step.decision.message
    assert "batch batch_b: HTTP 503" in step.decision.message


def test_a_look_that_failed_as_a_whole_counts_once_too() -> None:
    wait = round_wait()
    step = wait.observe(PollFailure(retryable=True, message="the status call did not finish"), NOW)
    assert (step.decision.done, wait.failures) == (False, 1)


def test_a_batch_that_cannot_be_found_ends_the_round_at_once() -> None:
    wait = round_wait()
    step = wait.observe({"batch_a": OUTAGE, "batch_b": GONE, "batch_c": snap("batch_c", "in_progress")}, NOW)
    assert (step.decision.done, step.decision.reason) == (True, "polling_error")
    assert (
        step.decision.message
        == "Polling failed: batch batch_b (1 of 2 not observed): HTTP 404: No batch found"
    )


def test_the_deadline_ends_the_round_even_with_batches_never_seen() -> None:
    wait = round_wait(end_time=NOW + 100)
    assert not wait.observe(look(snap("batch_a", "completed")), NOW + 50).decision.done
    step = wait.observe(look(snap("batch_b", "in_progress")), NOW + 100)
    assert (step.decision.done, step.decision.reason) == (True, "timeout")
    assert step.decision.message == (
        "Round 1: 2 of 3 batches had not ended at the deadline (1 in_progress, 1 completed, 1 not seen yet)."
    )
    # Failing at the deadline is a timeout too, as decide() says for one batch.
    wait = round_wait(end_time=NOW)
    assert wait.observe(dict.fromkeys(IDS, OUTAGE), NOW).decision.reason == "timeout"


def test_the_deadline_does_not_cut_a_round_that_ended() -> None:
    wait = round_wait(batch_ids=("batch_a",), end_time=NOW)
    assert wait.observe(look(snap("batch_a", "completed")), NOW + 5).decision.reason == "round_ended"


def test_pauses_grow_on_the_schedule_and_never_pass_the_deadline() -> None:
    wait = round_wait(end_time=NOW + 100)
    assert wait.pause(NOW) == 30
    assert wait.started == NOW
    assert wait.observe(look(snap("batch_a", "in_progress")), NOW + 30).pause == 45
    assert wait.observe(look(snap("batch_a", "in_progress")), NOW + 75).pause == 25  # the deadline's
    assert wait.observation_budget(NOW + 75) == 25 + OBSERVATION_GRACE
    assert wait.observation_budget(NOW + 500) == OBSERVATION_GRACE


def test_a_24_hour_round_costs_at_most_300_looks() -> None:
    wait = round_wait(end_time=NOW + 86_400, schedule=PollSchedule(rng=random.Random(3)))
    now, looks = NOW, 0
    pause = wait.pause(now)
    while True:
        now += pause
        looks += 1
        step = wait.observe(look(snap("batch_a", "in_progress", done=looks, total=10**6)), now)
        if step.decision.done:
            break
        pause = step.pause
    assert step.decision.reason == "timeout"
    assert looks <= 300


def test_progress_line_sums_lines_and_estimates_the_time_left() -> None:
    ids = [f"batch_{n}" for n in range(20)]
    snapshots = {
        batch_id: snap(batch_id, "completed", 50_000, 50_000, failed=60)
        if n < 5
        else snap(batch_id, "in_progress", 26_000, 50_000, failed=60)
        for n, batch_id in enumerate(ids)
    }
    line = round_progress(1, ids, snapshots, now=NOW, end_time=NOW + 70 * 3600, rate=3_100 / 60, pause=240)
    assert line == (
        "Round 1: 20 batches (15 in_progress, 5 completed): 640,000 of 1,000,000 lines done (64%),"
        " 1,200 failed, 360,000 pending; about 1h56m left at 3,100 lines/min; next look in 4m00s;"
        " deadline in 70h00m (1970-01-15 11:46:40 UTC)"
    )


def test_progress_line_before_any_counts_and_at_the_end() -> None:
    assert round_progress(2, ["batch_a", "batch_b"], {}, now=NOW, pause=30) == (
        "Round 2: 2 batches (2 not seen yet); next look in 30s"
    )
    ended = {"batch_a": snap("batch_a", "completed", 10, 10)}
    assert round_progress(1, ["batch_a"], ended, now=NOW, end_time=None, rate=5.0) == (
        "Round 1: 1 batches (1 completed): 10 of 10 lines done (100%), 0 failed, 0 pending"
    )


def test_each_look_logs_the_rate_measured_since_the_first_counts() -> None:
    wait = round_wait(batch_ids=("batch_a", "batch_b"), end_time=NOW + 3600)
    wait.pause(NOW)
    first = wait.observe(look(snap("batch_a", "validating"), snap("batch_b", "validating")), NOW + 30)
    assert first.progress is not None
    assert first.progress.startswith("Round 1: 2 batches (2 validating); next look in 45s; deadline in")
    wait.observe(
        look(snap("batch_a", "in_progress", 100, 1000), snap("batch_b", "in_progress", 0, 1000)), NOW + 60
    )
    assert wait.rate() is None  # one look with counts: no rate yet
    step = wait.observe(
        look(snap("batch_a", "in_progress", 700, 1000), snap("batch_b", "in_progress", 600, 1000)), NOW + 120
    )
    assert wait.rate() == pytest.approx(20.0)  # 1,200 lines in 60 s
    assert step.progress is not None
    assert "1,300 of 2,000 lines done (65%), 0 failed, 700 pending; about 35s left at 1,200 lines/min" in (
        step.progress
    )
    assert "deadline in" in step.progress

    done = wait.observe(
        look(snap("batch_a", "completed", 1000, 1000), snap("batch_b", "completed", 1000, 1000)), NOW + 200
    )
    assert (
        done.progress
        == "Round 1: 2 batches (2 completed): 2,000 of 2,000 lines done (100%), 0 failed, 0 pending"
    )


def test_an_unknown_status_is_reported_once_and_waited_out() -> None:
    wait = round_wait(batch_ids=("batch_a", "batch_b"))
    step = wait.observe(look(snap("batch_a", "paused"), snap("batch_b", "paused")), NOW)
    assert not step.decision.done
    assert step.warning is not None
    assert step.warning.count("'paused'") == 1
    assert wait.observe(look(snap("batch_a", "paused")), NOW + 30).warning is None


def test_a_round_needs_distinct_batches() -> None:
    with pytest.raises(ValueError, match="at least one"):
        round_wait(batch_ids=())
    with pytest.raises(ValueError, match="distinct"):
        round_wait(batch_ids=("batch_a", "batch_a"))


def test_the_round_event_carries_every_batch_in_order() -> None:
    wait = round_wait()
    step = wait.observe(
        look(snap("batch_c", "completed", 3, 3), snap("batch_a", "failed"), snap("batch_b", "cancelled")), NOW
    )
    event = validate_event(build_round_event(step.decision, wait.batch_ids, wait.last))
    assert (event["status"], event["termination_reason"], event["batch_id"]) == (
        "success",
        "round_ended",
        "batch_a",
    )
    assert [(batch["batch_id"], batch["status"]) for batch in event["batches"]] == [
        ("batch_a", "failed"),
        ("batch_b", "cancelled"),
        ("batch_c", "completed"),
    ]
