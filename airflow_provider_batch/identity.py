"""Who a submission is: the identity that makes a retried task find the batch it already paid for.

A task instance (dag, task, run, map index; never the try number) submitting one input is one
submission. Its key, :func:`submission_key`, goes into the batch's metadata (the hook's
idempotency key) and, on Airflow 3.3+, into the task state store with the batch id
(:func:`remember`), so that a retry, a worker killed mid-submit or a cleared task re-attaches to
the existing batch instead of creating and billing a second one.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

if TYPE_CHECKING:
    from airflow.sdk import Context

STATE_BATCH_ID = "openai_batch_id"
STATE_SUBMISSION_KEY = "openai_batch_submission_key"
AIRFLOW_METADATA_KEYS = ("airflow_dag_id", "airflow_task_id", "airflow_run_id", "airflow_map_index")
"""Metadata keys naming the task instance on every batch it creates (each value cut to 512 chars)."""


def identity_tags(context: Context) -> dict[str, str]:
    """The task instance as batch metadata, so a batch in the dashboard says where it came from."""
    ti = context["ti"]
    values = (ti.dag_id, ti.task_id, ti.run_id, str(ti.map_index))
    return {key: value[:512] for key, value in zip(AIRFLOW_METADATA_KEYS, values, strict=True)}


def submission_key(context: Context, endpoint: str, fingerprint: str) -> str:
    """Identity of one submission: the task instance (never the try number) and its input."""
    ti = context["ti"]
    parts = (ti.dag_id, ti.task_id, ti.run_id, str(ti.map_index), endpoint, fingerprint)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:48]


def input_fingerprint(source: Any, input_file_id: str | None = None) -> str:
    """A cheap identity of the input: the file id, or the content hash of a local file, or the
    URI and size of a remote one (hashing a remote 200 MB file would mean downloading it twice)."""
    if source is None:
        return f"file-id:{input_file_id}"
    if isinstance(source, ObjectStoragePath) and source.protocol not in ("", "file", "local"):
        return f"{source}:{source.stat().get('size')}"
    digest = hashlib.blake2b(digest_size=16)
    with open(source if not isinstance(source, ObjectStoragePath) else source.path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def remember(context: Context, batch_id: str, key: str) -> None:
    """Keep the batch id where a retry finds it without listing batches (Airflow 3.3+)."""
    store = context.get("task_state_store")
    if store is not None:
        store.set(STATE_BATCH_ID, batch_id)
        store.set(STATE_SUBMISSION_KEY, key)


def run_started(context: Context) -> float | None:
    """Lower bound for the metadata lookup: nothing this run created predates the run itself.

    The earlier of the run's start and its ``run_after``: clearing a task of a finished run starts the
    run again with a new ``start_date``, while ``run_after`` stays, so the batches of the first attempt
    are still found (and not paid for twice). Five minutes of slack absorb clock skew.
    """
    dag_run = context.get("dag_run")
    moments = [
        moment.timestamp()
        for moment in (getattr(dag_run, "start_date", None), getattr(dag_run, "run_after", None))
        if moment is not None
    ]
    return min(moments) - 300 if moments else None
