"""The provider on a real Airflow: scheduler (LocalExecutor), triggerer, dag-processor and API
server as separate processes, on SQLite and on PostgreSQL, against the emulator.

Each test drives the system from outside (REST calls, signals, the emulator's HTTP API) and checks
what a user would see, on both backends. The stack and the emulator are shared per backend; the
runs of the success, mark-failed and worker-killed scenarios are started together
(``concurrent_runs``), the triggerer-restart and fault scenarios run alone because they disturb
every deferred task or every API call.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import openai
import pytest

from airflow_provider_batch.hooks.batch import IDEMPOTENCY_KEY
from tests.batch_testing import MANIFEST_KEYS
from tests.e2e.conftest import budget_token_limit
from tests.e2e.dags.e2e_common import (
    BATCH_TASK,
    BUDGET_MODELS,
    BUDGET_RUNS,
    BUDGET_SET_DAG,
    BUDGET_SHARDS,
    BUDGET_UNSET_DAG,
    CREATES_BEFORE_KILL,
    DEADLINE_HOLDS,
    DEADLINE_SECONDS,
    FAN_OUT_DAG,
    FAN_OUT_WIDTH,
    JOB_SHARDS,
    KILLED_AFTER_CREATE,
    KILLED_BEFORE_DEFER,
    KILLED_MID_SUBMISSION,
    MARK_FAILED_DAG,
    PARALLELISM,
    PROBE_TASK,
    RESTART_ASSET_URI,
    SHARD_REQUESTS,
    SUCCESS_ASSET_URI,
    SUCCESS_DAG,
    SURVIVES_RESTART,
    TRIGGERER_RESTART_DAG,
    WORKER_KILLED_DAG,
)
from tests.e2e.support import E2E, FINISHED_TI_STATES, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

TRIGGER_CLASSPATH = "airflow_provider_batch.triggers.batch.OpenAIBatchTrigger"
TRIGGERER_DOWNTIME = 12.0
"""Seconds the triggerer stays dead: longer than the health-check threshold (10 s), so the new
triggerer takes the triggers over as soon as it is up."""


def test_deferred_task_holds_no_executor_slot(e2e: E2E, concurrent_runs: dict[str, str]) -> None:
    """1. While its batch runs, the task is ``deferred`` (REST) and holds no executor slot.

    Criterion: ``[core] parallelism`` is PARALLELISM (4), so the LocalExecutor runs at most four
    task processes. The DAG has the batch task (highest priority, queued first) and four probe
    tasks that each hold a slot until all four run at once. We observe, through REST, the moment
    when all four probes are ``running`` while the batch task is ``deferred`` (read before and
    after the probes): four of four slots busy with probes, so the deferred task holds none. If a
    deferred task kept its slot, the fourth probe could never start and the probes would fail.
    """
    run_id = concurrent_runs[SUCCESS_DAG]
    observed = None
    deferred_seen = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        before = e2e.ti(SUCCESS_DAG, run_id, BATCH_TASK)["state"]
        probes = e2e.tis(SUCCESS_DAG, run_id, PROBE_TASK)
        after = e2e.ti(SUCCESS_DAG, run_id, BATCH_TASK)["state"]
        if before == "deferred":
            if not deferred_seen:
                deferred_seen = True
                rows = e2e.sample_triggers(SUCCESS_DAG, run_id)
                assert [row["classpath"] for row in rows.values()] == [TRIGGER_CLASSPATH]
                batch_id = e2e.xcom(SUCCESS_DAG, run_id, BATCH_TASK, key="batch_id")
                assert e2e.batch(batch_id).status in ("validating", "in_progress"), "deferred, batch running"
            running = [p for p in probes if p["state"] == "running"]
            if after == "deferred" and len(running) == PARALLELISM:
                everywhere = e2e.stack.api("GET", "dags/~/dagRuns/~/taskInstances?state=running&limit=100")
                observed = {"probes_running": len(running), "all_running": everywhere["total_entries"]}
                break
        if before in FINISHED_TI_STATES:
            break
        time.sleep(0.2)
    assert deferred_seen, "the batch task was never seen deferred"
    assert observed, "never saw all probes running while the batch task was deferred"
    # The executor's slots were all taken by the probes: no other task process, deferred or not.
    assert observed["all_running"] == PARALLELISM, observed
    print(f"[{e2e.backend}] batch task deferred while {observed} task processes ran")
    assert e2e.wait_run_finished(SUCCESS_DAG, run_id, 180) == "success"
    probe_states = {p["map_index"]: p["state"] for p in e2e.tis(SUCCESS_DAG, run_id, PROBE_TASK)}
    assert probe_states == dict.fromkeys(range(PARALLELISM), "success")


def test_success_manifest_and_asset_event(e2e: E2E, concurrent_runs: dict[str, str]) -> None:
    """2. Success: the XCom manifest and the asset event's extra, read through REST, name the one
    batch the emulator holds for the task, with its output file and counts."""
    run_id = concurrent_runs[SUCCESS_DAG]
    assert e2e.wait_run_finished(SUCCESS_DAG, run_id, 300) == "success"
    ti = e2e.ti(SUCCESS_DAG, run_id, BATCH_TASK)
    assert ti["state"] == "success"

    [batch] = e2e.batches_of(SUCCESS_DAG, run_id, BATCH_TASK)  # retries=1, yet exactly one batch
    assert batch.status == "completed"
    assert batch.output_file_id

    manifest = e2e.xcom(SUCCESS_DAG, run_id, BATCH_TASK)
    assert set(manifest) >= MANIFEST_KEYS, manifest
    assert manifest["batch_id"] == batch.id
    assert manifest["status"] == "completed"
    assert manifest["output_file_id"] == batch.output_file_id
    assert manifest["error_file_id"] is None
    assert manifest["request_counts"] == {"total": 8, "completed": 8, "failed": 0}
    assert manifest["endpoint"] == "/v1/chat/completions"
    assert manifest["model"]
    assert manifest["usage"]["total_tokens"] > 0
    assert e2e.xcom(SUCCESS_DAG, run_id, BATCH_TASK, key="batch_id") == batch.id
    assert e2e.xcom(SUCCESS_DAG, run_id, BATCH_TASK, key="output_file_id") == batch.output_file_id

    [event] = e2e.asset_events(SUCCESS_DAG, run_id, BATCH_TASK)
    assert event["uri"] == SUCCESS_ASSET_URI
    assert event["extra"]["batch_id"] == batch.id
    assert event["extra"]["output_file_id"] == batch.output_file_id

    content = e2e.emulator.client().files.content(batch.output_file_id).text
    assert len(content.splitlines()) == 8


def test_mark_failed_cancels_batch(e2e: E2E, concurrent_runs: dict[str, str]) -> None:
    """3. Marking the deferred task failed over REST cancels its batch on the emulator within
    30 s: Airflow 3.3 calls the trigger's ``on_kill``."""
    run_id = concurrent_runs[MARK_FAILED_DAG]
    e2e.wait_ti_state(MARK_FAILED_DAG, run_id, BATCH_TASK, {"deferred"}, timeout=240)
    batch_id = e2e.xcom(MARK_FAILED_DAG, run_id, BATCH_TASK, key="batch_id")
    assert e2e.batch(batch_id).status in ("validating", "in_progress")
    e2e.sample_triggers(MARK_FAILED_DAG, run_id)
    time.sleep(1.0)

    marked = time.monotonic()
    e2e.stack.set_task_state(MARK_FAILED_DAG, run_id, BATCH_TASK, "failed")
    wait_until(lambda: e2e.batch(batch_id).status == "cancelled", 30, f"batch {batch_id} to be cancelled")
    took = time.monotonic() - marked

    assert e2e.ti(MARK_FAILED_DAG, run_id, BATCH_TASK)["state"] == "failed"
    batch = e2e.batch(batch_id)
    assert batch.request_counts.completed < batch.request_counts.total, "cancelled before it finished"
    assert [b.id for b in e2e.batches_of(MARK_FAILED_DAG, run_id, BATCH_TASK)] == [batch_id]
    # The cancel came from the trigger's on_kill, which says so in the triggerer's logs.
    wait_until(
        lambda: f"Batch {batch_id} cancelled on kill" in _all_logs(e2e.stack.home / "logs"),
        15,
        "the trigger's on_kill log line",
    )
    assert took < 30
    print(f"[{e2e.backend}] batch {batch_id} cancelled {took:.1f} s after the task was marked failed")


