"""``OpenAIBatchOperator`` called directly, for what ``dag.test()`` cannot show: the defer call
(trigger, method, timeout, kwargs), the terminal-before-defer path, ``execute_complete`` over
every event, the cancel on timeout, ``on_kill``, and re-runs of one task instance.

Every batch is real (an emulator process over HTTP) and so is every trigger event used to resume
(the trigger is run the way the triggerer runs it: built from its ``serialize()`` kwargs). The
only stand-ins are for Airflow's task runtime, which does not exist outside a running task:
``tests.batch_testing.make_context`` gives a recording task instance and a dict-backed task state
store (doubles of Airflow, not of the provider).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred  # airflow.sdk.exceptions from 3.2

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.exceptions import (
    OpenAIBatchAPIError,
    OpenAIBatchCancelled,
    OpenAIBatchConfigError,
    OpenAIBatchError,
    OpenAIBatchExpired,
    OpenAIBatchFailed,
    OpenAIBatchLandingError,
    OpenAIBatchPartialFailure,
    OpenAIBatchPollingError,
    OpenAIBatchTimeout,
    OpenAIBatchTriggerEventError,
)
from airflow_provider_batch.identity import STATE_BATCH_ID
from airflow_provider_batch.operators.batch import DEFER_METHOD_NAME, OpenAIBatchOperator
from airflow_provider_batch.triggers.batch import DEFER_GRACE, OpenAIBatchTrigger
from tests.batch_testing import (
    API_KEY,
    CHAT,
    DIALECTS,
    FAST_RETRIES,
    DictStateStore,
    chat_record,
    event,
    make_context,
    route_count,
    use_emulator,
    wait_for_status,
)

CONN = "batch_unit"
CANCEL = "POST /v1/batches/{id}/cancel"
CREATE = "POST /v1/batches"
RECORDS = [chat_record(f"u-{i}", f"unit {i}") for i in range(3)]


@pytest.fixture
def server(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch, dialect: str
) -> EmulatorProcess:
    """A private emulator behind connection ``batch_unit``, so its counters belong to the test; of
    the test's ``dialect`` (OpenAI unless parametrized), with a connection written for it."""
    server = make_emulator()
    use_emulator(monkeypatch, CONN, server, dialect)
    return server


def operator(**kwargs: Any) -> OpenAIBatchOperator:
    """A fresh operator instance, as each worker run (execute, resume) gets."""
    defaults: dict[str, Any] = {
        "task_id": "unit_task",
        "requests": RECORDS,
        "endpoint": CHAT,
        "conn_id": CONN,
        "deferrable": True,
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
    }
    return OpenAIBatchOperator(**{**defaults, **kwargs})


def defer(op: OpenAIBatchOperator, context: Any) -> TaskDeferred:
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context)
    return deferred.value


async def run_trigger(deferred: TaskDeferred) -> dict[str, Any]:
    """Run the trigger as the triggerer does: rebuilt from its serialized kwargs, first event."""
    classpath, kwargs = deferred.trigger.serialize()
    assert classpath == "airflow_provider_batch.triggers.batch.OpenAIBatchTrigger"
    trigger = OpenAIBatchTrigger(**kwargs)
    fired = await asyncio.wait_for(anext(trigger.run()), 30)
    return fired.payload


# deferral -----------------------------------------------------------------------------------------------


