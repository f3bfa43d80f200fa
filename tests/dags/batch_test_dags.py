"""DAGs run with ``dag.test()`` by ``tests/test_dag_end_to_end.py``: real operators, sensors and
triggers against a real emulator process, nothing patched.

Airflow's ``dag.test()`` parses this folder (the ``dags-folder`` bundle) and runs the tasks of
the DAG object it is called on in-process, with the triggers inline. The tests import this
module and call ``test()`` on its DAGs; both copies are identical because everything that varies
comes from the environment set up by the tests:

- connection ``batch_emu`` (``AIRFLOW_CONN_BATCH_EMU``): the session's emulator, fast retries;
- connection ``batch_emu_private``: a private emulator of the test, ``max_retries=0``;
- ``BATCH_TEST_WORK_DIR``: where inputs are written and results land.

A failed task leaves its real exception in :data:`FAILURES` (through ``on_failure_callback``,
which runs in the test process), so the tests can check its class and message.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, ObjectStoragePath, task

from airflow_provider_batch.hooks.batch import OpenAIBatchHook
from airflow_provider_batch.operators.batch import OpenAIBatchOperator
from airflow_provider_batch.sensors.batch import OpenAIBatchSensor

CONN = "batch_emu"
PRIVATE_CONN = "batch_emu_private"
CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
WORK = Path(os.environ.get("BATCH_TEST_WORK_DIR") or tempfile.gettempdir()) / "dags"
FAST = {"conn_id": CONN, "poll_interval": 0.05, "max_poll_interval": 0.3}
"""Poll the emulator every few tenths of a second instead of every 30 s."""
E2E_IDS = ("q-3", "q-0", "q-4", "q-1", "q-2")
"""Deliberately not sorted: "input order" must mean this order, not the ids' order."""

RESULTS_ASSET = Asset(name="openai_batch_e2e_results", uri=(WORK / "e2e" / "results.jsonl").as_uri())

FAILURES: dict[tuple[str, str], BaseException] = {}
"""``(dag_id, task_id)`` -> the exception the task failed with (latest try)."""


def record_failure(context: Any) -> None:
    ti = context["ti"]
    FAILURES[(ti.dag_id, ti.task_id)] = context["exception"]


LABEL_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"label": {"type": "string", "enum": ["billing", "bug", "account"]}},
            "required": ["label"],
            "additionalProperties": False,
        },
    },
}