@pytest.mark.parametrize(
    ("task_id", "where", "lookup"),
    [
        (KILLED_AFTER_CREATE, "after create", "metadata"),
        (KILLED_BEFORE_DEFER, "before defer", "state store"),
    ],
)
def test_worker_killed_between_create_and_defer(
    e2e: E2E, concurrent_runs: dict[str, str], task_id: str, where: str, lookup: str
) -> None:
    """5. SIGKILL of the task's process between ``create`` and ``defer``: the retry re-attaches
    to the batch of the first try, which the emulator holds exactly once.

    ``after create``: nothing about the batch is stored in Airflow yet, so the retry finds it by
    its idempotency key in the batch metadata. ``before defer``: the retry finds it in the task
    state store. The kill is real: the operator (a subclass in the test DAG) reports its PID at
    that point and blocks; the harness checks the PID descends from the stack and SIGKILLs it.
    """
    run_id = concurrent_runs[WORKER_KILLED_DAG]
    ti = e2e.wait_ti_state(WORKER_KILLED_DAG, run_id, task_id, FINISHED_TI_STATES, timeout=300)

    [kill] = e2e.watcher.kills_of(run_id, task_id)
    assert kill["killed"], kill
    assert kill["where"] == where
    assert set(kill["lineage"]) & {p.pid for p in e2e.stack.processes.values()}

    assert ti["state"] == "success", ti
    assert ti["try_number"] == 2
    tries = e2e.stack.api("GET", f"dags/{WORKER_KILLED_DAG}/dagRuns/{run_id}/taskInstances/{task_id}/tries")
    first = next(t for t in tries["task_instances"] if t["try_number"] == 1)
    assert first["state"] in ("up_for_retry", "failed"), first

    [batch] = e2e.batches_of(WORKER_KILLED_DAG, run_id, task_id)
    assert batch.id == kill["batch_id"]
    assert batch.status == "completed"
    assert e2e.xcom(WORKER_KILLED_DAG, run_id, task_id)["batch_id"] == batch.id

    first_log = e2e.task_log(WORKER_KILLED_DAG, run_id, task_id, attempt=1)
    second_log = e2e.task_log(WORKER_KILLED_DAG, run_id, task_id, attempt=2)
    assert f"Created batch {batch.id}" in first_log
    assert "DEFERRED" not in first_log, "try 1 died before deferring"
    assert re.search(rf"Re-attaching to batch {batch.id} \((validating|in_progress)\)", second_log)
    assert "Created batch" not in second_log
    # How the retry found the batch, from the SDK's request log: listing batches (the metadata
    # lookup by idempotency key) or retrieving the stored id (the task state store).
    listed = re.search(r"HTTP Request: GET \S+/v1/batches\?", second_log)
    retrieved = f"HTTP Request: GET {e2e.emulator.base_url}/batches/{batch.id} " in second_log
    assert (bool(listed), retrieved) == ((True, False) if lookup == "metadata" else (False, True))
    directory = e2e.task_log_dir(WORKER_KILLED_DAG, run_id, task_id)
    assert list(directory.glob("attempt=2.log.trigger.*")), "the retry waited in the triggerer"


