"""``OpenAIBatchOperator`` running jobs: inputs cut into several batches, lines resubmitted in later
rounds, re-attachment after a worker dies mid-submission, and the merged result file.

Every batch is real (an emulator process over HTTP), and the emulator's per-``custom_id`` count of
processed lines proves what was paid for: a line processed twice would be a line billed twice. The
only stand-ins are for Airflow's task runtime (``tests.batch_testing.make_context``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.exceptions import (
    OpenAIBatchCancelled,
    OpenAIBatchFailed,
    OpenAIBatchPartialFailure,
)
from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.operators.batch import OpenAIBatchOperator
from airflow_provider_batch.triggers.job import OpenAIBatchJobTrigger
from tests.batch_testing import (
    API_KEY,
    CHAT,
    chat_record,
    jsonl,
    make_context,
    quick_operator,
    route_count,
    use_emulator,
)

CONN = "batch_job"
CREATE = "POST /v1/batches"


@pytest.fixture
def server(make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch) -> EmulatorProcess:
    server = make_emulator()
    use_emulator(monkeypatch, CONN, server)
    return server


def operator(**kwargs: Any) -> OpenAIBatchOperator:
    return quick_operator(CONN, "job_task", **kwargs)


def write_input(path: Path, count: int, *, failing: dict[int, dict[str, Any]] | None = None) -> Path:
    """``count`` chat requests ``r-0``, ``r-1``...; ``failing`` gives some an emulator directive."""
    with path.open("w") as handle:
        for i in range(count):
            record = chat_record(f"r-{i}", f"prompt {i}")
            if failing and i in failing:
                record["body"]["emulator"] = failing[i]
            handle.write(json.dumps({"method": "POST", "url": CHAT, **record}) + "\n")
    return path


def processed(server: EmulatorProcess) -> dict[str, int]:
    return dict(server.lines()["custom_ids"])


# shards --------------------------------------------------------------------------------------------


def test_a_large_input_runs_as_three_batches_and_lands_one_row_per_line_in_input_order(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 120_000)
    context = make_context()

    result = operator(input_path=source, output_path=tmp_path / "out.jsonl").execute(context)

    assert result["shards"] == 3
    assert [b["requests"] for b in result["rounds"][0]["batches"]] == [50_000, 50_000, 20_000]
    assert result["request_counts"] == {"total": 120_000, "succeeded": 120_000, "failed": 0, "pending": 0}
    assert len(result["rounds"]) == 1
    assert route_count(server, CREATE) == 3
    ids = [row["custom_id"] for row in jsonl(tmp_path / "out.jsonl")]
    assert ids == [f"r-{i}" for i in range(120_000)]
    assert result["results_summary"]["succeeded"] == 120_000
    assert context["ti"].xcoms["batch_ids"] == result["batch_ids"]
    assert len(json.dumps(result)) < 5_000, "the manifest grows with batches, not with lines"
    assert server.lines()["processed"] == 120_000


def test_caps_cut_smaller_batches_and_a_small_input_stays_one_batch_with_todays_manifest(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 10)
    job = operator(input_path=source, max_requests_per_batch=4).execute(make_context())
    assert [b["requests"] for b in job["rounds"][0]["batches"]] == [4, 4, 2]

    submitted = operator(input_path=source, max_requests_per_batch=4, wait_for_completion=False).execute(
        make_context()
    )
    assert submitted["status"] == "in_progress"
    assert submitted["request_counts"]["pending"] == 10

    single = operator(input_path=source).execute(make_context())
    assert single["status"] == "completed"
    assert "batch_id" in single
    assert "rounds" not in single
    assert single["request_counts"] == {"total": 10, "completed": 10, "failed": 0}


# rounds ----------------------------------------------------------------------------------------------


def test_an_expired_batch_finishes_in_a_later_round_and_no_line_runs_twice(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 100)

    result = operator(
        input_path=source,
        output_path=tmp_path / "out.jsonl",
        metadata={"emulator_expire_after_lines": "60"},
    ).execute(make_context())

    assert [r["batches"][0]["status"] for r in result["rounds"]] == ["expired", "completed"]
    assert result["rounds"][1]["requests"] == 40
    assert result["request_counts"]["succeeded"] == 100
    assert result["status"] == "completed"
    assert processed(server) == {f"r-{i}": 1 for i in range(100)}, "each line paid for once"
    rows = list(jsonl(tmp_path / "out.jsonl"))
    assert [row["custom_id"] for row in rows] == [f"r-{i}" for i in range(100)]
    assert {row["round"] for row in rows} == {1, 2}
    assert all(row["ok"] for row in rows)


def test_server_errors_are_retried_up_to_max_rounds_and_client_errors_never(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    failing = {1: {"status_code": 500}, 2: {"status_code": 400}, 3: {"status_code": 503, "times": 1}}
    source = write_input(tmp_path / "in.jsonl", 6, failing=failing)

    with pytest.raises(OpenAIBatchPartialFailure, match="failed for good") as raised:
        operator(input_path=source, output_path=tmp_path / "out.jsonl", max_rounds=3).execute(make_context())

    assert "2 failed for good" in str(raised.value), "the last round is read too"
    counts = processed(server)
    assert counts["r-1"] == 3, "a 500 is retried in every round"
    assert counts["r-2"] == 1, "a 400 is never paid for twice"
    assert counts["r-3"] == 2, "a 503 that passes the second time succeeds in round 2"
    assert {counts[f"r-{i}"] for i in (0, 4, 5)} == {1}
    assert raised.value.errors_by_code == {"invalid_request_error": 1, "server_error": 1}
    rows = {row["custom_id"]: row for row in jsonl(tmp_path / "out.jsonl")}
    assert (rows["r-1"]["round"], rows["r-1"]["ok"]) == (3, False)
    assert (rows["r-3"]["round"], rows["r-3"]["ok"]) == (2, True)
    assert rows["r-2"]["round"] == 1


def test_max_rounds_one_is_the_single_batch_behaviour(server: EmulatorProcess, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", 3, failing={0: {"status_code": 500}})
    with pytest.raises(OpenAIBatchPartialFailure):
        operator(input_path=source, max_rounds=1).execute(make_context())
    assert route_count(server, CREATE) == 1


def test_a_job_stopped_by_its_round_budget_still_counts_its_last_round(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 10, failing={3: {"status_code": 400}})
    context = make_context()
    with pytest.raises(OpenAIBatchPartialFailure, match="1 failed for good"):
        operator(input_path=source, max_rounds=1, max_requests_per_batch=4).execute(context)
    counts = context["ti"].xcoms["return_value"]["request_counts"]
    assert counts == {"total": 10, "succeeded": 9, "failed": 1, "pending": 0}


def test_a_cancelled_batch_ends_the_job_without_a_new_round(server: EmulatorProcess, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", 6)
    op = operator(
        input_path=source, max_requests_per_batch=3, metadata={"emulator_line_delay": "0.5"}, deferrable=True
    )
    context = make_context()
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    for batch_id in deferred.value.trigger.batch_ids:
        server.client().batches.cancel(batch_id)
    payload = asyncio.run(_run_trigger(deferred.value))

    with pytest.raises(OpenAIBatchCancelled):
        operator(input_path=source, max_requests_per_batch=3).execute_complete(context, event=payload)
    assert route_count(server, CREATE) == 2
    assert context["ti"].xcoms["return_value"]["status"] == "cancelled"


def test_a_failed_shard_fails_the_task_with_its_errors_and_nothing_is_resubmitted(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 6)
    op = operator(
        input_path=source,
        max_requests_per_batch=3,
        metadata={"emulator_fail_validation": "invalid_request"},  # token_limit_exceeded: test_budget
    )
    with pytest.raises(OpenAIBatchFailed, match="invalid_request"):
        op.execute(make_context())
    assert route_count(server, CREATE) == 2


# one wait for a round ---------------------------------------------------------------------------------


async def _run_trigger(deferred: TaskDeferred) -> dict[str, Any]:
    classpath, kwargs = deferred.trigger.serialize()
    assert classpath == "airflow_provider_batch.triggers.job.OpenAIBatchJobTrigger"
    fired = await asyncio.wait_for(anext(OpenAIBatchJobTrigger(**kwargs).run()), 60)
    return fired.payload


def test_a_deferred_job_waits_on_one_trigger_per_round_and_resumes_from_the_deferred_state(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    source = write_input(tmp_path / "in.jsonl", 30, failing={7: {"status_code": 429, "times": 1}})
    context = make_context()
    kwargs = {
        "input_path": source,
        "max_requests_per_batch": 10,
        "deferrable": True,
        "output_path": tmp_path / "o.jsonl",
    }

    with pytest.raises(TaskDeferred) as first:
        operator(**kwargs).execute(context)
    assert isinstance(first.value.trigger, OpenAIBatchJobTrigger)
    assert len(first.value.trigger.batch_ids) == 3
    stored = json.dumps([first.value.trigger.serialize(), first.value.kwargs])
    assert first.value.trigger.job is not None, "the job's state rides with the trigger and its event"
    assert API_KEY not in stored

    # Round 1 ends with one 429 line: the resumed worker (a fresh instance) submits round 2 and defers.
    with pytest.raises(TaskDeferred) as second:
        operator(**kwargs).execute_complete(context, event=asyncio.run(_run_trigger(first.value)))
    assert second.value.trigger.job["rounds"][-1]["round"] == 2
    payload = asyncio.run(_single_trigger_payload(second.value))
    result = operator(**kwargs).execute_complete(context, event=payload)

    assert result["request_counts"]["succeeded"] == 30
    assert [len(r["batches"]) for r in result["rounds"]] == [3, 1]
    assert processed(server)["r-7"] == 2
    assert sum(processed(server).values()) == 31


async def _single_trigger_payload(deferred: TaskDeferred) -> dict[str, Any]:
    """A round of one batch is watched by the single-batch trigger (one GET per look)."""
    from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger

    _, kwargs = deferred.trigger.serialize()
    fired = await asyncio.wait_for(anext(OpenAIBatchTrigger(**kwargs).run()), 60)
    return fired.payload


# exactly once across crashes --------------------------------------------------------------------------


def test_a_worker_that_dies_mid_submission_is_retried_with_one_batch_per_shard(
    server: EmulatorProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_input(tmp_path / "in.jsonl", 50)
    context = make_context()
    creates: list[str] = []
    real_create = OpenAIBatchHook.create_batch

    def dies_on_the_third(self: OpenAIBatchHook, *args: Any, **kwargs: Any) -> Any:
        """The worker process dying while shard 3 of 5 is being created (after the create landed)."""
        batch = real_create(self, *args, **kwargs)
        creates.append(batch.id)
        if len(creates) == 3:
            raise SystemExit("worker killed")
        return batch

    monkeypatch.setattr(OpenAIBatchHook, "create_batch", dies_on_the_third)
    with pytest.raises(SystemExit):
        operator(input_path=source, max_requests_per_batch=10).execute(context)
    monkeypatch.setattr(OpenAIBatchHook, "create_batch", real_create)

    result = operator(input_path=source, max_requests_per_batch=10).execute(context)

    assert route_count(server, CREATE) == 5, "shards 1-3 re-attached, 4 and 5 created once"
    assert result["batch_ids"][:3] == creates
    assert result["request_counts"]["succeeded"] == 50
    assert sum(processed(server).values()) == 50
