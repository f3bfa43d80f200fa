"""The provider inside Airflow: DAGs from ``tests/dags`` run with ``dag.test()`` against real
emulator processes, with a real metadata database (``airflow db migrate`` in a temporary home).

``dag.test()`` runs each task in this process through Airflow's task runner and in-process
Execution API, and runs triggers inline; XComs, task states, the task state store and asset
events land in the database, where these tests read them. What ``dag.test()`` cannot show (the
defer call itself, defer kwargs, ``on_kill``) is covered in ``tests/operators`` and
``tests/sensors``. Each DAG run costs a few seconds (the first one ~10 s more, while Airflow's
in-process API starts), so each run is checked for many things at once.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from airflow import __version__ as airflow_version
from airflow.providers.common.compat.sdk import AirflowSensorTimeout
from packaging.version import Version

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.exceptions import (
    OpenAIBatchCancelled,
    OpenAIBatchExpired,
    OpenAIBatchFailed,
    OpenAIBatchInvalidInput,
    OpenAIBatchPartialFailure,
    OpenAIBatchPollingError,
)
from tests.batch_testing import (
    MANIFEST_KEYS,
    asset_events_of,
    batches_of_task,
    jsonl,
    route_count,
    state_store_of,
    task_states,
    use_emulator,
    xcoms_of,
)

AIRFLOW_3_3 = Version(airflow_version) >= Version("3.3")
needs_airflow_3_3_dag_test = pytest.mark.skipif(
    not AIRFLOW_3_3,
    reason=(
        "checks what dag.test() exposes on Airflow 3.3 (failure callbacks' context['exception'], inline"
        " trigger log lines, its task timings); the same operator, sensor and trigger paths run on 3.1 in"
        " tests/operators, tests/sensors and tests/triggers"
    ),
)

LANDED_KEYS = {"results_uri", "results_summary"}
COST_KEYS = {"cost_estimate", "cost"}
"""The operator's own keys (it counts the tokens before upload); a sensor only waits."""
LINK_XCOM = "_link_OpenAIBatchLink"
TRIGGER_LOGGER = "airflow_provider_batch.triggers.batch.OpenAIBatchTrigger"
HAS_TASK_STATE_STORE = importlib.util.find_spec("airflow.models.task_state_store") is not None


