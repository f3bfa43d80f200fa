"""Names and numbers shared by the end-to-end DAGs (parsed by Airflow) and the tests (which
import this file as ``tests.e2e.dags.e2e_common``). Plain Python: no framework import here."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

CONN_ID = "openai_e2e"
PARALLELISM = 4
"""``[core] parallelism`` of the stack: the LocalExecutor runs at most this many task processes."""
POLL_INTERVAL = 2.5
MAX_POLL_INTERVAL = 4.0
"""Short polls suit the emulator. Every batch below runs well over 5 s while deferred, so no
trigger fires within seconds of its deferral (apache/airflow#67287)."""
MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"

SUCCESS_DAG = "e2e_success"
MARK_FAILED_DAG = "e2e_mark_failed"
WORKER_KILLED_DAG = "e2e_worker_killed"
TRIGGERER_RESTART_DAG = "e2e_triggerer_restart"
FAN_OUT_DAG = "e2e_fan_out"
BUDGET_SET_DAG = "e2e_budget_set"
BUDGET_UNSET_DAG = "e2e_budget_unset"
ALL_DAGS = (
    SUCCESS_DAG,
    MARK_FAILED_DAG,
    WORKER_KILLED_DAG,
    TRIGGERER_RESTART_DAG,
    FAN_OUT_DAG,
    BUDGET_SET_DAG,
    BUDGET_UNSET_DAG,
)

BATCH_TASK = "batch"
PROBE_TASK = "probe"
KILLED_AFTER_CREATE = "killed_after_create"
KILLED_BEFORE_DEFER = "killed_before_defer"
KILLED_MID_SUBMISSION = "killed_mid_submission"
JOB_SHARDS = 5
SHARD_REQUESTS = 2
"""The job of ``killed_mid_submission``: JOB_SHARDS shards of SHARD_REQUESTS lines each."""
CREATES_BEFORE_KILL = 3
"""``killed_mid_submission`` dies once this many of its shards' batches are created."""
SURVIVES_RESTART = "survives_restart"
DEADLINE_HOLDS = "deadline_holds"
DEADLINE_SECONDS = 55
"""``timeout`` of the deadline task, counted from the batch's creation."""
FAN_OUT_WIDTH = 20
PROBE_HOLD_SECONDS = 3.0

BUDGET_CONN_ID = "openai_e2e_budget"
"""The emulator again, with ``max_enqueued_tokens`` in its extra: the budget every run of
BUDGET_SET_DAG shares."""
BUDGET_MODELS = {BUDGET_SET_DAG: "gpt-4.1-mini", BUDGET_UNSET_DAG: "gpt-4.1-nano"}
"""One model per budget scenario: the emulator limits each on its own, so both run at once."""
BUDGET_RUNS = 10
BUDGET_SHARDS = 3
"""Shards of each budget run's job, of SHARD_REQUESTS lines; the limit holds two at once."""

SUCCESS_ASSET_URI = "file:///e2e/success-batch"
RESTART_ASSET_URI = "file:///e2e/restart-batch"


def work_dir() -> Path:
    """Shared scratch space of the stack's processes and the tests (``E2E_WORK_DIR``)."""
    return Path(os.environ.get("E2E_WORK_DIR", "/tmp/airflow-provider-batch-e2e"))


def kill_requests_dir() -> Path:
    return work_dir() / "kill-requests"


def barrier_dir(run_id: str) -> Path:
    return work_dir() / "barrier" / run_id.replace("/", "_")


def chat_requests(prefix: str, count: int) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}-{i}",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"{prefix} request {i}"}]},
        }
        for i in range(count)
    ]


def budget_requests(model: str, run_tag: str) -> list[dict[str, Any]]:
    """A budget run's requests: ids unique to the run, texts the same in every run (so every shard of
    every run has nearly the same input tokens)."""
    return [
        {
            "custom_id": f"{run_tag}-{i}",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"Budget request {i}: one line."}],
            },
        }
        for i in range(BUDGET_SHARDS * SHARD_REQUESTS)
    ]


def slow(seconds_per_line: float) -> dict[str, str]:
    """Batch metadata that makes the emulator spend this long on each line."""
    return {"emulator_line_delay": str(seconds_per_line)}


def request_kill(dag_id: str, run_id: str, task_id: str, batch_id: str, where: str, **details: Any) -> None:
    """Ask the test harness to SIGKILL this very process, then wait to die. ``details`` (JSON) go
    into the kill's record, for the test to read.

    Written atomically; the harness's watcher finds the file, checks that the PID belongs to the
    stack it started, and kills it. Returning from here means nobody killed us: fail loudly.
    """
    directory = kill_requests_dir()
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "pid": os.getpid(),
        "dag_id": dag_id,
        "run_id": run_id,
        "task_id": task_id,
        "batch_id": batch_id,
        "where": where,
        "at": time.time(),
        **details,
    }
    name = f"{task_id}-{os.getpid()}"
    (directory / f"{name}.tmp").write_text(json.dumps(record))
    (directory / f"{name}.tmp").rename(directory / f"{name}.json")
    time.sleep(120)
    raise RuntimeError(f"{task_id}: asked to be killed {where}, but still alive after 120 s")