def test_worker_killed_mid_submission_of_a_job(e2e: E2E, concurrent_runs: dict[str, str]) -> None:
    """5b. SIGKILL of the task's process in the middle of submitting a job's shards: with
    CREATES_BEFORE_KILL of its JOB_SHARDS batches created, none of them known to Airflow yet. The
    retry re-attaches to those (found by their idempotency keys in one listing), creates only the
    missing ones, and the emulator holds exactly one batch per shard and ran every line once.

    The kill is the one of ``killed_after_create``, after the third create call instead of the
    first. This must run before the fan-out test, which resets the emulator's line counts.
    """
    dag, task_id = WORKER_KILLED_DAG, KILLED_MID_SUBMISSION
    run_id = concurrent_runs[dag]
    ti = e2e.wait_ti_state(dag, run_id, task_id, FINISHED_TI_STATES, timeout=300)

    [kill] = e2e.watcher.kills_of(run_id, task_id)
    assert kill["killed"], kill
    died_with = kill["created"]  # shards 1..CREATES_BEFORE_KILL, in order
    assert len(died_with) == CREATES_BEFORE_KILL, kill
    assert ti["state"] == "success", ti
    assert ti["try_number"] == 2, ti

    # Exactly one batch per shard: no idempotency key twice, one key per shard.
    batches = e2e.batches_of(dag, run_id, task_id)
    by_key: dict[str, list[str]] = {}
    for batch in batches:
        by_key.setdefault(batch.metadata[IDEMPOTENCY_KEY], []).append(batch.id)
    twice = {key: ids for key, ids in by_key.items() if len(ids) > 1}
    assert not twice, f"shards submitted more than once: {twice}"
    assert len(by_key) == JOB_SHARDS, by_key
    assert {batch.status for batch in batches} == {"completed"}
    ids = {batch.id for batch in batches}
    assert set(died_with) <= ids, "the retry kept the batches of the killed try"

    manifest = e2e.xcom(dag, run_id, task_id)
    assert set(manifest["batch_ids"]) == ids
    assert manifest["shards"] == JOB_SHARDS
    total = JOB_SHARDS * SHARD_REQUESTS
    assert manifest["request_counts"] == {"total": total, "succeeded": total, "failed": 0, "pending": 0}

    # Every line ran exactly once on the emulator (a shard submitted twice runs its lines twice).
    custom_ids = e2e.emulator.lines()["custom_ids"]
    ran = {custom_id: n for custom_id, n in custom_ids.items() if custom_id.startswith(f"{task_id}-")}
    assert ran == {f"{task_id}-{i}": 1 for i in range(total)}

    # Try 1 created the first shards and died; try 2 re-attached to them and created the rest.
    first_log = e2e.task_log(dag, run_id, task_id, attempt=1)
    second_log = e2e.task_log(dag, run_id, task_id, attempt=2)
    assert re.findall(r"Created batch (batch_\w+)", first_log) == died_with, "try 1 died mid-submission"
    assert "DEFERRED" not in first_log
    for shard, batch_id in enumerate(died_with, start=1):
        assert re.search(rf"Round 1, shard {shard}: re-attaching to batch {batch_id} \(\w+\)", second_log)
    created = re.findall(r"Round 1, shard (\d+): batch (\S+) created", second_log)
    assert [int(shard) for shard, _ in created] == list(range(CREATES_BEFORE_KILL + 1, JOB_SHARDS + 1))
    assert {batch_id for _, batch_id in created} == ids - set(died_with)
    assert list(e2e.task_log_dir(dag, run_id, task_id).glob("attempt=2.log.trigger.*")), "waited deferred"
    print(
        f"[{e2e.backend}] killed with {len(died_with)} of {JOB_SHARDS} shards submitted; the retry"
        f" re-attached to them and created {len(created)}: one batch per shard, every line ran once"
    )


