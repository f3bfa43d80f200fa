"""``airflow_provider_batch.rounds``: the resubmission rule on plain values, then rounds over real files.

Result files are written by hand in the API's line shapes (openai-batch-api.md §9) where a test needs a
case the emulator does not produce (a lost line, a line that succeeds only on its second attempt), and
produced by the emulator for one job run round after round against it.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import ObjectStoragePath
from openai import OpenAI

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.hooks.retry import TRANSIENT_STATUSES
from airflow_provider_batch.results import IdSample, RowOptions
from airflow_provider_batch.rounds import (
    RULES,
    LineVerdict,
    RoundBatch,
    RoundPlan,
    Verdict,
    classify_line,
    close_round,
    summarize_merged,
)
from tests.test_results import CHAT, request_line, run_batch

S, R, F = Verdict.SUCCEEDED, Verdict.RETRY, Verdict.FINAL

# The rule, on plain values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_status", "ok", "status_code", "error_code", "verdict", "reason"),
    [
        ("completed", True, 200, None, S, "ok"),
        ("completed", False, 400, None, F, "http_400"),
        ("completed", False, 400, "invalid_request_error", F, "invalid_request_error"),
        ("completed", False, 400, "invalid_prompt", F, "invalid_prompt"),
        ("completed", False, 401, "invalid_api_key", F, "invalid_api_key"),
        ("completed", False, 404, None, F, "http_404"),
        ("completed", False, 408, None, R, "http_408"),
        ("completed", False, 409, None, F, "http_409"),
        ("completed", False, 422, None, F, "http_422"),
        ("completed", False, 429, None, R, "http_429"),
        ("completed", False, 429, "rate_limit_exceeded", R, "rate_limit_exceeded"),
        ("completed", False, 429, "insufficient_quota", F, "insufficient_quota"),
        ("completed", False, 500, "server_error", R, "server_error"),
        ("completed", False, 500, None, R, "http_500"),
        ("completed", False, 502, None, R, "http_502"),
        ("completed", False, 503, "server_error", R, "server_error"),
        ("completed", False, 504, None, R, "http_504"),
        ("completed", False, 500, "some_new_code", R, "some_new_code"),  # a code not in the table: the status
        ("completed", False, 300, None, F, "http_300"),
        ("expired", False, None, "batch_expired", R, "batch_expired"),
        ("expired", False, 200, "batch_expired", R, "batch_expired"),
        ("expired", False, None, "batch_cancelled", F, "batch_cancelled"),
        ("completed", False, None, "rate_limit_exceeded", R, "rate_limit_exceeded"),
        ("completed", False, None, "server_glitch", F, "server_glitch"),
        ("completed", False, None, None, F, "no_response"),
        # No result line at all.
        ("expired", None, None, None, R, "missing"),
        ("completed", None, None, None, R, "missing"),
        ("failed", None, None, None, F, "batch_failed"),
        ("cancelled", None, None, None, F, "batch_cancelled"),
        # A cancelled job resubmits nothing, and keeps its successes.
        ("cancelled", False, None, "batch_cancelled", F, "batch_cancelled"),
        ("cancelled", False, None, "batch_expired", F, "batch_cancelled"),
        ("cancelled", False, 500, "server_error", F, "batch_cancelled"),
        ("cancelled", False, 400, None, F, "http_400"),
        ("cancelled", True, 200, None, S, "ok"),
        ("EXPIRED", None, None, None, R, "missing"),
    ],
)
def test_classify_line(
    batch_status: str,
    ok: bool | None,
    status_code: int | None,
    error_code: str | None,
    verdict: Verdict,
    reason: str,
) -> None:
    decided = classify_line(batch_status=batch_status, ok=ok, status_code=status_code, error_code=error_code)
    assert decided == LineVerdict(verdict, reason)


def test_statuses_are_retried_as_the_provider_retries_its_own_calls() -> None:
    """One notion of transient: a line is resubmitted for the statuses hooks/retry.py retries a call for."""
    for status in range(400, 600):
        retried = classify_line(batch_status="completed", ok=False, status_code=status).verdict is R
        assert retried == (status in TRANSIENT_STATUSES or status >= 500), status


def test_the_rule_table_is_the_rule() -> None:
    for code, verdict in RULES.items():
        if code.startswith("http_") or code in ("missing", "batch_failed"):
            continue
        assert classify_line(batch_status="expired", ok=False, error_code=code).verdict is verdict, code
    assert set(RULES.values()) == {R, F}


@pytest.mark.parametrize("status", ["in_progress", "cancelling", "finalizing", "validating", "nonsense"])
def test_a_running_batch_has_no_verdict(status: str) -> None:
    with pytest.raises(ValueError, match="not terminal"):
        classify_line(batch_status=status, ok=None)


# Hand-written files in the API's line shapes -------------------------------------------------------------


def request(custom_id: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": custom_id}]},
    }


def success(custom_id: str, answer: str = "fine") -> dict[str, Any]:
    body = {
        "object": "chat.completion",
        "choices": [{"message": {"content": answer}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{custom_id}", "body": body},
        "error": None,
    }


def http_failure(custom_id: str, status: int, code: str | None = None) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    error = {"message": f"Failed with {status}.", "type": kind, "param": None, "code": code}
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"req_{custom_id}", "body": {"error": error}},
        "error": None,
    }


def unrun(custom_id: str, code: str = "batch_expired") -> dict[str, Any]:
    return {
        "id": f"batch_req_{custom_id}",
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": "This request could not be executed."},
    }


def write_lines(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def lines_of(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines_of(path)]


def ids_of(path: Path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in lines_of(path)]


def test_a_round_resubmits_only_what_a_retry_can_fix(tmp_path: Path) -> None:
    """Two batches: a completed one with a success and every kind of failure, an expired one with
    unfinished and lost lines. The next input holds the original lines of the retryable ones, in order."""
    ids = [f"r{i}" for i in range(10)]
    # Odd spacing and key order: the next input must be the user's bytes, not a re-encoding.
    source = tmp_path / "input.jsonl"
    source.write_bytes(
        b"".join(json.dumps(request(i), indent=None, separators=(",", " : ")).encode() + b"\n" for i in ids)
    )
    first = RoundBatch(
        "completed",
        output_file=write_lines(tmp_path / "out-1.jsonl", [success("r2"), success("r0")]),
        error_file=write_lines(
            tmp_path / "err-1.jsonl",
            [
                http_failure("r4", 400, "invalid_prompt"),
                http_failure("r1", 500),
                http_failure("r3", 429, "rate_limit_exceeded"),
            ],
        ),
        requests=5,
    )
    second = RoundBatch(  # expired: r6 done, r5 and r8 unfinished, r7 and r9 lost, no output file
        "expired",
        error_file=write_lines(tmp_path / "err-2.jsonl", [unrun("r8"), http_failure("r6", 401), unrun("r5")]),
    )
    merged = tmp_path / "merged-1.jsonl"
    plan = close_round(
        round_number=1,
        input_file=source,
        batches=[first, second],
        next_input=tmp_path / "next.jsonl",
        merged=merged,
    )

    assert plan.counts == {
        S: {"ok": 2},
        R: {"server_error": 1, "rate_limit_exceeded": 1, "batch_expired": 2, "missing": 2},
        F: {"invalid_prompt": 1, "invalid_request_error": 1},  # the 401's body names its type only
    }
    assert plan.resubmitted == IdSample(6, ("r1", "r3", "r5", "r7", "r8", "r9"))
    assert (plan.next_round, plan.cancelled, plan.requests) == (True, False, 10)
    original = lines_of(source)
    assert lines_of(tmp_path / "next.jsonl") == [original[i] for i in (1, 3, 5, 7, 8, 9)]
    assert (plan.results.lines, plan.results.succeeded, plan.results.requests) == (8, 2, 10)
    assert plan.results.missing == IdSample(2, ("r7", "r9"))
    assert plan.results.usage.total_tokens == 10

    rows = rows_of(merged)
    assert [(row["custom_id"], row["line"], row["round"]) for row in rows] == [
        (i, n, 1) for n, i in enumerate(ids, 1)
    ]
    assert [row["error_code"] for row in rows] == [
        None,
        "server_error",
        None,
        "rate_limit_exceeded",
        "invalid_prompt",
        "batch_expired",
        "invalid_request_error",
        "missing",
        "batch_expired",
        "missing",
    ]
    assert rows[2]["body"]["choices"][0]["message"]["content"] == "fine"
    assert rows[6]["status_code"] == 401
    assert plan.merged == summarize_merged(merged)
    json.dumps(plan.to_dict())  # fit for XCom


def test_nothing_is_resubmitted_when_nothing_is_retryable(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "input.jsonl", [request(i) for i in ("a", "b", "c")])
    batch = RoundBatch(
        "completed",
        output_file=write_lines(tmp_path / "out.jsonl", [success("a")]),
        error_file=write_lines(tmp_path / "err.jsonl", [http_failure("c", 404), http_failure("b", 400)]),
    )
    plan = close_round(round_number=1, input_file=source, batches=[batch], next_input=tmp_path / "next.jsonl")
    assert plan.counts == {S: {"ok": 1}, R: {}, F: {"invalid_request_error": 2}}
    assert (plan.next_round, plan.resubmitted, plan.merged) == (False, IdSample(), None)
    assert (tmp_path / "next.jsonl").read_bytes() == b""


SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def structured(custom_id: str) -> dict[str, Any]:
    """A request that asks for a JSON Schema (Chat's ``response_format``)."""
    record = request(custom_id)
    record["body"]["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "v", "schema": SCHEMA},
    }
    return record


@pytest.mark.parametrize("with_merged", [True, False])
def test_a_reply_that_misses_its_schema_is_resubmitted_and_counted_failed(
    tmp_path: Path, with_merged: bool
) -> None:
    """The API counts these lines completed; only reading the reply tells that it is unusable. Whether
    or not the merged file is written (a round closed only to find what to resubmit), the verdict is
    the same."""
    source = write_lines(tmp_path / "input.jsonl", [structured(i) for i in ("a", "b", "c", "d")])
    replies = [
        success("a", '{"label": "yes"}'),
        success("b", "not json"),
        success("c", '{"label": "maybe"}'),
        success("d", '{"label": "no"}'),
    ]
    batch = RoundBatch("completed", output_file=write_lines(tmp_path / "out.jsonl", replies), batch_id="b1")
    merged = tmp_path / "merged.jsonl" if with_merged else None

    plan = close_round(
        round_number=1, input_file=source, batches=[batch], next_input=tmp_path / "next.jsonl", merged=merged
    )

    assert plan.counts == {S: {"ok": 2}, R: {"invalid_output": 2}, F: {}}
    assert ids_of(tmp_path / "next.jsonl") == ["b", "c"]
    assert (plan.results.succeeded, plan.results.errors_by_code) == (2, {"invalid_output": 2})
    assert plan.results.usage.total_tokens == 20, "invalid replies were billed: their usage counts"
    if merged is not None:
        rows = rows_of(merged)
        assert [row["parsed"] for row in rows] == [{"label": "yes"}, None, None, {"label": "no"}]
        assert [row["error_code"] for row in rows] == [None, "invalid_output", "invalid_output", None]
        assert rows[1]["error_message"].startswith("does not parse as JSON")
        assert rows[2]["error_message"].startswith("does not match the schema")
        assert {row["batch_id"] for row in rows} == {"b1"}


def test_the_tasks_own_schema_checks_replies_whose_requests_asked_for_none(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "input.jsonl", [request(i) for i in ("a", "b")])
    replies = [success("a", '{"label": "yes"}'), success("b", "fine")]
    batch = RoundBatch("completed", output_file=write_lines(tmp_path / "out.jsonl", replies))

    plan = close_round(
        round_number=1,
        input_file=source,
        batches=[batch],
        next_input=tmp_path / "next.jsonl",
        options=RowOptions(output_schema=SCHEMA),
    )

    assert plan.counts[R] == {"invalid_output": 1}
    assert ids_of(tmp_path / "next.jsonl") == ["b"]


def test_invalid_output_in_a_cancelled_job_is_not_resubmitted(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "input.jsonl", [structured("a")])
    batch = RoundBatch("cancelled", output_file=write_lines(tmp_path / "out.jsonl", [success("a", "nope")]))
    plan = close_round(round_number=1, input_file=source, batches=[batch], next_input=tmp_path / "next.jsonl")
    assert plan.counts[F] == {"batch_cancelled": 1}


def test_a_success_is_never_resubmitted_even_beside_a_failure_for_the_same_id(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "input.jsonl", [request("a")])
    batch = RoundBatch(
        "completed",
        output_file=write_lines(tmp_path / "out.jsonl", [success("a")]),
        error_file=write_lines(tmp_path / "err.jsonl", [http_failure("a", 500)]),
    )
    plan = close_round(round_number=1, input_file=source, batches=[batch], next_input=tmp_path / "next.jsonl")
    assert (plan.total(S), plan.next_round, plan.results.duplicates) == (1, False, IdSample(1, ("a",)))


def test_a_cancelled_batch_ends_the_job(tmp_path: Path) -> None:
    """Another batch of the round expired, yet nothing is resubmitted: the cancel was the user's."""
    source = write_lines(tmp_path / "input.jsonl", [request(i) for i in ("a", "b", "c", "d")])
    batches = [
        RoundBatch("expired", error_file=write_lines(tmp_path / "err-1.jsonl", [unrun("a")]), requests=2),
        RoundBatch(
            "cancelled",
            output_file=write_lines(tmp_path / "out-2.jsonl", [success("c")]),
            error_file=write_lines(tmp_path / "err-2.jsonl", [unrun("d", "batch_cancelled")]),
        ),
    ]
    plan = close_round(round_number=1, input_file=source, batches=batches, next_input=tmp_path / "next.jsonl")
    assert plan.counts == {S: {"ok": 1}, R: {}, F: {"batch_cancelled": 3}}
    assert (plan.cancelled, plan.next_round) == (True, False)
    assert (tmp_path / "next.jsonl").read_bytes() == b""


def test_a_failed_batch_resubmits_nothing_and_its_lines_are_missing(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "input.jsonl", [request(i) for i in ("a", "b", "c")])
    batches = [
        RoundBatch("completed", output_file=write_lines(tmp_path / "out.jsonl", [success("a")]), requests=1),
        RoundBatch("failed"),  # validation failed: no files
    ]
    merged = tmp_path / "merged.jsonl"
    plan = close_round(round_number=1, input_file=source, batches=batches, merged=merged)
    assert plan.counts == {S: {"ok": 1}, R: {}, F: {"batch_failed": 2}}
    assert [row["error_code"] for row in rows_of(merged)] == [None, "missing", "missing"]


def test_three_rounds_merge_into_one_file_in_input_order(tmp_path: Path) -> None:
    """Round 1 leaves b, d, e and f to retry; in round 2 b and e succeed, d fails for good and f fails
    again; round 3 answers f. Each line's row is its last attempt, at its line in the original input."""
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    source = tmp_path / "input.jsonl"
    source.write_text("".join(json.dumps(request(i)) + "\n" + ("\n" if i == "c" else "") for i in ids))
    one = close_round(
        round_number=1,
        input_file=source,
        batches=[
            RoundBatch(
                "completed",
                output_file=write_lines(tmp_path / "out-1a.jsonl", [success("a"), success("c")]),
                error_file=write_lines(
                    tmp_path / "err-1a.jsonl", [http_failure("b", 503), http_failure("d", 502)]
                ),
                requests=4,
            ),
            RoundBatch(
                "expired",
                output_file=write_lines(tmp_path / "out-1b.jsonl", [success("g")]),
                error_file=write_lines(tmp_path / "err-1b.jsonl", [unrun("e")]),  # f is lost
            ),
        ],
        next_input=tmp_path / "input-2.jsonl",
        merged=tmp_path / "merged-1.jsonl",
    )
    assert ids_of(tmp_path / "input-2.jsonl") == ["b", "d", "e", "f"]
    assert one.merged is not None
    assert (one.merged.succeeded, one.merged.errors_by_code) == (
        3,
        {"server_error": 2, "batch_expired": 1, "missing": 1},
    )

    two = close_round(
        round_number=2,
        input_file=tmp_path / "input-2.jsonl",
        batches=[
            RoundBatch(
                "completed",
                output_file=write_lines(tmp_path / "out-2.jsonl", [success("e", "e2"), success("b", "b2")]),
                error_file=write_lines(
                    tmp_path / "err-2.jsonl",
                    [http_failure("f", 429, "rate_limit_exceeded"), http_failure("d", 400)],
                ),
            )
        ],
        next_input=tmp_path / "input-3.jsonl",
        merged=tmp_path / "merged-2.jsonl",
        previous_merged=tmp_path / "merged-1.jsonl",
    )
    assert ids_of(tmp_path / "input-3.jsonl") == ["f"]
    assert two.counts == {S: {"ok": 2}, R: {"rate_limit_exceeded": 1}, F: {"invalid_request_error": 1}}

    three = close_round(
        round_number=3,
        input_file=tmp_path / "input-3.jsonl",
        batches=[
            RoundBatch("completed", output_file=write_lines(tmp_path / "out-3.jsonl", [success("f", "f3")]))
        ],
        next_input=tmp_path / "input-4.jsonl",
        merged=tmp_path / "merged-3.jsonl",
        previous_merged=tmp_path / "merged-2.jsonl",
    )
    assert (three.next_round, (tmp_path / "input-4.jsonl").read_bytes()) == (False, b"")

    rows = rows_of(tmp_path / "merged-3.jsonl")
    assert [(row["custom_id"], row["line"], row["round"], row["ok"]) for row in rows] == [
        ("a", 1, 1, True),
        ("b", 2, 2, True),
        ("c", 3, 1, True),
        ("d", 5, 2, False),  # line 4 is blank: lines are the original input's, as an editor shows them
        ("e", 6, 2, True),
        ("f", 7, 3, True),
        ("g", 8, 1, True),
    ]
    answers = {row["custom_id"]: row["body"]["choices"][0]["message"]["content"] for row in rows if row["ok"]}
    assert (answers["b"], answers["e"], answers["f"]) == ("b2", "e2", "f3")
    assert (rows[3]["status_code"], rows[3]["error_code"]) == (400, "invalid_request_error")
    # Rows from earlier rounds are copied as they were written.
    assert lines_of(tmp_path / "merged-3.jsonl")[0] == lines_of(tmp_path / "merged-1.jsonl")[0]

    assert three.merged == summarize_merged(tmp_path / "merged-3.jsonl")
    assert three.merged is not None
    assert (three.merged.requests, three.merged.succeeded, three.merged.failed) == (7, 6, 1)
    assert three.merged.by_round == {
        1: {"succeeded": 3, "failed": 0},
        2: {"succeeded": 2, "failed": 1},
        3: {"succeeded": 1, "failed": 0},
    }
    assert three.merged.failed_ids == IdSample(1, ("d",))


def test_rounds_read_and_write_object_storage(tmp_path: Path) -> None:
    store = ObjectStoragePath("memory://rounds-tests")
    source = write_lines(tmp_path / "input.jsonl", [request(i) for i in ("a", "b")])
    batch = RoundBatch("expired", output_file=write_lines(tmp_path / "out.jsonl", [success("a")]))
    close_round(
        round_number=1,
        input_file=source,
        batches=[batch],
        next_input=store / "in-2.jsonl",
        merged=store / "m1.jsonl",
    )
    assert (store / "in-2.jsonl").read_bytes() == lines_of(source)[1] + b"\n"
    again = RoundBatch("completed", output_file=write_lines(tmp_path / "out-2.jsonl", [success("b")]))
    plan = close_round(
        round_number=2,
        input_file=store / "in-2.jsonl",
        batches=[again],
        merged=store / "m2.jsonl",
        previous_merged=store / "m1.jsonl",
    )
    assert plan.merged == summarize_merged(store / "m2.jsonl")
    assert plan.merged is not None
    assert plan.merged.by_round == {1: {"succeeded": 1, "failed": 0}, 2: {"succeeded": 1, "failed": 0}}


# Files that do not fit together --------------------------------------------------------------------------


def test_results_outside_their_batch_are_refused(tmp_path: Path) -> None:
    """Batches passed in the wrong order would make every line look missing and pay for it again."""
    source = write_lines(tmp_path / "input.jsonl", [request(i) for i in ("a", "b")])
    batches = [
        RoundBatch(
            "completed", output_file=write_lines(tmp_path / "out-b.jsonl", [success("b")]), requests=1
        ),
        RoundBatch("completed", output_file=write_lines(tmp_path / "out-a.jsonl", [success("a")])),
    ]
    with pytest.raises(ValueError, match=r"Batch 1's result files name 1 custom_id\(s\) absent .*'b'"):
        close_round(round_number=1, input_file=source, batches=batches)


@pytest.mark.parametrize(
    ("counts", "message"),
    [((1, 1), "more requests than its batches hold"), ((2, 2), "holds 2 requests; the input had 1 left")],
)
def test_batch_counts_must_add_up_to_the_input(tmp_path: Path, counts: tuple[int, int], message: str) -> None:
    source = write_lines(tmp_path / "input.jsonl", [request(i) for i in ("a", "b", "c")])
    batches = [RoundBatch("expired", requests=count) for count in counts]
    with pytest.raises(ValueError, match=message):
        close_round(round_number=1, input_file=source, batches=batches)


def test_a_round_input_must_follow_the_previous_merged_file(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "input.jsonl", [request(i) for i in ("a", "b")])
    batch = RoundBatch("expired")
    close_round(round_number=1, input_file=source, batches=[batch], merged=tmp_path / "m1.jsonl")
    reversed_input = write_lines(tmp_path / "input-2.jsonl", [request("b"), request("a")])
    with pytest.raises(ValueError, match="not a subsequence"):
        close_round(
            round_number=2,
            input_file=reversed_input,
            batches=[batch],
            merged=tmp_path / "m2.jsonl",
            previous_merged=tmp_path / "m1.jsonl",
        )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"round_number": 0}, "numbered from 1"),
        ({"batches": []}, "at least one batch"),
        ({"batches": [RoundBatch("in_progress")]}, "not terminal"),
        ({"batches": [RoundBatch("expired"), RoundBatch("expired")]}, "Batch 1 needs a request count"),
        ({"round_number": 2, "merged": "m2.jsonl"}, "pass it"),
        ({"previous_merged": "m0.jsonl", "merged": "m1.jsonl"}, "Round 1 has no previous"),
        ({"round_number": 2, "previous_merged": "m.jsonl", "merged": "m.jsonl"}, "new path per round"),
        (
            {
                "round_number": 2,
                "previous_merged": ObjectStoragePath("memory://rounds-tests/m.jsonl"),
                "merged": ObjectStoragePath("memory://rounds-tests/m.jsonl"),
            },
            "new path per round",
        ),
    ],
)
def test_arguments_that_cannot_make_a_round(tmp_path: Path, arguments: dict[str, Any], message: str) -> None:
    source = write_lines(tmp_path / "input.jsonl", [request("a")])
    call: dict[str, Any] = {"round_number": 1, "input_file": source, "batches": [RoundBatch("expired")]}
    with pytest.raises(ValueError, match=message):
        close_round(**{**call, **arguments})