def test_execute_defers_to_the_trigger_with_a_safe_and_longer_timeout(server: EmulatorProcess) -> None:
    context = make_context()
    op = operator(timeout=3600, metadata={"emulator_line_delay": "1", "team": "nlp"})

    deferred = defer(op, context)

    assert isinstance(deferred.trigger, OpenAIBatchTrigger)
    assert deferred.method_name == DEFER_METHOD_NAME == "execute_complete"
    classpath, kwargs = deferred.trigger.serialize()
    batch_id = kwargs["batch_id"]
    batch = server.client().batches.retrieve(batch_id)
    assert kwargs["conn_id"] == CONN
    assert kwargs["cancel_on_kill"] is True
    assert kwargs["poll_interval"] == 0.05
    # The deadline counts from the batch's creation; Airflow's defer timeout must outlast it, so
    # the trigger's own timeout event (which cancels) wins over Airflow's generic one.
    assert kwargs["end_time"] == pytest.approx(batch.created_at + 3600, abs=1)
    remaining = kwargs["end_time"] - time.time()
    assert deferred.timeout.total_seconds() > remaining
    assert deferred.timeout.total_seconds() == pytest.approx(remaining + 0.2 + DEFER_GRACE, abs=2)
    # Trigger kwargs and defer kwargs are stored in plain text: never the API key.
    stored = json.dumps([classpath, kwargs, deferred.kwargs])
    assert API_KEY not in stored
    assert "password" not in stored
    # Before deferring: the id is kept for retries and pushed for the link and downstream tasks.
    assert context["task_state_store"].get(STATE_BATCH_ID) == batch_id
    assert context["ti"].xcoms["batch_id"] == batch_id
    assert context["ti"].xcoms["batch_url"] == f"{server.base_url}/batches/{batch_id}"
    assert op.batch_id == batch_id
    assert batch.metadata["team"] == "nlp"
    assert batch.metadata["airflow_task_id"] == "unit_task"
    server.client().batches.cancel(batch_id)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_resume_and_terminal_before_defer_finish_the_same_way(server: EmulatorProcess) -> None:
    context = make_context()
    deferred = defer(operator(), context)
    batch_id = deferred.trigger.batch_id

    payload = await run_trigger(deferred)
    assert payload["termination_reason"] == "completed"
    resumed = operator()
    resumed_manifest = resumed.execute_complete(context, event=payload)
    assert resumed.batch_id == batch_id, "the link reads it after a resume on a fresh instance"
    assert resumed_manifest["status"] == "completed"
    assert resumed_manifest["request_counts"] == {"total": 3, "completed": 3, "failed": 0}

    # Executed again (same task instance, same input): the completed batch is found again and
    # finished inline, without a second batch and without deferring.
    creates = route_count(server, CREATE)
    again = operator()
    manifest = again.execute(context)
    assert manifest == resumed_manifest
    assert again.batch_id == batch_id
    assert route_count(server, CREATE) == creates


# re-runs of one task instance ----------------------------------------------------------------------------


def test_rerun_reattaches_for_the_same_input_and_submits_for_a_changed_one(server: EmulatorProcess) -> None:
    state = DictStateStore()
    first_context = make_context(state_store=state)
    run_id = first_context["ti"].run_id
    first = operator(deferrable=False).execute(first_context)
    assert route_count(server, CREATE) == 1
    assert route_count(server, "POST /v1/files") == 1

    # Same task instance and input, through the task state store: the same batch, nothing sent.
    again = operator(deferrable=False).execute(make_context(run_id=run_id, state_store=state))
    assert again["batch_id"] == first["batch_id"]

    # Same again with an empty state store (a cleared task, or Airflow < 3.3): the batch is found
    # through the idempotency key in its metadata.
    found = operator(deferrable=False).execute(make_context(run_id=run_id))
    assert found["batch_id"] == first["batch_id"]
    assert (route_count(server, CREATE), route_count(server, "POST /v1/files")) == (1, 1)

    # Changed input: a new batch, and the state store now points at it.
    changed = [chat_record(f"u-{i}", f"changed {i}") for i in range(3)]
    new = operator(deferrable=False, requests=changed).execute(make_context(run_id=run_id, state_store=state))
    assert new["batch_id"] != first["batch_id"]
    assert state.get(STATE_BATCH_ID) == new["batch_id"]
    assert route_count(server, CREATE) == 2

    # Another task instance with the same input is a different submission.
    other = operator(deferrable=False).execute(make_context())
    assert other["batch_id"] not in {first["batch_id"], new["batch_id"]}