@pytest.fixture
def dags(
    airflow_home: Path, emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The test DAGs, with connection ``batch_emu`` on the session's emulator."""
    use_emulator(monkeypatch, "batch_emu", emulator)
    from tests.dags import batch_test_dags

    batch_test_dags.FAILURES.clear()
    yield batch_test_dags
    batch_test_dags.FAILURES.clear()


@pytest.fixture
def private(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch
) -> EmulatorProcess:
    """A private emulator behind connection ``batch_emu_private``, with no client-side retries."""
    server = make_emulator()
    use_emulator(monkeypatch, "batch_emu_private", server, max_retries=0)
    return server


def states(run: object) -> dict[str, str | None]:
    return {task: state for task, (state, _) in task_states(run.run_id).items()}  # type: ignore[attr-defined]


# 1. the whole path ------------------------------------------------------------------------------------


@needs_airflow_3_3_dag_test
def test_deferred_operator_sensor_and_downstream_consumer(
    dags: ModuleType, emulator: EmulatorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    run = dags.e2e_dag.test()
    log = capsys.readouterr().out

    assert states(run) == dict.fromkeys(
        ["make_requests", "write_sensor_input", "submit", "submit_only", "wait", "read_results"], "success"
    )
    assert str(run.state) == "success"

    # The operator: manifest, the separate XCom keys, the link stored at submit and after resume.
    submitted = xcoms_of(run.run_id, "submit")
    manifest = submitted["return_value"]
    batch_id = manifest["batch_id"]
    assert set(manifest) == MANIFEST_KEYS | LANDED_KEYS | COST_KEYS
    assert manifest["cost"]["total"] > 0
    assert manifest["status"] == "completed"
    assert manifest["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    assert manifest["endpoint"] == "/v1/chat/completions"
    assert manifest["model"] == "gpt-4o-mini"
    assert manifest["usage"]["total_tokens"] > 0
    assert manifest["results_summary"]["succeeded"] == 5
    batch = emulator.client().batches.retrieve(batch_id)
    assert batch.status == "completed"
    assert submitted["batch_id"] == batch_id
    assert submitted["output_file_id"] == batch.output_file_id == manifest["output_file_id"]
    assert submitted["error_file_id"] is None
    assert submitted["batch_url"] == f"{emulator.base_url}/batches/{batch_id}"
    assert submitted[LINK_XCOM] == submitted["batch_url"], "the link must survive the resumed run"
    assert batch.metadata["airflow_dag_id"] == "batch_e2e"
    assert batch.metadata["airflow_task_id"] == "submit"
    assert batch.metadata["airflow_run_id"] == run.run_id

    # Results landed joined in input order (the emulator writes its output shuffled).
    rows = list(jsonl(manifest["results_uri"]))
    assert [row["custom_id"] for row in rows] == list(dags.E2E_IDS)
    assert [row["line"] for row in rows] == [1, 2, 3, 4, 5]
    assert all(row["ok"] for row in rows)

    # The downstream task got output_file_id through XCom and read both files.
    consumer = xcoms_of(run.run_id, "read_results")["return_value"]
    assert consumer["custom_ids"] == list(dags.E2E_IDS)
    assert consumer["ok"] == [True] * 5
    assert consumer["contents"] == [f"echo: n{i}" for i in range(5)]
    assert consumer["raw_output_ids"] == sorted(dags.E2E_IDS)

    # The outlet's asset event carries the ids.
    assert asset_events_of("batch_e2e", run.run_id) == [
        (dags.RESULTS_ASSET.uri, "submit", {"batch_id": batch_id, "output_file_id": batch.output_file_id})
    ]

    # wait_for_completion=False returned at once; the deferrable sensor waited and landed results.
    only = xcoms_of(run.run_id, "submit_only")
    assert set(only["return_value"]) == MANIFEST_KEYS | COST_KEYS
    assert only["return_value"]["status"] not in {"completed", "failed", "expired", "cancelled"}
    sensed = xcoms_of(run.run_id, "wait")
    assert sensed["return_value"]["batch_id"] == only["batch_id"]
    assert sensed["return_value"]["status"] == "completed"
    assert set(sensed["return_value"]) == MANIFEST_KEYS | LANDED_KEYS
    assert sensed["output_file_id"] == sensed["return_value"]["output_file_id"] is not None
    assert sensed["batch_url"] == sensed[LINK_XCOM] == f"{emulator.base_url}/batches/{only['batch_id']}"
    assert [row["custom_id"] for row in jsonl(sensed["return_value"]["results_uri"])] == ["s-0", "s-1", "s-2"]
    assert len(batches_of_task(emulator, "batch_e2e", "submit_only")) == 1

    # Both waits went through the trigger (dag.test runs it inline and logs to stdout), whose
    # progress lines name the batch.
    triggered = "\n".join(line for line in log.splitlines() if TRIGGER_LOGGER in line)
    assert f"Batch {batch_id} completed: 5 of 5 lines done (100%), 0 failed" in triggered
    assert f"Batch {only['batch_id']} completed" in triggered
    # No silence while waiting: the deferral, the trigger's start, and each look with the next.
    assert f"Deferring: batch {batch_id} is watched in the triggerer" in log
    assert f"Batch page: {emulator.base_url}/batches/{batch_id}" in log
    assert f"Watching batch {batch_id} until " in triggered
    assert "next look in" in triggered
    assert "deadline in" in triggered


@needs_airflow_3_3_dag_test
def test_object_storage_input_file_id_sync_wait_and_poke_sensor(
    dags: ModuleType, emulator: EmulatorProcess, private: EmulatorProcess
) -> None:
    run = dags.modes_dag.test()

    assert set(states(run).values()) == {"success"}, states(run)
    expected_order = ["m-2", "m-0", "m-1"]

    # input_path as a file:// ObjectStoragePath, output_path as one too, waiting on the worker.
    from_storage = xcoms_of(run.run_id, "from_object_storage")["return_value"]
    assert from_storage["status"] == "completed"
    assert from_storage["results_uri"].startswith("file://")
    assert [
        row["custom_id"] for row in jsonl(Path(dags.WORK / "modes" / "object_storage_results.jsonl"))
    ] == (expected_order)

    # input_file_id from an upstream task: the batch runs on exactly that file, nothing re-uploaded.
    uploaded = xcoms_of(run.run_id, "upload_input")["return_value"]
    from_id = xcoms_of(run.run_id, "from_file_id")["return_value"]
    assert emulator.client().batches.retrieve(from_id["batch_id"]).input_file_id == uploaded
    assert [row["custom_id"] for row in jsonl(from_id["results_uri"])] == expected_order

    # A job deferred twice (round 1: three batches, one trigger; round 2: the line that failed once).
    job = xcoms_of(run.run_id, "job")["return_value"]
    assert [len(r["batches"]) for r in job["rounds"]] == [3, 1]
    assert job["request_counts"] == {"total": 6, "succeeded": 6, "failed": 0, "pending": 0}
    rows = list(jsonl(job["results_uri"]))
    assert [(row["custom_id"], row["round"]) for row in rows] == [
        (f"job-{i}", 2 if i == 4 else 1) for i in range(6)
    ]

    # Structured outputs as Parquet: the invalid reply resubmitted once, then the table read downstream.
    structured = xcoms_of(run.run_id, "structured")["return_value"]
    assert structured["request_counts"] == {"total": 6, "succeeded": 6, "failed": 0, "pending": 0}
    assert structured["rounds"][0]["outcome"]["retry_reasons"] == {"invalid_output": 1}
    labels = xcoms_of(run.run_id, "count_labels")["return_value"]
    assert sum(labels.values()) == 6
    assert set(labels) <= {"billing", "bug", "account"}

    # Mapped over two request lists: two batches, each tagged with its map index, each joined.
    mapped = [xcoms_of(run.run_id, "mapped", index)["return_value"] for index in (0, 1)]
    for index, manifest in enumerate(mapped):
        batch = emulator.client().batches.retrieve(manifest["batch_id"])
        assert batch.metadata["airflow_map_index"] == str(index)
        assert manifest["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    assert mapped[0]["batch_id"] != mapped[1]["batch_id"]
    assert len(batches_of_task(emulator, "batch_modes", "mapped")) == 2

    # The poke-mode sensor really poked (several status calls while the batch ran) and returned
    # the manifest through PokeReturnValue.
    slow_id = xcoms_of(run.run_id, "submit_slow")["batch_id"]
    poked = xcoms_of(run.run_id, "poke")["return_value"]
    assert poked["batch_id"] == slow_id
    assert poked["status"] == "completed"
    assert poked["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert route_count(private, "GET /v1/batches/{id}") >= 3
    assert task_states(run.run_id)["poke"] == ("success", 1)


# 2. outcomes ------------------------------------------------------------------------------------------


def cancel_when_running(server: EmulatorProcess, dag_id: str, task_id: str, stop: threading.Event) -> None:
    """Cancel the task's batch with the plain SDK as soon as it is in progress (from outside
    Airflow, as a person would)."""
    client = server.client()
    while not stop.is_set():
        for batch in batches_of_task(server, dag_id, task_id):
            if batch.status == "in_progress" and batch.request_counts and batch.request_counts.completed >= 1:
                client.batches.cancel(batch.id)
                return
        time.sleep(0.05)


@needs_airflow_3_3_dag_test
def test_outcomes_raise_their_errors_and_keep_partial_results(
    dags: ModuleType, emulator: EmulatorProcess, private: EmulatorProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = threading.Event()
    canceller = threading.Thread(
        target=cancel_when_running, args=(emulator, "batch_outcomes", "cancelled", stop), daemon=True
    )
    canceller.start()
    try:
        run = dags.outcomes_dag.test()
    finally:
        stop.set()
        canceller.join(10)

    # Tasks that failed before submitting have no batch link, and say so without an error line.
    assert "XCom not found" not in capsys.readouterr().out
    assert states(run) == {
        "failed": "failed",
        "expired": "failed",
        "cancelled": "failed",
        "partial_strict": "failed",
        "partial_tolerant": "success",
        "all_failed": "failed",
        "after_all_failed": "success",
        "invalid_requests": "failed",
        "write_invalid_input": "success",
        "invalid_input_path": "failed",
    }
    failures = {task: exc for (dag_id, task), exc in dags.FAILURES.items() if dag_id == "batch_outcomes"}

    failed = failures["failed"]
    assert type(failed) is OpenAIBatchFailed
    assert "token_limit_exceeded" in str(failed)
    assert "Enqueued token limit reached" in str(failed)
    assert failed.errors[0]["code"] == "token_limit_exceeded"

    expired = failures["expired"]
    assert type(expired) is OpenAIBatchExpired
    expired_batch = emulator.client().batches.retrieve(expired.batch_id)
    assert expired_batch.status == "expired"
    assert expired.output_file_id == expired_batch.output_file_id is not None
    rows = list(jsonl(dags.WORK / "outcomes" / "expired.jsonl"))
    assert [row["custom_id"] for row in rows] == ["e-4", "e-2", "e-0", "e-3", "e-1"]
    assert sum(row["ok"] for row in rows) == 2
    assert sorted(row["error_code"] for row in rows if not row["ok"]) == ["batch_expired"] * 3

    cancelled = failures["cancelled"]
    assert type(cancelled) is OpenAIBatchCancelled
    assert emulator.client().batches.retrieve(cancelled.batch_id).status == "cancelled"
    rows = list(jsonl(dags.WORK / "outcomes" / "cancelled.jsonl"))
    assert [row["custom_id"] for row in rows] == [f"c-{i}" for i in range(6)]
    assert any(row["ok"] for row in rows)
    assert any(row["error_code"] == "batch_cancelled" for row in rows)

    strict = failures["partial_strict"]
    assert type(strict) is OpenAIBatchPartialFailure
    assert "1 of 4" in str(strict)
    # What failed, how, and where every line's outcome is: from the landed results.
    assert (strict.errors_by_code, strict.failed_ids) == ({"rate_limit_exceeded": 1}, ["p-1"])
    assert strict.results_uri == str(dags.WORK / "outcomes" / "strict.jsonl")
    assert "rate_limit_exceeded (1)" in str(strict)
    assert "p-1" in str(strict)
    assert strict.results_uri in str(strict)
    # The manifest is pushed although the task failed.
    assert xcoms_of(run.run_id, "partial_strict")["return_value"]["results_uri"] == strict.results_uri
    tolerant = xcoms_of(run.run_id, "partial_tolerant")["return_value"]
    assert tolerant["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    assert tolerant["error_file_id"] is not None
    failed_rows = [row for row in jsonl(tolerant["results_uri"]) if not row["ok"]]
    assert [(row["custom_id"], row["status_code"]) for row in failed_rows] == [("p-1", 429)]

    all_failed = failures["all_failed"]
    assert type(all_failed) is OpenAIBatchPartialFailure
    assert "3 of 3" in str(all_failed)
    # Without output_path, the error file alone is read for the codes and ids.
    assert all_failed.errors_by_code == {"rate_limit_exceeded": 2, "server_error": 1}
    assert sorted(all_failed.failed_ids) == ["a-0", "a-1", "a-2"]
    assert all_failed.results_uri is None
    assert all_failed.error_file_id in str(all_failed)
    after = xcoms_of(run.run_id, "after_all_failed")["return_value"]
    assert after == f"{all_failed.batch_id}: 3 failed"

    # Invalid input: the error names the line, and nothing reached the (private) emulator.
    # Every bad record is named, by line and custom_id, in every input mode.
    invalid = failures["invalid_requests"]
    assert isinstance(invalid, OpenAIBatchInvalidInput)
    assert [(error.line, error.custom_id, error.field) for error in invalid.errors] == [
        (2, "i-1", "url"),
        (4, "i-3", "body.model"),
    ]
    assert "line 2 (custom_id 'i-1')" in str(invalid)
    assert "/v1/embeddings" in str(invalid)
    invalid_path = failures["invalid_input_path"]
    assert isinstance(invalid_path, OpenAIBatchInvalidInput)
    assert [(error.line, error.custom_id) for error in invalid_path.errors] == [(3, None), (5, "j-0")]
    # (A look-up of an earlier try's batch may precede validation; nothing may be written.)
    calls = private.stats()["requests"]
    assert route_count(private, "POST /v1/files") == 0, calls
    assert not [route for route in calls if not route.startswith("GET ")], calls


# 3. retries -----------------------------------------------------------------------------


def test_retry_reattaches_instead_of_submitting_again(dags: ModuleType, private: EmulatorProcess) -> None:
    # The first create is handled but its response is lost; no client retries on this connection.
    private.configure(
        faults={"rate": 1.0, "kinds": ["drop_after"], "routes": "^POST /v1/batches$", "count": 1}
    )

    run = dags.retry_dag.test()

    assert private.stats()["faults"] == {"drop_after POST /v1/batches": 1}
    tries = task_states(run.run_id)
    assert tries["lost_create"] == ("success", 2)
    assert tries["landing_failed"] == ("success", 2)

    # Found through the idempotency key in the batch metadata: one batch, and the task used it.
    [lost] = batches_of_task(private, "batch_retry", "lost_create")
    assert lost.status == "completed"
    assert xcoms_of(run.run_id, "lost_create")["return_value"]["batch_id"] == lost.id

    # Found through the task state store (Airflow 3.3+; the metadata key before): one batch,
    # results landed on try 2.
    [landed] = batches_of_task(private, "batch_retry", "landing_failed")
    if HAS_TASK_STATE_STORE:
        assert state_store_of("batch_retry", run.run_id, "landing_failed")["openai_batch_id"] == landed.id
    assert xcoms_of(run.run_id, "landing_failed")["return_value"]["batch_id"] == landed.id
    assert [row["custom_id"] for row in jsonl(dags.BLOCKED_OUTPUT)] == ["g-0", "g-1", "g-2"]
    assert route_count(private, "POST /v1/batches") == 2  # one create per task: no second submission


# 4. sensor outcomes -----------------------------------------------------------------------------------


@needs_airflow_3_3_dag_test
def test_sensor_soft_fail_in_both_modes_and_trigger_timeout(
    dags: ModuleType, emulator: EmulatorProcess
) -> None:
    run = dags.sensor_outcomes_dag.test()

    assert states(run) == {
        "submit_failing": "success",
        "submit_slow": "success",
        "soft_fail_deferred": "skipped",
        "soft_fail_poke": "skipped",
        "hard_fail_poke": "failed",
        "timeout_deferred": "failed",
        "timeout_soft": "skipped",
    }
    failures = {
        task: exc for (dag_id, task), exc in dags.FAILURES.items() if dag_id == "batch_sensor_outcomes"
    }
    assert set(failures) == {"hard_fail_poke", "timeout_deferred"}
    assert type(failures["hard_fail_poke"]) is OpenAIBatchFailed
    assert "token_limit_exceeded" in str(failures["hard_fail_poke"])
    assert isinstance(failures["timeout_deferred"], AirflowSensorTimeout)

    # A sensor never cancels what it watches, even when it gives up.
    slow_id = xcoms_of(run.run_id, "submit_slow")["batch_id"]
    assert emulator.client().batches.retrieve(slow_id).status not in {"cancelling", "cancelled"}
    failing_id = xcoms_of(run.run_id, "submit_failing")["batch_id"]
    assert emulator.client().batches.retrieve(failing_id).status == "failed"


@pytest.mark.skipif(not HAS_TASK_STATE_STORE, reason="the count is carried in the task state store (3.3+)")
def test_reschedule_sensor_counts_failed_pokes_across_reschedules(
    dags: ModuleType, private: EmulatorProcess
) -> None:
    # Every status call fails (no client-side retries on this connection): each poke is one
    # failed observation, made by a new run of the task.
    private.configure(faults={"rate": 1.0, "kinds": "503", "routes": r"^GET /v1/batches/\{id\}$"})
    started = time.monotonic()

    run = dags.sensor_reschedule_dag.test()

    assert states(run) == {"reschedule_poke": "failed"}
    failure = dags.FAILURES[("batch_sensor_reschedule", "reschedule_poke")]
    assert type(failure) is OpenAIBatchPollingError, failure
    assert "3 times in a row" in str(failure)
    assert route_count(private, "GET /v1/batches/{id}") == 3, "one observation per poke, three pokes"
    assert time.monotonic() - started < 30, "ended by the failure budget, long before the 60 s timeout"
    assert "openai_batch_sensor_wait" not in state_store_of(
        "batch_sensor_reschedule", run.run_id, "reschedule_poke"
    )