def chat_line(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    """One request record (``method``/``url`` are filled in by the operator for ``requests``)."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], **body},
    }


def failing_line(custom_id: str, status: int = 429) -> dict[str, Any]:
    """A request the emulator answers with ``status`` (its per-line test directive)."""
    return chat_line(custom_id, f"fail {custom_id}", emulator={"status_code": status})


def write_jsonl(path: Path, lines: list[Any]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for line in lines:
            out.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return str(path)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


# 1. The whole path: upstream requests -> deferred operator -> landed results -> downstream ------

with DAG(
    dag_id="batch_e2e", schedule=None, catchup=False, default_args={"on_failure_callback": record_failure}
) as e2e_dag:

    @task
    def make_requests() -> list[dict[str, Any]]:
        return [
            {
                "custom_id": custom_id,
                "body": {"model": MODEL, "messages": [{"role": "user", "content": f"n{i}"}]},
            }
            for i, custom_id in enumerate(E2E_IDS)
        ]

    @task
    def write_sensor_input() -> str:
        return write_jsonl(
            WORK / "e2e" / "sensor_input.jsonl", [chat_line(f"s-{i}", f"s{i}") for i in range(3)]
        )

    submit = OpenAIBatchOperator(
        task_id="submit",
        requests=make_requests(),
        endpoint=CHAT,
        deferrable=True,
        output_path=str(WORK / "e2e" / "results.jsonl"),
        outlets=[RESULTS_ASSET],
        **FAST,
    )
    submit_only = OpenAIBatchOperator(
        task_id="submit_only",
        input_path=write_sensor_input(),
        endpoint=CHAT,
        deferrable=True,
        wait_for_completion=False,
        # Still running when the sensor first looks (even on a busy machine), so the sensor really defers.
        metadata={"emulator_line_delay": "1.5"},
        **FAST,
    )
    wait = OpenAIBatchSensor(
        task_id="wait",
        batch_id=submit_only.output["batch_id"],
        conn_id=CONN,
        deferrable=True,
        poke_interval=0.05,
        max_poll_interval=0.3,
        output_path=str(WORK / "e2e" / "sensor_results.jsonl"),
    )

    @task
    def read_results(output_file_id: str, manifest: dict[str, Any]) -> dict[str, Any]:
        """What a downstream consumer does: read the landed file and fetch the raw output file."""
        rows = read_jsonl(manifest["results_uri"])
        raw = WORK / "e2e" / "raw_output.jsonl"
        OpenAIBatchHook(conn_id=CONN).download_file(output_file_id, raw)
        return {
            "custom_ids": [row["custom_id"] for row in rows],
            "ok": [row["ok"] for row in rows],
            "contents": [row["body"]["choices"][0]["message"]["content"] for row in rows],
            "raw_output_ids": sorted(line["custom_id"] for line in read_jsonl(raw)),
        }

    read_results(submit.output["output_file_id"], submit.output)
    wait >> submit  # so the sensor runs right after submit_only, while that batch still runs


# 2. The other inputs and modes: ObjectStoragePath input, input_file_id, sync waits, poke sensor ---

MODES_INPUT = WORK / "modes" / "input.jsonl"

with DAG(
    dag_id="batch_modes", schedule=None, catchup=False, default_args={"on_failure_callback": record_failure}
) as modes_dag:

    @task
    def write_modes_input() -> str:
        return write_jsonl(MODES_INPUT, [chat_line(f"m-{i}", f"m{i}") for i in (2, 0, 1)])

    @task
    def upload_input() -> str:
        return OpenAIBatchHook(conn_id=CONN).upload_file(MODES_INPUT).id

    written = write_modes_input()
    uploaded = upload_input()
    from_object_storage = OpenAIBatchOperator(
        task_id="from_object_storage",
        input_path=ObjectStoragePath(MODES_INPUT.as_uri()),
        endpoint=CHAT,
        deferrable=False,
        output_path=ObjectStoragePath((WORK / "modes" / "object_storage_results.jsonl").as_uri()),
        **FAST,
    )
    from_file_id = OpenAIBatchOperator(
        task_id="from_file_id",
        input_file_id=uploaded,
        endpoint=CHAT,
        deferrable=False,
        output_path=str(WORK / "modes" / "file_id_results.jsonl"),
        **FAST,
    )
    submit_slow = OpenAIBatchOperator(
        task_id="submit_slow",
        input_path=str(MODES_INPUT),
        endpoint=CHAT,
        conn_id=PRIVATE_CONN,
        wait_for_completion=False,
        metadata={"emulator_line_delay": "0.4"},
    )
    poke = OpenAIBatchSensor(
        task_id="poke",
        batch_id=submit_slow.output["batch_id"],
        conn_id=PRIVATE_CONN,
        deferrable=False,
        mode="poke",
        poke_interval=0.05,
        timeout=60,
    )
    # A job: six requests cut into three batches, one line failing once with a 500, so a second round
    # runs; deferred, so dag.test() resumes it from the trigger's event twice.
    OpenAIBatchOperator(
        task_id="job",
        requests=[
            chat_line(
                f"job-{i}", f"job {i}", **({"emulator": {"status_code": 500, "times": 1}} if i == 4 else {})
            )
            for i in range(6)
        ],
        endpoint=CHAT,
        deferrable=True,
        max_requests_per_batch=2,
        output_path=str(WORK / "modes" / "job_results.jsonl"),
        **FAST,
    )
    # Structured outputs landed as Parquet: a deferred job of three batches whose line 3 first replies text
    # that does not parse (invalid_output, resubmitted by round 2), then a task that reads the table.
    structured = OpenAIBatchOperator(
        task_id="structured",
        requests=[
            chat_line(
                f"s-{i}",
                f"ticket {i}",
                response_format=LABEL_FORMAT,
                **({"emulator": {"output": "invalid_json", "times": 1}} if i == 3 else {}),
            )
            for i in range(6)
        ],
        endpoint=CHAT,
        deferrable=True,
        max_requests_per_batch=2,
        output_path=str(WORK / "modes" / "structured.parquet"),
        **FAST,
    )

    @task
    def count_labels(manifest: dict[str, Any]) -> dict[str, int]:
        """What a downstream ETL task does with the table: group the parsed labels with pyarrow's engine."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(manifest["results_uri"], columns=["ok", "parsed"]).filter(
            pa.compute.field("ok")
        )
        labels = pa.table(
            {"label": [json.loads(text)["label"] for text in table.column("parsed").to_pylist()]}
        )
        counted = labels.group_by("label").aggregate([("label", "count")])
        return {row["label"]: row["label_count"] for row in counted.to_pylist()}

    count_labels(structured.output)
    # Mapped: one batch per map index, each its own submission.
    OpenAIBatchOperator.partial(task_id="mapped", endpoint=CHAT, deferrable=True, **FAST).expand(
        requests=[[chat_line(f"x{m}-{i}", f"mapped {m} {i}") for i in range(2)] for m in range(2)]
    )
    # The poke sensor runs right after the slow submit, so it finds the batch still running.
    written >> submit_slow >> poke >> [from_object_storage, uploaded]