def test_triggerer_sigkill_keeps_deadline_and_completes_once(e2e: E2E) -> None:
    """4. SIGKILL the triggerer mid-wait and start a new one: the task completes exactly once,
    and a trigger deadline fires at its wall-clock time, not pushed back by the downtime.

    ``survives_restart`` ends after the restart (one batch, try 1, one asset event, success).
    ``deadline_holds`` has ``timeout`` = 55 s from its batch's creation; its trigger row's
    ``end_time`` is the same before and after the takeover, and the timeout fires (and cancels the
    batch) at ``created_at + 55``. A deadline restarted with the trigger would fire no earlier
    than restart + 55 s, some 20 s later.
    """
    stack, dag = e2e.stack, TRIGGERER_RESTART_DAG
    e2e.wait_idle()
    run_id = stack.trigger(dag)
    for task_id in (SURVIVES_RESTART, DEADLINE_HOLDS):
        e2e.wait_ti_state(dag, run_id, task_id, {"deferred"}, timeout=180)
    [deadline_batch] = e2e.batches_of(dag, run_id, DEADLINE_HOLDS)
    end_time = deadline_batch.created_at + DEADLINE_SECONDS

    def picked_up() -> dict | None:
        rows = e2e.db.triggers_of_run(dag, run_id)
        return rows if len(rows) == 2 and all(row["triggerer_id"] for row in rows.values()) else None

    before = wait_until(picked_up, 60, "the triggerer to pick the triggers up")
    e2e.trigger_samples.extend(before.values())
    assert set(before) == {(SURVIVES_RESTART, -1), (DEADLINE_HOLDS, -1)}
    assert before[(DEADLINE_HOLDS, -1)]["kwargs"]["end_time"] == pytest.approx(end_time)
    old_triggerer = {row["triggerer_id"] for row in before.values()}
    assert len(old_triggerer) == 1, before
    assert None not in old_triggerer, before

    # Kill mid-wait, once the trigger has polled a few times and late enough that a deadline
    # restarted from the takeover would land well after the real one (see the last assert).
    time.sleep(max(2.0, deadline_batch.created_at + 8 - time.time()))
    polls_route = "GET /v1/batches/{id}"
    stack.kill_component("triggerer", signal.SIGKILL)
    polls_at_kill = e2e.emulator.stats()["requests"].get(polls_route, 0)
    time.sleep(TRIGGERER_DOWNTIME)
    # Nobody polled while the triggerer was dead (its trigger runner died with it), and the tasks
    # did not fail because of it.
    assert e2e.emulator.stats()["requests"].get(polls_route, 0) == polls_at_kill
    for task_id in (SURVIVES_RESTART, DEADLINE_HOLDS):
        assert e2e.ti(dag, run_id, task_id)["state"] == "deferred"
    restarted_at = time.time()
    stack.start_component("triggerer")

    def taken_over() -> dict | None:
        rows = e2e.db.triggers_of_run(dag, run_id)
        owners = {row["triggerer_id"] for row in rows.values()}
        return rows if len(rows) == 2 and None not in owners and not owners & old_triggerer else None

    after = wait_until(taken_over, 90, "the new triggerer to take the triggers over")
    assert time.time() < end_time - 2, "test precondition: the new triggerer took over before the deadline"
    e2e.trigger_samples.extend(after.values())
    for key, row in before.items():
        assert after[key]["id"] == row["id"]
        assert after[key]["kwargs"] == row["kwargs"], "trigger kwargs (and end_time) unchanged"

    survived = e2e.wait_ti_state(dag, run_id, SURVIVES_RESTART, FINISHED_TI_STATES, timeout=180)
    timed_out = e2e.wait_ti_state(dag, run_id, DEADLINE_HOLDS, FINISHED_TI_STATES, timeout=180)

    assert survived["state"] == "success", survived
    assert survived["try_number"] == 1, survived
    [batch] = e2e.batches_of(dag, run_id, SURVIVES_RESTART)
    assert batch.status == "completed"
    assert batch.completed_at > restarted_at, "the batch ended after the restart"
    assert e2e.xcom(dag, run_id, SURVIVES_RESTART)["batch_id"] == batch.id
    [event] = e2e.asset_events(dag, run_id, SURVIVES_RESTART)  # completed exactly once
    assert event["uri"] == RESTART_ASSET_URI
    assert event["extra"]["batch_id"] == batch.id

    assert timed_out["state"] == "failed", timed_out
    assert timed_out["try_number"] == 1, timed_out
    assert "OpenAIBatchTimeout" in e2e.task_log(dag, run_id, DEADLINE_HOLDS, attempt=1)
    wait_until(lambda: e2e.batch(deadline_batch.id).status == "cancelled", 30, "the timeout's cancel")
    assert [b.id for b in e2e.batches_of(dag, run_id, DEADLINE_HOLDS)] == [deadline_batch.id]

    # Each trigger fired exactly once, from the new triggerer; the deadline one at its original
    # wall-clock deadline, which is well before a deadline counted again from the restart.
    [survivor_fired_at] = _trigger_fired_at(e2e, dag, run_id, SURVIVES_RESTART)
    assert survivor_fired_at > restarted_at
    [fired_at] = _trigger_fired_at(e2e, dag, run_id, DEADLINE_HOLDS)
    assert end_time <= fired_at <= end_time + 5, (fired_at, end_time)
    assert end_time + 5 < restarted_at + DEADLINE_SECONDS
    print(
        f"[{e2e.backend}] triggerer down {TRIGGERER_DOWNTIME:.0f} s; deadline trigger fired"
        f" {fired_at - end_time:+.2f} s from its deadline; restart-based deadline would be"
        f" {restarted_at + DEADLINE_SECONDS - end_time:+.1f} s"
    )