def test_a_different_input_file_id_is_a_different_submission(server: EmulatorProcess, tmp_path: Any) -> None:
    client = server.client()
    files = []
    for name, content in (("a", "first"), ("b", "second")):
        path = tmp_path / f"{name}.jsonl"
        lines = [{**chat_record(f"{name}-{i}", content), "method": "POST", "url": CHAT} for i in range(2)]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        files.append(client.files.create(file=path.open("rb"), purpose="batch").id)
    state = DictStateStore()
    context = make_context(state_store=state)

    first = operator(requests=None, input_file_id=files[0], deferrable=False).execute(context)
    again = operator(requests=None, input_file_id=files[0], deferrable=False).execute(context)
    other = operator(requests=None, input_file_id=files[1], deferrable=False).execute(context)

    assert again["batch_id"] == first["batch_id"]
    assert other["batch_id"] != first["batch_id"], "another input file must not re-attach to the old batch"
    assert client.batches.retrieve(other["batch_id"]).input_file_id == files[1]
    assert route_count(server, "POST /v1/files") == 2, "an input_file_id is never uploaded again"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_earlier_failed_batch_is_submitted_anew(server: EmulatorProcess) -> None:
    context = make_context()
    failing = {"emulator_fail_validation": "invalid_request"}  # token_limit_exceeded: test_budget
    with pytest.raises(OpenAIBatchFailed):
        operator(deferrable=False, metadata=failing).execute(context)
    first_id = context["task_state_store"].get(STATE_BATCH_ID)

    with pytest.raises(OpenAIBatchFailed) as second:
        operator(deferrable=False, metadata=failing).execute(context)

    assert second.value.batch_id != first_id, "a failed batch is not billed: the retry submits again"
    assert route_count(server, CREATE) == 2


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_batch_with_failed_lines_fails_the_task_unless_allowed(server: EmulatorProcess) -> None:
    requests = [*RECORDS, chat_record("u-bad", emulator={"status_code": 500, "message": "boom"})]
    one_round = {
        "deferrable": False,
        "requests": requests,
        "max_rounds": 1,
    }  # later rounds: test_job_operator
    with pytest.raises(OpenAIBatchPartialFailure) as raised:
        operator(**one_round).execute(make_context())
    assert raised.value.batch_id

    manifest = operator(**one_round, max_failed_fraction=0.25).execute(make_context())
    assert manifest["status"] == "completed"
    assert manifest["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    assert manifest["output_file_id"]
    assert manifest["error_file_id"]


# execute_complete over every event -----------------------------------------------------------------------

COUNTS_1_OF_4 = {"total": 4, "completed": 3, "failed": 1}
COUNTS_4_OF_4 = {"total": 4, "completed": 0, "failed": 4}
ERRORS = [{"code": "token_limit_exceeded", "message": "Enqueued token limit reached.", "line": None}]


@pytest.mark.parametrize(
    ("payload", "options", "outcome"),
    [
        pytest.param(event(), {}, "completed", id="completed"),
        pytest.param(event(request_counts=COUNTS_1_OF_4), {}, OpenAIBatchPartialFailure, id="1-of-4-strict"),
        pytest.param(
            event(request_counts=COUNTS_1_OF_4),
            {"max_failed_fraction": 0.25},
            "completed",
            id="1-of-4-allowed",
        ),
        pytest.param(
            event(request_counts=COUNTS_4_OF_4), {}, OpenAIBatchPartialFailure, id="all-lines-failed"
        ),
        pytest.param(
            event(request_counts=COUNTS_4_OF_4),
            {"max_failed_fraction": 0.9},
            OpenAIBatchPartialFailure,
            id="all-lines-failed-0.9",
        ),
        pytest.param(
            event(request_counts=COUNTS_4_OF_4),
            {"max_failed_fraction": 1.0},
            "completed",
            id="all-failed-1.0",
        ),
        pytest.param(
            event("failed", status="failed", errors=ERRORS),
            {},
            OpenAIBatchFailed,
            id="failed",
        ),
        pytest.param(
            event("expired", status="expired"),
            {},
            OpenAIBatchExpired,
            id="expired",
        ),
        pytest.param(
            event("cancelled", status="cancelled"),
            {},
            OpenAIBatchCancelled,
            id="cancelled",
        ),
        pytest.param(
            event("timeout", status="in_progress"),
            {"cancel_on_timeout": False},
            OpenAIBatchTimeout,
            id="timeout",
        ),
        pytest.param(
            event("polling_error", status=None),
            {},
            OpenAIBatchPollingError,
            id="polling-error",
        ),
        pytest.param(
            {**event(future_field={"x": 1}), "future": 1}, {}, "completed", id="unknown-extra-keys-ignored"
        ),
    ],
)
def test_execute_complete_maps_every_outcome(
    payload: dict[str, Any], options: dict[str, Any], outcome: str | type[OpenAIBatchError]
) -> None:
    context = make_context()
    op = operator(**options)
    if outcome == "completed":
        manifest = op.execute_complete(context, event=payload)
        assert manifest["batch_id"] == "batch_unit"
        assert manifest["status"] == "completed"
        assert manifest["output_file_id"] == "file-out"
    else:
        with pytest.raises(outcome) as raised:  # type: ignore[call-overload]
            op.execute_complete(context, event=payload)
        assert type(raised.value) is outcome
        assert raised.value.batch_id == "batch_unit"
        assert "batch_unit" in str(raised.value)
    assert op.batch_id == "batch_unit"
    # The ids are pushed whatever the outcome, so a failed task still points at its files.
    assert context["ti"].xcoms["batch_id"] == "batch_unit"
    assert context["ti"].xcoms["output_file_id"] == "file-out"
    assert "error_file_id" in context["ti"].xcoms


def test_failed_event_names_the_api_errors() -> None:
    payload = event("failed", status="failed", errors=ERRORS)
    with pytest.raises(OpenAIBatchFailed) as raised:
        operator().execute_complete(make_context(), event=payload)
    assert "token_limit_exceeded" in str(raised.value)
    assert "Enqueued token limit reached." in str(raised.value)
    assert raised.value.errors == ERRORS


def test_expired_event_keeps_the_output_file_for_salvage() -> None:
    payload = event("expired", status="expired")
    with pytest.raises(OpenAIBatchExpired) as raised:
        operator().execute_complete(make_context(), event=payload)
    assert raised.value.output_file_id == "file-out"
    assert "file-out" in str(raised.value)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(None, id="none"),
        pytest.param("completed", id="not-a-dict"),
        pytest.param({**event(), "schema_version": 3}, id="newer-schema"),
        pytest.param({**event(), "schema_version": 0}, id="schema-0"),
        pytest.param({k: v for k, v in event().items() if k != "schema_version"}, id="no-schema"),
        pytest.param({**event(), "status": "succeeded"}, id="unknown-status"),
        pytest.param({**event(), "termination_reason": "mystery"}, id="unknown-reason"),
        pytest.param(event(batch_id=""), id="empty-batch-id"),
        pytest.param({**event(), "batch": "completed"}, id="batch-not-an-object"),
        pytest.param({k: v for k, v in event().items() if k != "batch_id"}, id="no-batch-id"),
    ],
)
def test_execute_complete_rejects_events_it_cannot_trust(payload: Any) -> None:
    context = make_context()
    with pytest.raises(OpenAIBatchTriggerEventError):
        operator().execute_complete(context, event=payload)
    assert context["ti"].xcoms == {}, "nothing is pushed for an event that was not understood"


