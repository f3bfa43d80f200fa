"""``OpenAIBatchOperator``: validate and upload requests, submit one batch (retry-safe), wait for it
without a worker, and hand a small manifest downstream.

The order of :meth:`OpenAIBatchOperator.execute` is the design:

1. **Identify** the submission: a key made of the task instance's identity (dag, task, run, map
   index, never the try number) and a fingerprint of the input.
2. **Re-attach** when an earlier try already created a batch for that key: first through the task
   state store (Airflow 3.3+), then through the key in the batch metadata (every version). A
   running or completed batch is waited on again instead of being paid for twice; only a batch
   that ``failed`` (which OpenAI does not bill) is submitted anew.
3. Otherwise **validate** the requests locally (nothing is uploaded when a line is wrong),
   **upload** them streamed, and **create** the batch (the hook never replays a create blindly).
4. Push ``batch_id`` and the link URL at once, so both exist even if the task then dies.
5. **Look once**: a batch that is already terminal finishes inline (no defer, no race).
6. **Wait**: defer to :class:`~airflow_provider_batch.triggers.batch.OpenAIBatchTrigger`, or poll
   synchronously when not deferrable. Both end in the same event payload and the same
   :func:`finish_batch`, which lands results, applies the failed-line policy, and raises the typed
   error of :data:`~airflow_provider_batch.exceptions.REASON_TO_EXCEPTION`.

Cancellation policy: on our own timeout (``cancel_on_timeout``) and on a user kill
(``cancel_on_kill``: ``on_kill`` on the worker, the trigger's ``on_kill`` while deferred); never on a
polling error, because the batch's state is then unknown and a cancel cannot be undone.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf  # airflow.sdk.conf only exists from 3.2
from airflow.sdk import Asset, BaseOperator, ObjectStoragePath

from airflow_provider_batch import requests as batch_requests
from airflow_provider_batch.events import build_event, snapshot_from_event, validate_event
from airflow_provider_batch.exceptions import (
    OpenAIBatchConfigError,
    OpenAIBatchLandingError,
    OpenAIBatchPartialFailure,
    ending_error,
)
from airflow_provider_batch.hooks.batch import IDEMPOTENCY_KEY, OpenAIBatchHook, snapshot_of
from airflow_provider_batch.limits import MAX_METADATA_PAIRS, endpoint_problem
from airflow_provider_batch.links.batch import BATCH_URL_XCOM_KEY, OpenAIBatchLink, reserve_batch_url
from airflow_provider_batch.results import summarize, write_joined
from airflow_provider_batch.status import (
    BatchSnapshot,
    BatchStatus,
    PollSchedule,
    classify_completion,
    decide,
)
from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

log = logging.getLogger(__name__)

DEFER_METHOD_NAME = "execute_complete"
STATE_BATCH_ID = "openai_batch_id"
STATE_SUBMISSION_KEY = "openai_batch_submission_key"
XCOM_BATCH_ID = "batch_id"
XCOM_OUTPUT_FILE_ID = "output_file_id"
XCOM_ERROR_FILE_ID = "error_file_id"
XCOM_RETURN_KEY = "return_value"
AIRFLOW_METADATA_KEYS = ("airflow_dag_id", "airflow_task_id", "airflow_run_id", "airflow_map_index")
USER_METADATA_PAIRS = MAX_METADATA_PAIRS - len(AIRFLOW_METADATA_KEYS) - 1  # and the idempotency key
DEFAULT_TIMEOUT = timedelta(hours=25)
"""The 24 h window plus finalizing time, so OpenAI's own ``expired`` (with partial output) normally
arrives before our timeout does."""


class OpenAIBatchOperator(BaseOperator):
    """Run one OpenAI batch and return a manifest of it.

    Give exactly one input:

    :param input_file_id: a file already uploaded with purpose ``batch``.
    :param input_path: a JSONL file, local or any ``ObjectStoragePath`` (``s3://``, ``gs://``...);
        validated in one streaming pass, then uploaded streamed.
    :param requests: records ``{"custom_id": ..., "body": {...}}`` (for example an upstream XCom);
        written to a JSONL file, validated, uploaded. The field is templated so that an XCom can
        feed it: records written literally in the DAG file are rendered by Jinja, so a prompt
        containing ``{{`` must come from an upstream task or be wrapped in ``literal()``.

    :param endpoint: the batch endpoint, e.g. ``/v1/chat/completions`` or ``/v1/embeddings``.
    :param conn_id: an ``openai_batch`` (or ``openai``) connection.
    :param completion_window: only ``24h`` is accepted by OpenAI today.
    :param metadata: up to 12 pairs of your own; the operator adds the task identity and the
        submission key (16 pairs in all).
    :param input_expires_after: seconds after which an input file uploaded by the operator expires.
    :param output_expires_after: seconds after which the output and error files expire.
    :param deferrable: wait in the triggerer instead of a worker slot (default from
        ``[operators] default_deferrable``).
    :param wait_for_completion: ``False`` returns right after submitting (wait with
        ``OpenAIBatchSensor``).
    :param poll_interval: seconds before the second status call; intervals grow 1.5-fold to
        ``max_poll_interval``. Both modes use the same schedule.
    :param timeout: how long to wait, counted from the batch's creation (so a re-attached retry
        keeps the original deadline). Defaults to 25 hours.
    :param cancel_on_timeout: cancel the batch when ``timeout`` passes.
    :param cancel_on_kill: cancel the batch when the task is killed (marked failed/success or
        cleared); while deferred this needs Airflow 3.3+.
    :param max_failed_fraction: the share of failed lines a ``completed`` batch may have before the
        task fails (0.0: any failed line fails the task; 1.0: never). A completed batch whose lines
        all failed fails the task unless this is 1.0.
    :param output_path: land the results joined back into input order (one JSONL row per request)
        at this local path or ``ObjectStoragePath``; the manifest then carries ``results_uri``
        and a summary. Without it, results stay in OpenAI's files (ids in the manifest).
    :param max_consecutive_failures: failed status calls tolerated in a row while waiting.
    """

    template_fields: Sequence[str] = (
        "input_file_id",
        "input_path",
        "requests",
        "endpoint",
        "metadata",
        "conn_id",
        "output_path",
    )
    template_fields_renderers = {"metadata": "json", "requests": "json"}
    operator_extra_links = (OpenAIBatchLink(),)
    ui_color = "#d4f1e8"

    def __init__(
        self,
        *,
        endpoint: str,
        input_file_id: str | None = None,
        input_path: str | os.PathLike[str] | ObjectStoragePath | None = None,
        requests: Iterable[dict[str, Any]] | None = None,
        conn_id: str = OpenAIBatchHook.default_conn_name,
        completion_window: str = "24h",
        metadata: dict[str, str] | None = None,
        input_expires_after: int | None = None,
        output_expires_after: int | None = None,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        wait_for_completion: bool = True,
        poll_interval: float = 30.0,
        max_poll_interval: float = 300.0,
        timeout: timedelta | float = DEFAULT_TIMEOUT,
        cancel_on_timeout: bool = True,
        cancel_on_kill: bool = True,
        max_failed_fraction: float = 0.0,
        output_path: str | os.PathLike[str] | ObjectStoragePath | None = None,
        max_consecutive_failures: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        given = [
            name
            for name, value in (
                ("input_file_id", input_file_id),
                ("input_path", input_path),
                ("requests", requests),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{self.task_id}: give exactly one of input_file_id, input_path or requests (got"
                f" {', '.join(given) or 'none'})"
            )
        if metadata and len(metadata) > USER_METADATA_PAIRS:
            raise ValueError(
                f"{self.task_id}: metadata may hold at most {USER_METADATA_PAIRS} pairs; the operator adds"
                f" {MAX_METADATA_PAIRS - USER_METADATA_PAIRS} of its own, {MAX_METADATA_PAIRS} in all"
            )
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise ValueError(f"{self.task_id}: max_failed_fraction must be between 0 and 1")
        if isinstance(endpoint, str) and "{{" not in endpoint and (problem := endpoint_problem(endpoint)):
            raise ValueError(f"{self.task_id}: {problem}")  # a literal typo fails the DAG's import
        self.endpoint = endpoint
        self.input_file_id = input_file_id
        self.input_path = input_path
        self.requests = requests
        self.conn_id = conn_id
        self.completion_window = completion_window
        self.metadata = metadata
        self.input_expires_after = input_expires_after
        self.output_expires_after = output_expires_after
        self.deferrable = deferrable
        self.wait_for_completion = wait_for_completion
        self.poll_interval = poll_interval
        self.max_poll_interval = max(max_poll_interval, poll_interval)
        self.timeout = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
        self.cancel_on_timeout = cancel_on_timeout
        self.cancel_on_kill = cancel_on_kill
        self.max_failed_fraction = max_failed_fraction
        self.output_path = output_path
        self.max_consecutive_failures = max_consecutive_failures
        self.batch_id: str | None = None

    @property
    def hook(self) -> OpenAIBatchHook:
        if not hasattr(self, "_hook"):
            self._hook = OpenAIBatchHook(conn_id=self.conn_id)
        return self._hook

    # execute -----------------------------------------------------------------------------------

    def execute(self, context: Context) -> dict[str, Any]:
        reserve_batch_url(context)
        if problem := endpoint_problem(self.endpoint):  # templated: known only now
            raise OpenAIBatchConfigError(f"{self.task_id}: {problem}")
        if self.output_path is not None:
            require_writable(self.output_path)
        with tempfile.TemporaryDirectory(prefix="openai-batch-") as workdir:
            source = self._input_source(Path(workdir))
            key = submission_key(context, self.endpoint, _fingerprint(source, self.input_file_id))
            batch = self._reattach(context, key) or self._submit(context, source, key)
        self.batch_id = batch.batch_id
        _remember(context, batch.batch_id, key)
        ti = context["ti"]
        ti.xcom_push(key=XCOM_BATCH_ID, value=batch.batch_id)
        ti.xcom_push(key=BATCH_URL_XCOM_KEY, value=self.hook.batch_url(batch.batch_id))

        end_time = (batch.created_at or time.time()) + self.timeout
        decision = decide(batch, now=time.time(), end_time=end_time, failures=0, max_failures=1)
        if decision.done:
            self.log.info("Batch %s is already %s; finishing without waiting", batch.batch_id, batch.status)
            return self._finish(context, build_event(batch.batch_id, decision, batch))
        if not self.wait_for_completion:
            self.log.info("Batch %s submitted; not waiting (wait_for_completion=False)", batch.batch_id)
            return manifest(batch)
        if self.deferrable:
            trigger = OpenAIBatchTrigger(
                conn_id=self.conn_id,
                batch_id=batch.batch_id,
                end_time=end_time,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                max_consecutive_failures=self.max_consecutive_failures,
                cancel_on_kill=self.cancel_on_kill,
            )
            self.log.info(trigger.deferral_message(self.hook.batch_url(batch.batch_id)))
            self.defer(trigger=trigger, method_name=DEFER_METHOD_NAME, timeout=trigger.defer_timeout())
        event = self.hook.wait_for_batch(
            batch.batch_id,
            end_time=end_time,
            schedule=PollSchedule(initial=self.poll_interval, maximum=self.max_poll_interval),
            max_consecutive_failures=self.max_consecutive_failures,
        )
        return self._finish(context, event)

    def execute_complete(
        self, context: Context, event: dict[str, Any] | None = None, **_: Any
    ) -> dict[str, Any]:
        """Resume after the trigger: a fresh operator instance, so everything comes from the event."""
        event = validate_event(event)
        self.batch_id = event["batch_id"]
        return self._finish(context, event)

    def on_kill(self) -> None:
        """Cancel the batch when the task is killed while polling on a worker (best effort)."""
        if self.batch_id and self.cancel_on_kill:
            cancel_quietly(self.hook, self.batch_id, self.log)

    # steps ---------------------------------------------------------------------------------------

    def _input_source(self, workdir: Path) -> str | os.PathLike[str] | ObjectStoragePath | None:
        """The JSONL to upload (``None`` for an already uploaded ``input_file_id``)."""
        if self.requests is not None:
            target = workdir / "requests.jsonl"
            batch_requests.write_batch_file(self.requests, target, endpoint=self.endpoint)
            return target
        if self.input_path is not None:
            return as_path(self.input_path)
        return None

    def _reattach(self, context: Context, key: str) -> BatchSnapshot | None:
        """The batch an earlier try of this task created for the same input, if it is worth keeping."""
        store = context.get("task_state_store")
        stored_id = store.get(STATE_BATCH_ID) if store is not None else None
        snapshot = None
        if store is not None and isinstance(stored_id, str) and store.get(STATE_SUBMISSION_KEY) == key:
            observed = self.hook.poll_batch(stored_id)
            # A stored batch that is gone (deleted, another project) is no reason to fail every retry.
            snapshot = observed if isinstance(observed, BatchSnapshot) else None
        if snapshot is None:
            # The first call of a task: it also proves the connection's URL and key, read-only.
            with self.hook.explaining("Looking for a batch that an earlier try submitted"):
                found = self.hook.find_batch_by_metadata(
                    IDEMPOTENCY_KEY, key, created_after=_run_started(context)
                )
            snapshot = snapshot_of(found) if found is not None else None
        if snapshot is None:
            return None
        if snapshot.known_status == BatchStatus.FAILED:
            self.log.info(
                "Batch %s of an earlier try failed (not billed); submitting a new one", snapshot.batch_id
            )
            return None
        self.log.info(
            "Re-attaching to batch %s (%s) created by an earlier try", snapshot.batch_id, snapshot.status
        )
        return snapshot

    def _submit(self, context: Context, source: Any, key: str) -> BatchSnapshot:
        input_file_id = self.input_file_id
        if source is not None:
            # Raises OpenAIBatchInvalidInput naming every bad line: nothing uploaded, nothing billed.
            report = batch_requests.require_valid_batch_file(source, endpoint=self.endpoint)
            self.log.info("Validated %d requests (%d bytes); uploading", report.requests, report.bytes)
            with self.hook.explaining(f"Uploading {_jsonl_name(source)}"):
                uploaded = self.hook.upload_file(
                    source, filename=_jsonl_name(source), expires_after_seconds=self.input_expires_after
                )
            input_file_id = uploaded.id
        ti = context["ti"]
        tags = dict(
            zip(AIRFLOW_METADATA_KEYS, (ti.dag_id, ti.task_id, ti.run_id, str(ti.map_index)), strict=True)
        )
        with self.hook.explaining(f"Creating the batch on file {input_file_id}"):
            batch = self.hook.create_batch(
                str(input_file_id),
                self.endpoint,
                completion_window=self.completion_window,
                metadata={**(self.metadata or {}), **{k: v[:512] for k, v in tags.items()}},
                output_expires_after_seconds=self.output_expires_after,
                idempotency_key=key,
            )
        return snapshot_of(batch)

    def _finish(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        reason = event["termination_reason"]
        if reason == "timeout" and self.cancel_on_timeout:
            cancel_quietly(self.hook, event["batch_id"], self.log)
        return finish_batch(
            context,
            event,
            hook=self.hook,
            max_failed_fraction=self.max_failed_fraction,
            output_path=self.output_path,
            outlets=self.outlets,
        )


# completion: shared with OpenAIBatchSensor ------------------------------------------------------


def finish_batch(
    context: Context,
    event: dict[str, Any],
    *,
    hook: OpenAIBatchHook,
    max_failed_fraction: float,
    output_path: Any = None,
    outlets: Iterable[Any] = (),
) -> dict[str, Any]:
    """Turn a wait's final event into the task's result: land results, push XComs, set the asset
    extra, and return the manifest, or raise the typed error for the outcome.

    Partial results of an expired or cancelled batch are landed *before* the error is raised, so
    paid-for output is never thrown away.
    """
    batch = snapshot_from_event(event)
    reason = event["termination_reason"]
    ti = context["ti"]
    ti.xcom_push(key=XCOM_BATCH_ID, value=batch.batch_id)
    ti.xcom_push(key=XCOM_OUTPUT_FILE_ID, value=batch.output_file_id)
    ti.xcom_push(key=XCOM_ERROR_FILE_ID, value=batch.error_file_id)
    landed = None
    if output_path is not None and (batch.output_file_id or batch.error_file_id):
        landed = land_results(hook, batch, output_path)
    result = manifest(batch, landed=landed)
    if reason != "completed" or partial_failure(batch, max_failed_fraction):
        # A failed task returns nothing; pushed here, the manifest still reaches downstream tasks
        # that run anyway (trigger_rule="all_done") through the usual ``.output``.
        ti.xcom_push(key=XCOM_RETURN_KEY, value=result)

    if reason != "completed":
        raise ending_error(reason, batch, detail=event.get("message") or "", where=hook.server)
    if partial_failure(batch, max_failed_fraction):
        counts = batch.request_counts or {}
        summary = landed["results_summary"] if landed else summarize_errors(hook, batch)
        raise OpenAIBatchPartialFailure(
            f"Batch {batch.batch_id} completed, but {counts.get('failed', 0):,} of {counts.get('total', 0):,}"
            f" lines failed (more than max_failed_fraction={max_failed_fraction}).",
            batch_id=batch.batch_id,
            errors_by_code=summary["errors_by_code"],
            failed_ids=summary["failed_ids"]["ids"],
            results_uri=landed["results_uri"] if landed else None,
            error_file_id=batch.error_file_id,
        )
    for outlet in outlets:
        if isinstance(outlet, Asset):
            context["outlet_events"][outlet].extra.update(
                {"batch_id": batch.batch_id, "output_file_id": batch.output_file_id}
            )
    return result


def manifest(batch: BatchSnapshot, *, landed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The small, JSON-only result of the task: the batch's state as the API last reported it
    (ids, counts, usage, metadata, every timestamp), and where landed results are. Results
    themselves never go into XCom."""
    return {**batch.to_dict(), **(landed or {})}


def partial_failure(batch: BatchSnapshot, max_failed_fraction: float) -> bool:
    """Whether a completed batch failed more lines than the task accepts."""
    return classify_completion(batch.request_counts, max_failed_fraction) == "too_many_failed_lines"


def summarize_errors(hook: OpenAIBatchHook, batch: BatchSnapshot) -> dict[str, Any]:
    """The summary of the error file alone (streamed through a local copy), for the message of a
    partial failure whose results were not landed. Best effort: a download that fails must not
    hide the partial failure itself, which is then reported without the codes."""
    if batch.error_file_id:
        try:
            with tempfile.TemporaryDirectory(prefix="openai-batch-errors-") as workdir:
                local = Path(workdir) / "error.jsonl"
                hook.download_file(batch.error_file_id, local)
                return summarize(error_file=local, id_limit=OpenAIBatchPartialFailure.SHOWN_IDS).to_dict()
        except Exception as exc:
            log.warning("Could not read error file %s to summarize it: %s", batch.error_file_id, exc)
    return summarize().to_dict()


def require_writable(output_path: Any) -> None:
    """Refuse, before anything is uploaded, an ``output_path`` that results could not be written to:
    an unknown scheme, a store whose package is not installed, a location without write access.

    A probe file is written next to the destination and removed, the one test that every store
    answers truthfully; found only after a day-long batch, the same error would cost the wait.
    """
    try:
        destination = as_path(output_path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        probe = destination.parent / f".{destination.name}.write-check"
        with probe.open("wb") as handle:
            handle.write(b"")
        with contextlib.suppress(Exception):  # writing is what matters; some stores refuse deletes
            probe.unlink()
    except Exception as exc:
        raise OpenAIBatchConfigError(
            f"output_path {str(output_path)!r} cannot be written to ({type(exc).__name__}: {exc}). Nothing"
            " was uploaded or submitted. Fix the path, its storage connection, or install the"
            " filesystem package for its scheme (for example s3fs for s3://)."
        ) from None


def land_results(hook: OpenAIBatchHook, batch: BatchSnapshot, output_path: Any) -> dict[str, Any]:
    """Download the result files and the input, and write the input-ordered join to ``output_path``;
    a failure says where the results are and that a rerun costs nothing."""
    try:
        return _land(hook, batch, output_path)
    except Exception as exc:
        files = ", ".join(
            f"{name} file {file_id}"
            for name, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id))
            if file_id
        )
        raise OpenAIBatchLandingError(
            f"Batch {batch.batch_id} is {batch.status}, but its results could not be written to"
            f" {str(output_path)!r} ({type(exc).__name__}: {exc}). They are safe in OpenAI's {files}."
            " Fix output_path and clear or rerun the task: it re-attaches to this batch and only"
            " lands the results again, without a new batch or a new bill.",
            batch_id=batch.batch_id,
        ) from exc


def _land(hook: OpenAIBatchHook, batch: BatchSnapshot, output_path: Any) -> dict[str, Any]:
    destination = as_path(output_path)
    destination.parent.mkdir(parents=True, exist_ok=True)
    input_file_id = batch.input_file_id or hook.get_batch(batch.batch_id).input_file_id  # schema-1 events
    with tempfile.TemporaryDirectory(prefix="openai-batch-results-") as workdir:

        def download(name: str, file_id: str | None) -> Path | None:
            if not file_id:
                return None
            local = Path(workdir) / f"{name}.jsonl"
            hook.download_file(file_id, local)
            return local

        input_file = download("input", input_file_id)
        if input_file is None:
            raise ValueError(f"Batch {batch.batch_id} names no input file to join its results to.")
        summary = write_joined(
            input_file=input_file,
            destination=destination,
            output_file=download("output", batch.output_file_id),
            error_file=download("error", batch.error_file_id),
        )
    return {"results_uri": str(destination), "results_summary": summary.to_dict()}


def cancel_quietly(hook: OpenAIBatchHook, batch_id: str, logger: Any) -> None:
    """Cancel, logging instead of raising: a failed cancel must not hide the task's real outcome."""
    try:
        hook.cancel_batch(batch_id)
        logger.info("Cancelled batch %s", batch_id)
    except Exception as exc:
        logger.warning("Could not cancel batch %s: %s", batch_id, exc)


def submission_key(context: Context, endpoint: str, fingerprint: str) -> str:
    """Identity of one submission: the task instance (never the try number) and its input."""
    ti = context["ti"]
    parts = (ti.dag_id, ti.task_id, ti.run_id, str(ti.map_index), endpoint, fingerprint)
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:48]


def _fingerprint(source: Any, input_file_id: str | None = None) -> str:
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


def _remember(context: Context, batch_id: str, key: str) -> None:
    """Keep the batch id where a retry finds it without listing batches (Airflow 3.3+)."""
    store = context.get("task_state_store")
    if store is not None:
        store.set(STATE_BATCH_ID, batch_id)
        store.set(STATE_SUBMISSION_KEY, key)


def _run_started(context: Context) -> float | None:
    """Lower bound for the metadata lookup: nothing this run created predates the run itself."""
    dag_run = context.get("dag_run")
    started = getattr(dag_run, "start_date", None) or getattr(dag_run, "run_after", None)
    return started.timestamp() - 300 if started else None


def as_path(value: str | os.PathLike[str] | ObjectStoragePath) -> Path | ObjectStoragePath:
    """A local ``Path``, or an ``ObjectStoragePath`` for URLs such as ``s3://bucket/key``."""
    if isinstance(value, ObjectStoragePath):
        return value
    return ObjectStoragePath(str(value)) if "://" in str(value) else Path(value)


def _jsonl_name(source: Any) -> str:
    name = Path(str(getattr(source, "name", source))).name
    return name if name.endswith(".jsonl") else f"{name}.jsonl"