def test_fan_out_under_transient_faults(e2e: E2E) -> None:
    """6. 20 mapped batch tasks while 30 % of the emulator's API calls fail transiently (429, 500,
    503, dropped connections): every task succeeds on its first try, and each map index owns
    exactly one batch. Also: more tasks are deferred at once than the executor has slots."""
    emulator, dag = e2e.emulator, FAN_OUT_DAG
    e2e.wait_idle()
    emulator.reset_stats()
    emulator.configure(faults={"rate": 0.3, "kinds": ["429", "500", "503", "drop"]})
    try:
        run_id = e2e.stack.trigger(dag)
        most_deferred = 0
        deadline = time.monotonic() + 420
        while e2e.stack.run_state(dag, run_id) not in ("success", "failed"):
            assert time.monotonic() < deadline, "the fan-out run did not finish in time"
            tis = e2e.tis(dag, run_id, BATCH_TASK)
            deferred = sum(ti["state"] == "deferred" for ti in tis)
            if deferred > most_deferred:
                most_deferred = deferred
                e2e.sample_triggers(dag, run_id)
            time.sleep(0.5)
        stats = emulator.stats()
    finally:
        emulator.configure(faults={"rate": 0.0})

    tis = e2e.tis(dag, run_id, BATCH_TASK)
    assert {ti["map_index"]: (ti["state"], ti["try_number"]) for ti in tis} == {
        i: ("success", 1) for i in range(FAN_OUT_WIDTH)
    }
    assert e2e.stack.run_state(dag, run_id) == "success"
    assert stats["total_faults"] >= 20, stats  # the faults really happened

    batches = e2e.batches(airflow_dag_id=dag, airflow_run_id=run_id)
    by_index: dict[str, list[str]] = {}
    for batch in batches:
        by_index.setdefault(batch.metadata["airflow_map_index"], []).append(batch.id)
        assert batch.status == "completed", batch
    assert sorted(by_index, key=int) == [str(i) for i in range(FAN_OUT_WIDTH)]
    duplicated = {index: ids for index, ids in by_index.items() if len(ids) != 1}
    assert not duplicated, f"map indexes with other than one batch: {duplicated}"
    for i in range(FAN_OUT_WIDTH):
        assert e2e.xcom(dag, run_id, BATCH_TASK, map_index=i)["batch_id"] == by_index[str(i)][0]
    assert most_deferred > PARALLELISM, f"at most {most_deferred} deferred at once"
    print(
        f"[{e2e.backend}] fan-out: {stats['total_faults']} faults injected in {stats['total_requests']}"
        f" API calls; up to {most_deferred} tasks deferred at once with {PARALLELISM} executor slots"
    )


