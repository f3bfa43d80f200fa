"""The enqueued-token budget: the rules with plain values, then jobs sharing one model's limit.

Ten jobs of three shards each run at once against an emulator whose limit holds two shards: with the
budget set, they wait for room (proactive); without it, the emulator refuses the excess and the jobs
submit those shards again once room frees up (reactive). Either way every job succeeds, without a
retry, with one running batch per shard and every line processed once.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from airflow_provider_batch import budget
from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.exceptions import OpenAIBatchFailed
from airflow_provider_batch.hooks.batch import IDEMPOTENCY_KEY
from airflow_provider_batch.operators.batch import OpenAIBatchOperator
from airflow_provider_batch.status import BatchSnapshot, PollFailure, PollSchedule
from airflow_provider_batch.tokens import estimate_request
from airflow_provider_batch.triggers.job import OpenAIBatchJobTrigger
from airflow_provider_batch.watch import RoundWait
from tests.batch_testing import CHAT, MODEL, chat_record, make_context, route_count, use_emulator

CONN = "batch_budget"


def snapshot(batch_id: str, status: str, tokens: int | None = None, model: str = MODEL) -> BatchSnapshot:
    metadata = {budget.TOKENS_KEY: budget.tag(tokens, model)} if tokens is not None else None
    return BatchSnapshot(batch_id=batch_id, status=status, model=model, metadata=metadata)


# rules ---------------------------------------------------------------------------------------------------


def test_a_tag_carries_the_tokens_and_the_model_and_reads_back() -> None:
    assert budget.read_tag({budget.TOKENS_KEY: budget.tag(1234, "ft:gpt-4o:org:x")}) == (
        1234,
        "ft:gpt-4o:org:x",
    )
    assert budget.read_tag({budget.TOKENS_KEY: "lots:gpt-4o"}) is None
    assert budget.read_tag(None) is None


def test_a_budget_is_one_limit_or_one_per_model() -> None:
    assert budget.limit_for(100, "gpt-4o") == 100
    assert budget.limit_for({"gpt-4o": 5}, "gpt-4o") == 5
    assert budget.limit_for({"gpt-4o": 5}, "gpt-4o-mini") is None
    assert budget.limit_for(None, "gpt-4o") is None
    for bad in (0, -1, True, 1.5, {"gpt-4o": 0}, {"gpt-4o": "5"}, "5"):
        with pytest.raises(ValueError, match="max_enqueued_tokens"):
            budget.check_budget(bad, "task")


def test_a_bad_budget_on_the_task_fails_the_dags_import() -> None:
    with pytest.raises(ValueError, match="max_enqueued_tokens"):
        OpenAIBatchOperator(
            task_id="bad_budget", requests=job_requests(0), endpoint=CHAT, max_enqueued_tokens={MODEL: 0}
        )


def test_what_is_in_flight_counts_and_what_ended_or_is_another_models_does_not() -> None:
    batches = [
        snapshot("a", "validating", 10),
        snapshot("b", "in_progress", 20),
        snapshot("c", "finalizing", 30),
        snapshot("d", "completed", 40),
        snapshot("e", "cancelling", 50),
        snapshot("f", "in_progress", 60, model="gpt-4o"),
        snapshot("g", "in_progress"),  # not ours: its tokens are unknown
        snapshot("h", "in_progress", model="gpt-4o"),
    ]
    found = budget.enqueued(batches, MODEL)
    assert (found.tokens, found.batch_ids, found.untagged) == (60, ("a", "b", "c", "g"), 1)


def test_only_a_batch_failed_for_the_token_limit_is_worth_submitting_again() -> None:
    refused = BatchSnapshot(batch_id="r", status="failed", errors=({"code": "token_limit_exceeded"},))
    invalid = BatchSnapshot(batch_id="i", status="failed", errors=({"code": "invalid_request"},))
    assert budget.refused_for_tokens(refused)
    assert not budget.refused_for_tokens(invalid)
    assert not budget.refused_for_tokens(BatchSnapshot(batch_id="c", status="completed"))


def test_a_refusal_is_the_shards_own_only_when_nothing_else_held_room_at_that_moment() -> None:
    """Another batch in flight when ours was refused explains the refusal, even if it has ended by the
    time the job looks again; one that ended before, or was refused too, does not."""
    ours = BatchSnapshot(
        batch_id="ours",
        status="failed",
        model=MODEL,
        created_at=100,
        failed_at=101,
        errors=({"code": budget.TOKEN_LIMIT_CODE},),
    )

    def other(batch_id: str, created: int, **ended: int) -> BatchSnapshot:
        tag = {budget.TOKENS_KEY: budget.tag(10, MODEL)}
        return BatchSnapshot(batch_id=batch_id, status="completed", created_at=created, metadata=tag, **ended)

    held = budget.held_room_when_refused
    assert held([ours, other("a", 90, completed_at=120)], ours, MODEL), "ran through the refusal"
    assert held([other("b", 95)], ours, MODEL), "still running"
    assert not held([other("c", 90, completed_at=100)], ours, MODEL), "ended before"
    assert not held([other("d", 102, completed_at=130)], ours, MODEL), "came after"
    assert not held([other("e", 90, completed_at=120)], ours, "gpt-4o"), "another model's"
    refused_too = BatchSnapshot(
        batch_id="f",
        status="failed",
        model=MODEL,
        created_at=99,
        failed_at=101,
        errors=({"code": budget.TOKEN_LIMIT_CODE},),
    )
    assert not held([refused_too], ours, MODEL), "refused itself: it never held room"


def test_a_wait_for_room_ends_when_any_batch_ends_or_at_its_wake_time() -> None:
    wait = RoundWait(
        ["a", "b"], end_time=1_000, schedule=PollSchedule(10, 10, jitter=0), until_any=True, wake_at=100
    )
    assert wait.pause(0) == 10
    step = wait.observe({"a": snapshot("a", "in_progress"), "b": snapshot("b", "completed")}, now=10)
    assert (step.decision.done, step.decision.reason) == (True, "room")

    idle = RoundWait([], end_time=1_000, schedule=PollSchedule(60, 60, jitter=0), until_any=True, wake_at=50)
    assert idle.pause(0) == 50, "never sleeps past the time to look again"
    assert not idle.observe({}, now=20).decision.done
    assert idle.observe({}, now=50).decision.reason == "room"

    failing = RoundWait(["a"], end_time=1_000, until_any=True, wake_at=500)
    assert failing.observe({"a": PollFailure(True, "boom")}, now=1).decision.reason == "room"
    with pytest.raises(ValueError, match="wake_at"):
        RoundWait(["a"], end_time=1, until_any=True)


# jobs sharing one limit ------------------------------------------------------------------------------------

JOBS = 10
SHARDS = 3
LINES = 2


def job_requests(job: int) -> list[dict[str, Any]]:
    return [
        chat_record(f"job{job}-{i}", f"Say hello to person {i} of job {job}.") for i in range(SHARDS * LINES)
    ]


def shard_tokens() -> int:
    """The largest shard's input tokens, as the operator and the emulator both count them."""
    counts = [
        sum(estimate_request(CHAT, request["body"]).input for request in requests[i : i + LINES])
        for requests in map(job_requests, range(JOBS))
        for i in range(0, SHARDS * LINES, LINES)
    ]
    return max(counts)