def test_execute_complete_without_an_event_fails() -> None:
    # dag.test() resumes without ``event`` when a trigger returns without yielding.
    with pytest.raises(OpenAIBatchTriggerEventError):
        operator().execute_complete(make_context())


# cancellation: our timeout, never a polling error, on_kill ------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_trigger_timeout_cancels_the_batch_once(server: EmulatorProcess) -> None:
    context = make_context()
    deferred = defer(operator(timeout=2.5, metadata={"emulator_line_delay": "2"}), context)

    payload = await run_trigger(deferred)

    assert payload["termination_reason"] == "timeout"
    assert route_count(server, CANCEL) == 0, "the trigger itself never cancels"
    with pytest.raises(OpenAIBatchTimeout):
        operator(timeout=2.5).execute_complete(context, event=payload)
    assert route_count(server, CANCEL) == 1
    batch = wait_for_status(server, payload["batch_id"])
    assert batch.status == "cancelled"


async def test_timeout_without_cancel_on_timeout_leaves_the_batch_running(server: EmulatorProcess) -> None:
    context = make_context()
    op = operator(timeout=2.5, cancel_on_timeout=False, metadata={"emulator_line_delay": "2"})
    payload = await run_trigger(defer(op, context))

    with pytest.raises(OpenAIBatchTimeout):
        operator(timeout=2.5, cancel_on_timeout=False).execute_complete(context, event=payload)

    assert route_count(server, CANCEL) == 0
    assert server.client().batches.retrieve(payload["batch_id"]).status == "in_progress"
    server.client().batches.cancel(payload["batch_id"])