# Against the emulator ------------------------------------------------------------------------------------


def test_a_job_runs_round_after_round_against_the_emulator(emulator: EmulatorProcess, tmp_path: Path) -> None:
    """Round 1 expires after three lines (a 400, a 500, a success); one unfinished line is lost on the
    way. Rounds 2 and 3 submit the next input as written; the 500 fails every time, so it is what round 3
    leaves to retry once ``max_rounds`` is reached."""
    client: OpenAI = emulator.client(max_retries=0)
    directives = {0: {"status_code": 400}, 1: {"status_code": 500}}
    requests = [request_line(f"j-{i}", CHAT, directives.get(i)) for i in range(6)]
    landed = run_batch(
        client,
        tmp_path / "round-1",
        requests,
        metadata={"emulator_expire_after_lines": "3", "emulator_line_delay": "0.01"},
    )
    assert landed.batch.status == "expired"
    assert landed.error is not None
    kept = [line for line in lines_of(landed.error) if b'"j-5"' not in line]
    landed.error.write_bytes(b"".join(line + b"\n" for line in kept))  # j-5's line is lost

    plan = close_round(
        round_number=1,
        input_file=landed.input,
        batches=[RoundBatch(landed.batch.status, landed.output, landed.error)],
        next_input=tmp_path / "input-2.jsonl",
        merged=tmp_path / "merged-1.jsonl",
    )
    assert plan.counts == {
        S: {"ok": 1},
        R: {"server_error": 1, "batch_expired": 2, "missing": 1},
        F: {"invalid_request_error": 1},
    }
    original = lines_of(landed.input)
    assert lines_of(tmp_path / "input-2.jsonl") == [original[i] for i in (1, 3, 4, 5)]

    plans: list[RoundPlan] = [plan]
    for number in (2, 3):
        again = run_batch(
            client,
            tmp_path / f"round-{number}",
            [json.loads(line) for line in lines_of(tmp_path / f"input-{number}.jsonl")],
        )
        assert again.batch.status == "completed"
        plans.append(
            close_round(
                round_number=number,
                input_file=tmp_path / f"input-{number}.jsonl",
                batches=[RoundBatch(again.batch.status, again.output, again.error)],
                next_input=tmp_path / f"input-{number + 1}.jsonl",
                merged=tmp_path / f"merged-{number}.jsonl",
                previous_merged=tmp_path / f"merged-{number - 1}.jsonl",
            )
        )
    assert [p.resubmitted for p in plans] == [
        IdSample(4, ("j-1", "j-3", "j-4", "j-5")),
        IdSample(1, ("j-1",)),
        IdSample(1, ("j-1",)),
    ]
    rows = rows_of(tmp_path / "merged-3.jsonl")
    assert [(row["custom_id"], row["round"], row["ok"], row["status_code"]) for row in rows] == [
        ("j-0", 1, False, 400),
        ("j-1", 3, False, 500),
        ("j-2", 1, True, 200),
        ("j-3", 2, True, 200),
        ("j-4", 2, True, 200),
        ("j-5", 2, True, 200),
    ]
    assert [row["line"] for row in rows] == [1, 2, 3, 4, 5, 6]