def test_ten_runs_share_an_enqueued_token_limit(e2e: E2E) -> None:
    """7. Ten runs of a three-shard job at once, on an emulator whose enqueued-token limit holds two
    shards of a model. With the budget on the connection (BUDGET_SET_DAG) the runs wait for room,
    deferred; without it (BUDGET_UNSET_DAG, on another model, at the same time) the emulator refuses
    the excess with ``token_limit_exceeded`` and the runs submit those shards again. Either way every
    run succeeds on its first try, with one completed batch per shard, every line run once, and the
    emulator never held more than the limit."""
    emulator = e2e.emulator
    limit = budget_token_limit()
    e2e.wait_idle()
    emulator.reset_stats()
    emulator.configure(enqueued_token_limits=dict.fromkeys(BUDGET_MODELS.values(), limit))
    started = time.monotonic()
    try:
        runs = {dag: [e2e.stack.trigger(dag) for _ in range(BUDGET_RUNS)] for dag in BUDGET_MODELS}
        for dag, run_ids in runs.items():
            for run_id in run_ids:
                e2e.wait_run_finished(dag, run_id, timeout=max(60.0, 900 - (time.monotonic() - started)))
        tokens = emulator.enqueued_tokens()
    finally:
        emulator.configure(enqueued_token_limits={})
    elapsed = time.monotonic() - started

    custom_ids = emulator.lines()["custom_ids"]
    for dag, run_ids in runs.items():
        model = BUDGET_MODELS[dag]
        assert tokens["peak"][model] <= limit, (dag, tokens)
        for run_id in run_ids:
            ti = e2e.ti(dag, run_id, BATCH_TASK)
            assert (ti["state"], ti["try_number"]) == ("success", 1), (dag, run_id, ti)
            batches = e2e.batches_of(dag, run_id, BATCH_TASK)
            completed = Counter(b.metadata[IDEMPOTENCY_KEY] for b in batches if b.status == "completed")
            assert sorted(completed.values()) == [1] * BUDGET_SHARDS, (dag, run_id, completed)
            assert {b.status for b in batches} <= {"completed", "failed"}, (dag, run_id)
            refused = [b for b in batches if b.status == "failed"]
            assert all(b.errors.data[0].code == "token_limit_exceeded" for b in refused), refused
            ran = {custom_id: n for custom_id, n in custom_ids.items() if custom_id.startswith(f"{run_id}-")}
            assert ran == {f"{run_id}-{i}": 1 for i in range(BUDGET_SHARDS * SHARD_REQUESTS)}, ran
            manifest = e2e.xcom(dag, run_id, BATCH_TASK)
            assert manifest["request_counts"]["succeeded"] == BUDGET_SHARDS * SHARD_REQUESTS
    unset_model = BUDGET_MODELS[BUDGET_UNSET_DAG]
    assert tokens["refused"].get(unset_model, 0) > 0, f"the reactive path never ran: {tokens}"
    set_model = BUDGET_MODELS[BUDGET_SET_DAG]
    print(
        f"[{e2e.backend}] {BUDGET_RUNS} runs x {BUDGET_SHARDS} shards per model in {elapsed:.0f} s, limit"
        f" {limit} tokens (2 shards): with the budget, peak {tokens['peak'][set_model]} and"
        f" {tokens['refused'].get(set_model, 0)} refusals; without it, peak {tokens['peak'][unset_model]}"
        f" and {tokens['refused'][unset_model]} refusals, all submitted again; no retry, no line twice"
    )