def run_jobs(server: EmulatorProcess, **options: Any) -> list[BaseException]:
    """Run the jobs at once, each in its own thread as on its own worker; return what they raised."""
    errors: list[BaseException] = []

    def run(job: int) -> None:
        operator = OpenAIBatchOperator(
            task_id=f"job_{job}",
            requests=job_requests(job),
            endpoint=CHAT,
            conn_id=CONN,
            deferrable=False,
            max_requests_per_batch=LINES,
            poll_interval=0.1,
            max_poll_interval=0.5,
            metadata={"emulator_line_delay": "0.2"},
            **options,
        )
        try:
            operator.execute(make_context(f"job_{job}"))
        except BaseException as error:  # reported by the test, with every other job's
            errors.append(error)

    threads = [threading.Thread(target=run, args=(job,)) for job in range(JOBS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return errors


def one_running_batch_per_shard(server: EmulatorProcess) -> None:
    batches = list(server.client().batches.list(limit=100))
    kept = Counter(b.metadata[IDEMPOTENCY_KEY] for b in batches if b.status == "completed")
    assert len(kept) == JOBS * SHARDS
    assert set(kept.values()) == {1}
    assert {b.status for b in batches} <= {"completed", "failed"}
    processed = server.lines()["custom_ids"]
    assert len(processed) == JOBS * SHARDS * LINES
    assert set(processed.values()) == {1}, "every line paid for once"


@pytest.fixture
def limited(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch
) -> EmulatorProcess:
    """An emulator whose limit holds two shards at once (not three)."""
    limit = 2 * shard_tokens() + shard_tokens() // 2
    server = make_emulator("--enqueued-token-limit", str(limit))
    server.limit = limit  # type: ignore[attr-defined]
    return server


def test_jobs_wait_for_room_under_the_budget_and_never_overfill_it(
    limited: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_emulator(monkeypatch, CONN, limited, max_enqueued_tokens=limited.limit)  # type: ignore[attr-defined]

    assert run_jobs(limited) == []

    one_running_batch_per_shard(limited)
    assert limited.enqueued_tokens()["peak"][MODEL] <= limited.limit  # type: ignore[attr-defined]
    # Workers that read the listing at the same moment may both submit: the API refuses the excess
    # (the emulator validates at once, so here it always does), and it is submitted again.


def test_without_a_budget_refused_shards_are_submitted_again_once_room_frees_up(
    limited: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_emulator(monkeypatch, CONN, limited)

    assert run_jobs(limited) == []

    assert limited.enqueued_tokens()["refused"][MODEL] > 0, "the reactive path was exercised"
    one_running_batch_per_shard(limited)


def test_refusals_at_create_are_waited_out_too(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure's "fail fast" regions refuse the create itself (400 ``token_limit_exceeded``)."""
    limit = 2 * shard_tokens() + shard_tokens() // 2
    server = make_emulator(
        "--dialect",
        "azure",
        "--enqueued-token-limit",
        str(limit),
        "--token-limit-fail-fast",
        "--file-processing-delay",
        "0",
    )
    use_emulator(monkeypatch, CONN, server, "azure")

    assert run_jobs(server) == []

    assert server.enqueued_tokens()["refused"][MODEL] > 0
    assert server.enqueued_tokens()["peak"][MODEL] <= limit
    one_running_batch_per_shard(server)


def test_a_shard_refused_with_nothing_else_in_flight_fails_after_one_more_try(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to wait for, a refusal means the shard does not fit the organization's limit."""
    server = make_emulator()
    use_emulator(monkeypatch, CONN, server)
    operator = OpenAIBatchOperator(
        task_id="never_fits",
        requests=job_requests(0)[:LINES],
        endpoint=CHAT,
        conn_id=CONN,
        deferrable=False,
        poll_interval=0.05,
        max_poll_interval=0.2,
        metadata={"emulator_fail_validation": "token_limit_exceeded"},
    )
    with pytest.raises(OpenAIBatchFailed, match="token_limit_exceeded"):
        operator.execute(make_context())
    assert route_count(server, "POST /v1/batches") == budget.MAX_LONELY_REFUSALS


def test_a_shard_larger_than_the_whole_budget_is_refused_before_upload(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_emulator()
    use_emulator(monkeypatch, CONN, server)
    operator = OpenAIBatchOperator(
        task_id="too_big",
        requests=job_requests(0),
        endpoint=CHAT,
        conn_id=CONN,
        deferrable=False,
        max_requests_per_batch=LINES,
        max_enqueued_tokens={MODEL: 5},
    )
    with pytest.raises(Exception, match="more than max_enqueued_tokens=5") as raised:
        operator.execute(make_context())
    assert type(raised.value).__name__ == "OpenAIBatchConfigError"
    assert route_count(server, "POST /v1/files") == 0
    assert route_count(server, "POST /v1/batches") == 0


def test_a_deferred_job_waits_for_room_in_the_triggerer_and_resumes_from_its_event(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_emulator("--enqueued-token-limit", "1000000")  # far away: only so that it counts
    use_emulator(monkeypatch, CONN, server)
    options: dict[str, Any] = {
        "task_id": "deferred_job",
        "requests": job_requests(0)[: 2 * LINES],
        "endpoint": CHAT,
        "conn_id": CONN,
        "deferrable": True,
        "max_requests_per_batch": LINES,
        "max_enqueued_tokens": shard_tokens() + 1,  # one shard in flight at a time
        "poll_interval": 0.05,
        "max_poll_interval": 0.3,
        "metadata": {"emulator_line_delay": "0.2"},
    }
    context = make_context()
    with pytest.raises(TaskDeferred) as room:
        OpenAIBatchOperator(**options).execute(context)
    trigger = room.value.trigger
    assert isinstance(trigger, OpenAIBatchJobTrigger)
    assert trigger.wake_at is not None, "shard 2 waits for room"
    assert len(trigger.job["rounds"][0]["batches"]) == 1

    # Resumed from each event (a fresh operator each time) until the job ends: waits for room while
    # shard 1 runs, then shard 2 is created and waited on.
    reasons = []
    result = None
    for _ in range(50):
        event = asyncio.run(_first_event(trigger))
        reasons.append(event["termination_reason"])
        try:
            result = OpenAIBatchOperator(**options).execute_complete(context, event=event)
            break
        except TaskDeferred as deferred:
            trigger = deferred.trigger
    assert result is not None
    assert reasons[0] == "room"
    assert reasons[-1] != "room"
    assert result["request_counts"]["succeeded"] == 2 * LINES
    assert server.enqueued_tokens()["peak"][MODEL] <= shard_tokens()


async def _first_event(trigger: Any) -> dict[str, Any]:
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**kwargs)
    fired = await asyncio.wait_for(anext(rebuilt.run()), 60)
    return dict(fired.payload)