async def test_polling_error_never_cancels(server: EmulatorProcess) -> None:
    context = make_context()
    deferred = defer(operator(max_consecutive_failures=2, metadata={"emulator_line_delay": "2"}), context)
    # Every status call now fails: the batch's state is unknown, so it must not be cancelled.
    server.configure(faults={"rate": 1.0, "kinds": ["500"], "routes": "^GET /v1/batches/"})

    payload = await run_trigger(deferred)

    assert payload["termination_reason"] == "polling_error"
    with pytest.raises(OpenAIBatchPollingError):
        operator().execute_complete(context, event=payload)
    server.configure(faults={"rate": 0.0})
    assert route_count(server, CANCEL) == 0
    assert server.client().batches.retrieve(payload["batch_id"]).status == "in_progress"
    server.client().batches.cancel(payload["batch_id"])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_on_kill_cancels_a_batch_waited_on_by_the_worker(server: EmulatorProcess) -> None:
    op = operator(deferrable=False, metadata={"emulator_line_delay": "0.5"})
    outcome: list[BaseException | dict[str, Any]] = []

    def work() -> None:
        try:
            outcome.append(op.execute(make_context()))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    deadline = time.monotonic() + 20
    while op.batch_id is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert op.batch_id is not None

    op.on_kill()  # what Airflow calls when the task is killed while running on a worker
    worker.join(30)

    assert route_count(server, CANCEL) == 1
    assert len(outcome) == 1
    assert isinstance(outcome[0], OpenAIBatchCancelled)
    assert wait_for_status(server, op.batch_id).status == "cancelled"


def test_on_kill_respects_cancel_on_kill_and_a_missing_batch(server: EmulatorProcess) -> None:
    context = make_context()
    op = operator(cancel_on_kill=False, metadata={"emulator_line_delay": "0.5"})
    deferred = defer(op, context)
    assert deferred.trigger.serialize()[1]["cancel_on_kill"] is False

    op.on_kill()
    operator().on_kill()  # killed before any batch existed: nothing to cancel

    assert route_count(server, CANCEL) == 0
    assert server.client().batches.retrieve(op.batch_id).status in {"validating", "in_progress"}
    server.client().batches.cancel(op.batch_id)