# 3. Outcomes: one task per way a batch can end -------------------------------------------------

with DAG(
    dag_id="batch_outcomes",
    schedule=None,
    catchup=False,
    # One round: these tasks show how a batch ends; a job's later rounds are tested on their own.
    default_args={"on_failure_callback": record_failure, "retries": 0, "max_rounds": 1},
) as outcomes_dag:
    OpenAIBatchOperator(
        task_id="failed",
        requests=[chat_line("f-0", "x"), chat_line("f-1", "y")],
        endpoint=CHAT,
        deferrable=True,
        metadata={"emulator_fail_validation": "token_limit_exceeded"},
        **FAST,
    )
    OpenAIBatchOperator(
        task_id="expired",
        requests=[chat_line(f"e-{i}", f"e{i}") for i in (4, 2, 0, 3, 1)],
        endpoint=CHAT,
        deferrable=True,
        metadata={"emulator_expire_after_lines": "2"},
        output_path=str(WORK / "outcomes" / "expired.jsonl"),
        **FAST,
    )
    OpenAIBatchOperator(
        task_id="cancelled",
        requests=[chat_line(f"c-{i}", f"c{i}") for i in range(6)],
        endpoint=CHAT,
        deferrable=True,
        metadata={"emulator_line_delay": "0.6"},
        output_path=str(WORK / "outcomes" / "cancelled.jsonl"),
        **FAST,
    )
    partial_lines = [chat_line("p-0", "a"), failing_line("p-1"), chat_line("p-2", "b"), chat_line("p-3", "c")]
    OpenAIBatchOperator(
        task_id="partial_strict",
        requests=partial_lines,
        endpoint=CHAT,
        deferrable=True,
        max_failed_fraction=0.0,
        output_path=str(WORK / "outcomes" / "strict.jsonl"),
        **FAST,
    )
    OpenAIBatchOperator(
        task_id="partial_tolerant",
        requests=partial_lines,
        endpoint=CHAT,
        deferrable=True,
        max_failed_fraction=1.0,
        output_path=str(WORK / "outcomes" / "partial.jsonl"),
        **FAST,
    )
    all_failed = OpenAIBatchOperator(
        task_id="all_failed",
        requests=[failing_line("a-0"), failing_line("a-1", 500), failing_line("a-2")],
        endpoint=CHAT,
        deferrable=True,
        **FAST,
    )

    @task(trigger_rule="all_done")
    def after_all_failed(manifest: dict[str, Any]) -> str:
        """Runs although its upstream failed, and still gets the manifest."""
        return f"{manifest['batch_id']}: {manifest['request_counts']['failed']} failed"

    after_all_failed(all_failed.output)
    # Invalid input goes to the private emulator, whose statistics must then show no upload at all.
    OpenAIBatchOperator(
        task_id="invalid_requests",
        requests=[
            chat_line("i-0", "ok"),
            {**chat_line("i-1", "wrong endpoint"), "url": "/v1/embeddings"},
            chat_line("i-2", "ok"),
            {"custom_id": "i-3", "body": {"messages": [{"role": "user", "content": "no model"}]}},
        ],
        endpoint=CHAT,
        conn_id=PRIVATE_CONN,
    )

    @task
    def write_invalid_input() -> str:
        return write_jsonl(
            WORK / "outcomes" / "invalid.jsonl",
            [
                chat_line("j-0", "ok"),
                chat_line("j-1", "ok"),
                "{this is not json",
                chat_line("j-3", "ok"),
                chat_line("j-0", "again"),
            ],
        )

    OpenAIBatchOperator(
        task_id="invalid_input_path",
        input_path=write_invalid_input(),
        endpoint=CHAT,
        conn_id=PRIVATE_CONN,
    )


# 4. Retry safety: the first try fails after its batch exists; the retry must re-attach -----------

BLOCKED_OUTPUT = WORK / "retry" / "results.jsonl"