# Memory -------------------------------------------------------------------------------------------------


TINY_SUCCESS = '{{"custom_id":"{}","response":{{"status_code":200,"body":{{}}}},"error":null}}\n'
TINY_FAILURE = (
    '{{"custom_id":"{}","response":{{"status_code":500,"body":{{"error":{{"type":"server_error"}}}}}},'
    '"error":null}}\n'
)


def test_memory_stays_bounded_by_the_largest_batch(tmp_path: Path) -> None:
    """100,000 requests in ten batches, then a second round of 10,000 merged into the 100,000 rows.
    Each round's peak is one batch's index and a few 1 MiB blocks, whatever the job's size: less than an
    index over the whole round takes on its own, which is itself less than the bytes of the files (so
    indexing all batches at once, or loading a file, would exceed it)."""
    count, per_batch = 100_000, 10_000
    ids = [f"id-{i:06d}" for i in range(count)]
    source = tmp_path / "input.jsonl"
    source.write_text(
        "".join(f'{{"custom_id":"{i}","method":"POST","url":"{CHAT}","body":{{}}}}\n' for i in ids)
    )
    batches = []
    for number in range(count // per_batch):
        chunk = ids[number * per_batch : (number + 1) * per_batch]
        output = tmp_path / f"out-{number}.jsonl"  # every tenth request failed; the rest in reverse order
        output.write_text("".join(TINY_SUCCESS.format(i) for n, i in enumerate(reversed(chunk), 1) if n % 10))
        (error := tmp_path / f"err-{number}.jsonl").write_text(
            "".join(TINY_FAILURE.format(i) for i in chunk[::10])
        )
        batches.append(RoundBatch("completed", output, error, per_batch))
    (retried := tmp_path / "retried.jsonl").write_text("".join(TINY_SUCCESS.format(i) for i in ids[::10]))
    read = sum(path.stat().st_size for path in tmp_path.iterdir())

    tracemalloc.start()
    try:
        whole_round_index = {i: (0, n * 80, 80, True) for n, i in enumerate(ids)}
        _, index_alone = tracemalloc.get_traced_memory()
        del whole_round_index
        tracemalloc.reset_peak()
        first = close_round(
            round_number=1,
            input_file=source,
            batches=batches,
            next_input=tmp_path / "input-2.jsonl",
            merged=tmp_path / "merged-1.jsonl",
        )
        _, peak_one = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        second = close_round(
            round_number=2,
            input_file=tmp_path / "input-2.jsonl",
            batches=[RoundBatch("completed", output_file=retried)],
            merged=tmp_path / "merged-2.jsonl",
            previous_merged=tmp_path / "merged-1.jsonl",
        )
        _, peak_two = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert (first.resubmitted.total, lines_of(tmp_path / "input-2.jsonl")) == (10_000, lines_of(source)[::10])
    assert second.merged is not None
    assert (second.merged.requests, second.merged.succeeded) == (count, count)
    assert second.merged.by_round == {
        1: {"succeeded": 90_000, "failed": 0},
        2: {"succeeded": 10_000, "failed": 0},
    }
    assert max(peak_one, peak_two) < index_alone < read, (peak_one, peak_two, index_alone, read)