# construction ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs",
    [
        pytest.param({}, id="none"),
        pytest.param({"input_file_id": "file-1", "requests": RECORDS}, id="two"),
        pytest.param({"input_path": "a.jsonl", "input_file_id": "file-1"}, id="path-and-id"),
    ],
)
def test_exactly_one_input_is_required(inputs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one of input_file_id, input_path or requests"):
        OpenAIBatchOperator(task_id="t", endpoint=CHAT, **inputs)


def test_metadata_and_failed_fraction_limits_are_checked_at_parse_time() -> None:
    with pytest.raises(ValueError, match="metadata may hold at most 10 pairs"):
        operator(metadata={f"k{i}": "v" for i in range(11)})
    operator(metadata={f"k{i}": "v" for i in range(10)})
    with pytest.raises(ValueError, match="max_failed_fraction"):
        operator(max_failed_fraction=1.5)


# checks before paying -------------------------------------------------------------------------------


def test_a_literal_endpoint_typo_fails_when_the_dag_is_parsed() -> None:
    with pytest.raises(
        ValueError,
        match=r"unit_task: endpoint '/v1/chat/completion' is not a batch endpoint; use one of .*"
        r" Did you mean '/v1/chat/completions'\?",
    ):
        operator(endpoint="/v1/chat/completion")
    operator(endpoint="{{ params.endpoint }}")  # templated: checked once rendered, at run time


@pytest.mark.parametrize(
    ("setting", "value", "complaint"),
    [
        ("endpoint", "/v1/chat", "Did you mean '/v1/chat/completions'"),  # as a template rendered it
        ("output_path", "nosuchfs://bucket/results.jsonl", "output_path 'nosuchfs://bucket/results.jsonl'"),
        ("output_path", "{file}/results.jsonl", "cannot be written to (FileExistsError"),
    ],
)
def test_settings_that_cannot_work_fail_before_anything_is_uploaded(
    server: EmulatorProcess, tmp_path: Path, setting: str, value: str, complaint: str
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    op = operator(deferrable=False)
    setattr(op, setting, value.format(file=a_file))

    with pytest.raises(OpenAIBatchConfigError, match=re.escape(complaint)) as raised:
        op.execute(make_context())

    assert "AirflowFailException" in {cls.__name__ for cls in type(raised.value).__mro__}, "not retried"
    assert server.stats()["requests"] == {}, "nothing was looked up, uploaded or submitted"


def test_results_that_cannot_be_landed_name_the_batch_its_files_and_the_free_rerun(
    server: EmulatorProcess, tmp_path: Path
) -> None:
    op = operator(output_path=str(tmp_path / "results.jsonl"))
    payload = event(batch_id="batch_landing", output_file_id="file-out", error_file_id="file-err")
    (tmp_path / "results.jsonl").mkdir()  # the destination became a directory while the batch ran

    with pytest.raises(OpenAIBatchLandingError) as raised:
        op.execute_complete(make_context(), event=payload)

    message = str(raised.value)
    assert raised.value.batch_id == "batch_landing"
    assert "output file file-out, error file file-err" in message
    assert "re-attaches to this batch" in message


# errors that name things ------------------------------------------------------------------------------


def test_a_wrong_key_names_the_connection_and_url_and_is_not_retried(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_emulator(api_key="sk-the-right-key-0123456789")
    use_emulator(monkeypatch, CONN, server)  # whose password is API_KEY: refused

    with pytest.raises(OpenAIBatchConfigError) as raised:
        operator().execute(make_context())

    message = str(raised.value)
    assert message.startswith(
        f"Looking for a batch that an earlier try submitted failed: connection '{CONN}'"
    )
    assert f"({server.base_url}) refused the API key (HTTP 401" in message
    assert "connection's password" in message
    assert API_KEY not in message
    assert raised.value.__cause__ is None, "no retry traceback"
    assert raised.value.__suppress_context__
    assert route_count(server, "POST /v1/files") == 0


def test_an_unreachable_server_is_named_with_what_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = "http://127.0.0.1:9/v1"  # the discard port: nothing listens there
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps({"conn_type": "openai_batch", "host": closed, "password": API_KEY, "extra": FAST_RETRIES}),
    )

    with pytest.raises(OpenAIBatchAPIError) as raised:
        operator().execute(make_context())

    message = str(raised.value)
    assert f"connection '{CONN}' ({closed}) could not be reached (ConnectError" in message
    assert "after up to 6 attempts" in message
    assert "host or base URL" in message