def test_api_key_never_leaks(e2e: E2E) -> None:
    """7. The canary API key (the connection's password, which the emulator demands on every
    call) appears in no log file (task, trigger, scheduler, triggerer, dag-processor,
    api-server), no XCom value, no trigger row, and nowhere in the metadata database's files."""
    canary = e2e.canary
    with pytest.raises(openai.AuthenticationError):  # the key is really checked, so really used
        openai.OpenAI(base_url=e2e.emulator.base_url, api_key="sk-wrong", max_retries=0).batches.list()
    if not e2e.trigger_samples:  # this test run alone: defer one task to sample its trigger row
        run_id = e2e.stack.trigger(SUCCESS_DAG)
        e2e.wait_ti_state(SUCCESS_DAG, run_id, BATCH_TASK, {"deferred"}, timeout=180)
        e2e.sample_triggers(SUCCESS_DAG, run_id)
        e2e.wait_run_finished(SUCCESS_DAG, run_id, 300)

    # Trigger rows seen while tasks were deferred (deleted afterwards): ours, and key-free.
    assert e2e.trigger_samples
    for row in e2e.trigger_samples:
        assert row["classpath"] == TRIGGER_CLASSPATH
        assert row["kwargs"]["conn_id"] == "openai_e2e"
        assert canary not in row["raw"]
        assert canary not in json.dumps(row["kwargs"])

    logs = sorted(p for p in (e2e.stack.home / "logs").rglob("*") if p.is_file())
    names = {p.name for p in logs}
    assert {"scheduler.log", "triggerer.log", "api-server.log", "dag-processor.log"} <= names
    assert any(".log.trigger." in name for name in names), "trigger logs exist"
    task_logs = sum(p.name.startswith("attempt=") for p in logs)
    assert task_logs, "task logs exist"
    files = [p for root in (e2e.stack.home, e2e.work) for p in root.rglob("*") if p.is_file()]
    leaking = [str(p) for p in files if canary.encode() in p.read_bytes()]
    assert not leaking, f"the API key is in {leaking}"

    entries = e2e.stack.api("GET", "dags/~/dagRuns/~/taskInstances/~/xcomEntries?limit=1000")["xcom_entries"]
    assert entries
    for entry in entries:
        value = e2e.xcom(entry["dag_id"], entry["run_id"], entry["task_id"], entry["key"], entry["map_index"])
        assert canary not in json.dumps(value), entry

    assert e2e.db.find(canary) == []
    # Positive control: the same scans do find a value that is stored (a batch id in XCom rows,
    # trigger kwargs and log lines), in live rows and in the raw database files alike.
    known = e2e.trigger_samples[-1]["kwargs"]["batch_id"]
    found = e2e.db.find(known)
    assert any(hit.startswith("file ") for hit in found), found
    assert any(not hit.startswith("file ") for hit in found), found
    assert any(known.encode() in p.read_bytes() for p in logs)
    print(
        f"[{e2e.backend}] no key in {len(files)} files ({task_logs} task logs), {len(entries)} XComs,"
        f" {len(e2e.trigger_samples)} trigger rows, {len(e2e.db.tables())} tables and the raw database files"
    )


def _trigger_fired_at(e2e: E2E, dag_id: str, run_id: str, task_id: str) -> list[float]:
    """When the triggers of try 1 fired (``Trigger fired event`` in the triggerer's task logs)."""
    fired = []
    for path in e2e.task_log_dir(dag_id, run_id, task_id).glob("attempt=1.log.trigger.*"):
        for line in path.read_text(errors="replace").splitlines():
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("event") == "Trigger fired event":
                fired.append(datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp())
    return fired


def _all_logs(directory: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in directory.rglob("*.log*") if p.is_file())
