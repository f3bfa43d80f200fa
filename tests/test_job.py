"""The job's rules with plain values: keys, when another round runs, how a job ended, its manifest."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from airflow_provider_batch.job import (
    JobBatch,
    JobRound,
    JobState,
    RoundOutcome,
    ending,
    job_manifest,
    partial_failure,
    shard_key,
    stop_reason,
    sum_usage,
)
from airflow_provider_batch.shards import ShardLimits
from airflow_provider_batch.status import BatchSnapshot

NOW = 1_000_000.0


def snapshot(
    batch_id: str, status: str, total: int = 10, completed: int | None = None, failed: int = 0, **extra: Any
) -> BatchSnapshot:
    done = total - failed if completed is None else completed
    counts = {"total": total, "completed": done, "failed": failed}
    return BatchSnapshot(
        batch_id=batch_id, status=status, request_counts=counts, created_at=int(NOW), **extra
    )


def job(*rounds: JobRound, end_time: float = NOW + 3600) -> JobState:
    return JobState("key", split=True, end_time=end_time, rounds=rounds)


def one_round(number: int, *snapshots: BatchSnapshot, outcome: RoundOutcome | None = None) -> JobRound:
    batches = tuple(
        JobBatch(shard, snap.lines_total, f"k{number}-{shard}", snap)
        for shard, snap in enumerate(snapshots, 1)
    )
    return JobRound(number, batches, outcome)


# keys ----------------------------------------------------------------------------------------------


def test_the_first_round_of_an_unsplit_input_keeps_the_submission_key() -> None:
    assert shard_key("abc", ShardLimits(), 1, 1, split=False) == "abc"


def test_every_shard_of_every_round_has_its_own_key_and_the_caps_are_part_of_it() -> None:
    limits = ShardLimits()
    keys = {shard_key("abc", limits, r, s, split=True) for r in (1, 2, 3) for s in (1, 2, 3)}
    assert len(keys) == 9
    assert shard_key("abc", limits, 2, 1, split=False) in keys  # later rounds are never the submission key
    assert shard_key("abc", limits, 1, 3, split=True) == shard_key("abc", ShardLimits(), 1, 3, split=True)
    assert shard_key("abc", ShardLimits(max_requests=10), 1, 3, split=True) not in keys
    assert all(len(key) <= 64 for key in keys)  # a metadata value holds 512 characters


# state -------------------------------------------------------------------------------------------


def test_the_state_survives_json_and_a_resuming_worker_reads_it_back() -> None:
    state = job(
        one_round(
            1, snapshot("b1", "expired", completed=4), outcome=RoundOutcome(4, 6, 0, {"batch_expired": 6})
        ),
        one_round(2, snapshot("b2", "in_progress", total=6, completed=1)),
    )
    assert JobState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_a_state_of_an_unknown_version_is_refused_with_what_to_do() -> None:
    data = job(one_round(1, snapshot("b1", "completed"))).to_dict() | {"version": 99}
    with pytest.raises(ValueError, match="upgrade the provider"):
        JobState.from_dict(data)


def test_observations_update_the_current_round_only_and_an_empty_one_changes_nothing() -> None:
    state = job(one_round(1, snapshot("a", "in_progress"), snapshot("b", "in_progress")))
    updated = state.observed([snapshot("b", "completed"), BatchSnapshot(batch_id="a", status="")])
    assert [b.batch.status for b in updated.current.batches] == ["in_progress", "completed"]


# when another round runs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "number", "now", "expected"),
    [
        (("completed", "expired"), 1, NOW, None),
        (("completed", "cancelled"), 1, NOW, "cancelled"),
        (("failed", "expired"), 1, NOW, "failed"),
        (("completed", "expired"), 3, NOW, "max_rounds"),
        (("completed", "expired"), 1, NOW + 7200, "timeout"),
    ],
)
def test_stop_reason(statuses: tuple[str, ...], number: int, now: float, expected: str | None) -> None:
    snapshots = [snapshot(f"b{i}", status, completed=5) for i, status in enumerate(statuses)]
    state = job(one_round(number, *snapshots))
    assert stop_reason(state, max_rounds=3, now=now) == expected


def test_a_round_whose_every_line_succeeded_needs_no_file_to_stop() -> None:
    state = job(one_round(1, snapshot("a", "completed"), snapshot("b", "completed")))
    assert stop_reason(state, max_rounds=3, now=NOW) == "nothing_to_resubmit"
    assert state.totals() == {"total": 20, "succeeded": 20, "failed": 0, "pending": 0}


def test_a_round_whose_replies_are_checked_must_be_read_even_when_the_api_counts_say_all_succeeded() -> None:
    """The API counts a reply that misses its schema as completed: only the files tell."""
    checked = replace(one_round(1, snapshot("a", "completed")), checked=True)
    state = job(checked)
    assert checked.known_outcome is None
    assert stop_reason(state, max_rounds=3, now=NOW) is None, "read it: some lines may be resubmitted"
    assert stop_reason(state, max_rounds=1, now=NOW) == "max_rounds"
    assert JobRound.from_dict(checked.to_dict()) == checked
    assert JobRound.from_dict({**checked.to_dict(), "checked": None}).checked is False  # an older state


def test_invalid_output_counts_as_failed_unless_the_task_tolerates_it() -> None:
    outcome = RoundOutcome(8, 2, 0, {"invalid_output": 2})
    state = job(replace(one_round(1, snapshot("a", "completed"), outcome=outcome), checked=True))
    assert state.totals()["failed"] == 2
    assert partial_failure(state, 0.1)
    assert not partial_failure(state, 0.1, tolerated=("invalid_output",))


def test_a_closed_round_without_retryable_lines_stops() -> None:
    state = job(one_round(1, snapshot("a", "completed", failed=2), outcome=RoundOutcome(8, 0, 2)))
    assert stop_reason(state, max_rounds=3, now=NOW) == "nothing_to_resubmit"


def test_a_round_still_running_has_no_verdict() -> None:
    with pytest.raises(ValueError, match="has not ended"):
        stop_reason(job(one_round(1, snapshot("a", "in_progress"))), max_rounds=3, now=NOW)


# how a job ended -------------------------------------------------------------------------------------


def test_totals_count_final_failures_of_every_round_and_the_last_rounds_retryable_ones() -> None:
    state = job(
        one_round(
            1,
            snapshot("a", "expired", completed=5),
            outcome=RoundOutcome(4, 5, 1, {"batch_expired": 5}, {"http_400": 1}),
        ),
        one_round(
            2, snapshot("b", "completed", total=5, failed=2), outcome=RoundOutcome(3, 2, 0, {"http_5xx": 2})
        ),
    )
    assert state.totals() == {"total": 10, "succeeded": 7, "failed": 3, "pending": 0}
    assert state.failed_by_reason() == {"http_400": 1, "http_5xx": 2}
    assert partial_failure(state, 0.2)
    assert not partial_failure(state, 0.3)
    assert ending(state) is None  # the expired batch's lines ran in round 2


def test_an_expired_batch_whose_lines_had_no_round_left_is_the_ending() -> None:
    state = job(
        one_round(
            1,
            snapshot("a", "completed"),
            snapshot("b", "expired", completed=3),
            outcome=RoundOutcome(13, 7, 0),
        )
    )
    found = ending(state)
    assert found is not None
    assert (found.reason, found.batch.batch_id) == ("expired", "b")


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_failed_or_cancelled_batch_is_the_ending(status: str) -> None:
    state = job(one_round(1, snapshot("a", "completed"), snapshot("b", status)))
    found = ending(state)
    assert found is not None
    assert (found.reason, found.batch.batch_id) == (status, "b")


def test_a_wait_that_timed_out_names_the_first_unfinished_batch() -> None:
    state = job(one_round(1, snapshot("a", "completed"), snapshot("b", "in_progress")))
    found = ending(state, wait_reason="timeout")
    assert found is not None
    assert (found.reason, found.batch.batch_id) == ("timeout", "b")


# manifest ------------------------------------------------------------------------------------------------


def test_usage_is_summed_with_its_details() -> None:
    usage = {"input_tokens": 10, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 3}}
    assert sum_usage([usage, None, usage]) == {
        "input_tokens": 20,
        "output_tokens": 4,
        "input_tokens_details": {"cached_tokens": 6},
    }
    assert sum_usage([None, {}]) is None


def test_the_manifest_stays_small_whatever_the_lines_and_says_where_everything_is() -> None:
    shards = [snapshot(f"b{i}", "completed", total=50_000, usage={"total_tokens": 7}) for i in range(20)]
    state = job(one_round(1, *shards))
    result = job_manifest(state, max_rounds=3, landed={"results_uri": "s3://x/out.jsonl"})
    assert result["status"] == "completed"
    assert result["request_counts"] == {"total": 1_000_000, "succeeded": 1_000_000, "failed": 0, "pending": 0}
    assert result["usage"] == {"total_tokens": 140}
    assert result["shards"] == 20
    assert len(result["batch_ids"]) == 20
    assert result["rounds"][0]["batches"][3]["batch_id"] == "b3"
    assert result["results_uri"] == "s3://x/out.jsonl"
    assert len(json.dumps(result)) < 12_000