def unblock_output(context: Any) -> None:
    """``on_retry_callback``: the obstacle that failed the first try is gone for the second."""
    shutil.rmtree(BLOCKED_OUTPUT, ignore_errors=True)


with DAG(
    dag_id="batch_retry",
    schedule=None,
    catchup=False,
    default_args={"on_failure_callback": record_failure, "retries": 1, "retry_delay": timedelta(0)},
) as retry_dag:
    # The create's response is lost (emulator fault ``drop_after``, no client retries): the try
    # fails without knowing the batch exists. Found again through the metadata idempotency key.
    lost_create = OpenAIBatchOperator(
        task_id="lost_create",
        requests=[chat_line(f"l-{i}", f"l{i}") for i in range(3)],
        endpoint=CHAT,
        conn_id=PRIVATE_CONN,
        deferrable=True,
        poll_interval=0.05,
        max_poll_interval=0.3,
    )

    @task
    def block_output() -> None:
        """Make the landing of the first try fail: a directory where the results file goes."""
        BLOCKED_OUTPUT.mkdir(parents=True, exist_ok=True)

    # The batch completes, then landing the results fails; found again through the state store.
    landing_failed = OpenAIBatchOperator(
        task_id="landing_failed",
        requests=[chat_line(f"g-{i}", f"g{i}") for i in range(3)],
        endpoint=CHAT,
        conn_id=PRIVATE_CONN,
        deferrable=True,
        poll_interval=0.05,
        max_poll_interval=0.3,
        output_path=str(BLOCKED_OUTPUT),
        on_retry_callback=unblock_output,
    )
    lost_create >> block_output() >> landing_failed


# 5. Sensor outcomes: soft_fail in both modes, the trigger's timeout --------------------------------

with DAG(
    dag_id="batch_sensor_outcomes",
    schedule=None,
    catchup=False,
    default_args={"on_failure_callback": record_failure, "retries": 0},
) as sensor_outcomes_dag:
    failing = OpenAIBatchOperator(
        task_id="submit_failing",
        requests=[chat_line("sf-0", "x")],
        endpoint=CHAT,
        conn_id=CONN,
        wait_for_completion=False,
        # Still validating at the first poke, so the deferred sensor really defers first.
        metadata={"emulator_fail_validation": "token_limit_exceeded", "emulator_validating_delay": "0.5"},
    )
    slow = OpenAIBatchOperator(
        task_id="submit_slow",
        requests=[chat_line(f"ss-{i}", "x") for i in range(4)],
        endpoint=CHAT,
        conn_id=CONN,
        wait_for_completion=False,
        metadata={"emulator_line_delay": "3.0"},
    )
    sensor_args = {"conn_id": CONN, "poke_interval": 0.05, "max_poll_interval": 0.2}
    soft_deferred = OpenAIBatchSensor(
        task_id="soft_fail_deferred",
        batch_id=failing.output["batch_id"],
        deferrable=True,
        soft_fail=True,
        **sensor_args,
    )
    soft_poke = OpenAIBatchSensor(
        task_id="soft_fail_poke",
        batch_id=failing.output["batch_id"],
        deferrable=False,
        mode="poke",
        soft_fail=True,
        **sensor_args,
    )
    hard_poke = OpenAIBatchSensor(
        task_id="hard_fail_poke",
        batch_id=failing.output["batch_id"],
        deferrable=False,
        mode="poke",
        **sensor_args,
    )
    timeout_deferred = OpenAIBatchSensor(
        task_id="timeout_deferred",
        batch_id=slow.output["batch_id"],
        deferrable=True,
        timeout=0.5,
        **sensor_args,
    )
    timeout_soft = OpenAIBatchSensor(
        task_id="timeout_soft",
        batch_id=slow.output["batch_id"],
        deferrable=True,
        timeout=0.5,
        soft_fail=True,
        **sensor_args,
    )


# 6. A reschedule-mode sensor counts failed pokes across reschedules -----------------------------

with DAG(
    dag_id="batch_sensor_reschedule",
    schedule=None,
    catchup=False,
    default_args={"on_failure_callback": record_failure, "retries": 0},
) as sensor_reschedule_dag:
    # Every poke is a new run of the task; the test makes every status call of the private
    # emulator fail, so only a count carried from poke to poke can end the wait before timeout.
    OpenAIBatchSensor(
        task_id="reschedule_poke",
        batch_id="batch_watched_elsewhere",
        conn_id=PRIVATE_CONN,
        mode="reschedule",
        poke_interval=0.1,
        timeout=60,
        max_consecutive_failures=3,
    )
