"""DAGs of the end-to-end tier: run by a real scheduler, LocalExecutor and triggerer against the
emulator (connection ``openai_e2e``). Each DAG serves one scenario of ``tests/e2e``."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Asset, get_current_context, task
from e2e_common import (
    BATCH_TASK,
    BUDGET_CONN_ID,
    BUDGET_MODELS,
    BUDGET_SET_DAG,
    CHAT,
    CONN_ID,
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
    MAX_POLL_INTERVAL,
    PARALLELISM,
    POLL_INTERVAL,
    PROBE_HOLD_SECONDS,
    PROBE_TASK,
    RESTART_ASSET_URI,
    SHARD_REQUESTS,
    SUCCESS_ASSET_URI,
    SUCCESS_DAG,
    SURVIVES_RESTART,
    TRIGGERER_RESTART_DAG,
    WORKER_KILLED_DAG,
    barrier_dir,
    budget_requests,
    chat_requests,
    request_kill,
    slow,
)

from airflow_provider_batch.operators.batch import OpenAIBatchOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
COMMON: dict[str, Any] = {
    "endpoint": CHAT,
    "conn_id": CONN_ID,
    "deferrable": True,
    "poll_interval": POLL_INTERVAL,
    "max_poll_interval": MAX_POLL_INTERVAL,
}
RETRY_ONCE = {"retries": 1, "retry_delay": timedelta(seconds=2)}

SUCCESS_ASSET = Asset(name="e2e_success_batch", uri=SUCCESS_ASSET_URI)
RESTART_ASSET = Asset(name="e2e_restart_batch", uri=RESTART_ASSET_URI)


# 1 + 2: deferred without a slot, then success with manifest and asset extra -----------------------

with DAG(SUCCESS_DAG, schedule=None, start_date=START, catchup=False, default_args=RETRY_ONCE):
    OpenAIBatchOperator(
        task_id=BATCH_TASK,
        requests=chat_requests("success", 8),
        metadata={**slow(2.5), "scenario": "success"},  # ~20 s in progress
        outlets=[SUCCESS_ASSET],
        priority_weight=100,  # queued before the probes, so it holds a slot until it defers
        **COMMON,
    )

    @task(task_id=PROBE_TASK, priority_weight=50, retries=0)
    def probe(slot: int) -> int:
        """Occupy one executor slot until all PARALLELISM probes run at the same time.

        With ``[core] parallelism`` = PARALLELISM, the probes can only all run together if no other
        task process holds a slot, i.e. once the batch task (queued first, by priority) has
        deferred and given its slot back. If a deferred task kept its slot, the last probe could
        not start and this barrier would time out.
        """
        barrier = barrier_dir(get_current_context()["run_id"])
        barrier.mkdir(parents=True, exist_ok=True)
        (barrier / str(slot)).touch()
        deadline = time.monotonic() + 150
        while len(list(barrier.iterdir())) < PARALLELISM:
            if time.monotonic() > deadline:
                raise RuntimeError("the probes never ran all at once: an executor slot stayed taken")
            time.sleep(0.2)
        time.sleep(PROBE_HOLD_SECONDS)  # keep every slot full long enough to be seen over REST
        return slot

    probe.expand(slot=list(range(PARALLELISM)))


# 3: marking the deferred task failed cancels the batch (the trigger's on_kill) ------------------

with DAG(MARK_FAILED_DAG, schedule=None, start_date=START, catchup=False):
    OpenAIBatchOperator(
        task_id=BATCH_TASK,
        requests=chat_requests("mark-failed", 30),
        metadata=slow(2),  # ~60 s: still running when the test marks the task failed
        retries=0,
        **COMMON,
    )


# 5: the worker dies after create (a job: mid-submission of its shards) or before defer ------------


class KilledAfterCreate(OpenAIBatchOperator):
    """Dies (try 1) the moment its ``die_after``-th create call returned: before any batch id is
    stored anywhere in Airflow, so the retry can only find the batches by their idempotency keys in
    the metadata. For a job of shards, that is in the middle of submitting them.

    It wraps the hook's public ``create_batch``, whichever path of the operator calls it; the kill's
    record lists the batches created so far (``created``).
    """

    def __init__(self, *, die_after: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.die_after = die_after

    def execute(self, context: Any) -> Any:
        ti = context["ti"]
        if ti.try_number == 1:
            create, created = self.hook.create_batch, []

            def create_then_die(*args: Any, **kwargs: Any) -> Any:
                batch = create(*args, **kwargs)
                created.append(batch.id)
                if len(created) == self.die_after:
                    request_kill(ti.dag_id, ti.run_id, ti.task_id, batch.id, "after create", created=created)
                return batch

            self.hook.create_batch = create_then_die  # type: ignore[method-assign]
        return super().execute(context)


class KilledBeforeDefer(OpenAIBatchOperator):
    """Dies (try 1) right before deferring: the batch id is in the task state store and XCom,
    but no trigger exists yet."""

    def defer(self, **kwargs: Any) -> Any:
        context = get_current_context()
        ti = context["ti"]
        if ti.try_number == 1:
            request_kill(ti.dag_id, ti.run_id, ti.task_id, str(self.batch_id), "before defer")
        return super().defer(**kwargs)


with DAG(WORKER_KILLED_DAG, schedule=None, start_date=START, catchup=False, default_args=RETRY_ONCE):
    killers = ((KilledAfterCreate, KILLED_AFTER_CREATE), (KilledBeforeDefer, KILLED_BEFORE_DEFER))
    for operator, task_id in killers:
        operator(
            task_id=task_id,
            requests=chat_requests(task_id, 8),
            metadata=slow(3),  # ~24 s: still running when the retry re-attaches
            **COMMON,
        )
    KilledAfterCreate(  # a job: dies with CREATES_BEFORE_KILL of its JOB_SHARDS batches created
        task_id=KILLED_MID_SUBMISSION,
        die_after=CREATES_BEFORE_KILL,
        requests=chat_requests(KILLED_MID_SUBMISSION, JOB_SHARDS * SHARD_REQUESTS),
        max_requests_per_batch=SHARD_REQUESTS,
        metadata=slow(4),  # ~8 s a batch: the retry's new batches run well over 5 s while deferred
        **COMMON,
    )


# 4: SIGKILL the triggerer mid-wait; completion exactly once, deadline kept ------------------------

with DAG(TRIGGERER_RESTART_DAG, schedule=None, start_date=START, catchup=False):
    OpenAIBatchOperator(
        task_id=SURVIVES_RESTART,
        requests=chat_requests(SURVIVES_RESTART, 10),
        metadata=slow(3.5),  # ~35 s: ends after the triggerer is back
        outlets=[RESTART_ASSET],
        retries=0,
        **COMMON,
    )
    OpenAIBatchOperator(
        task_id=DEADLINE_HOLDS,
        requests=chat_requests(DEADLINE_HOLDS, 60),
        metadata=slow(2),  # ~120 s: outlives its deadline
        timeout=DEADLINE_SECONDS,  # counted from the batch's creation: an absolute wall-clock deadline
        cancel_on_timeout=True,
        retries=0,
        **COMMON,
    )


# 6: 20 mapped batches under 30 % transient API faults ---------------------------------------------

with DAG(FAN_OUT_DAG, schedule=None, start_date=START, catchup=False, max_active_tasks=FAN_OUT_WIDTH):
    OpenAIBatchOperator.partial(
        task_id=BATCH_TASK,
        metadata=slow(2),  # 5 lines: ~10 s in progress each
        max_consecutive_failures=12,  # 0.3**12: a run of failed polls this long will not happen
        retries=0,  # any failure is a failure: no retry may hide it
        **COMMON,
    ).expand(requests=[chat_requests(f"fan-{i}", 5) for i in range(FAN_OUT_WIDTH)])


# 7: ten runs of a three-shard job share an enqueued-token limit that holds two shards ------------
# The budget on BUDGET_CONN_ID makes the runs wait for room (proactive); without it, the emulator
# refuses the excess and the runs submit those shards again (reactive). Neither may spend a retry.

for dag_id, model in BUDGET_MODELS.items():
    with DAG(dag_id, schedule=None, start_date=START, catchup=False, default_args=RETRY_ONCE):
        OpenAIBatchOperator(
            task_id=BATCH_TASK,
            requests=budget_requests(model, "{{ run_id }}"),  # rendered: the run's own custom_ids
            max_requests_per_batch=SHARD_REQUESTS,
            metadata=slow(4),  # ~8 s a shard: the limit binds while batches run
            **{
                **COMMON,
                "conn_id": BUDGET_CONN_ID if dag_id == BUDGET_SET_DAG else CONN_ID,
                # A job waiting for room looks again after 10 to 15 s: never within seconds of its
                # deferral, and batches run well over 5 s (apache/airflow#67287, see POLL_INTERVAL).
                "poll_interval": 10.0,
                "max_poll_interval": 15.0,
            },
        )
