"""``OpenAIBatchOperator``: validate and upload requests, submit one batch (retry-safe), wait for it
without a worker, and hand a small manifest downstream.

The operator only orchestrates; each concept has its module: who a submission is
(:mod:`~airflow_provider_batch.identity`), what the end of a wait means for the task
(:mod:`~airflow_provider_batch.completion`), and where results land
(:mod:`~airflow_provider_batch.landing`). The order of :meth:`OpenAIBatchOperator.execute` is the
design:

0. **Check** what can be checked before paying: the endpoint, ``output_path``.
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
   :func:`~airflow_provider_batch.completion.finish_batch`, which lands results, applies the
   failed-line policy, and raises the typed error of the ending.

Cancellation policy: on our own timeout (``cancel_on_timeout``) and on a user kill
(``cancel_on_kill``: ``on_kill`` on the worker, the trigger's ``on_kill`` while deferred); never on a
polling error, because the batch's state is then unknown and a cancel cannot be undone.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import conf  # airflow.sdk.conf only exists from 3.2
from airflow.sdk import BaseOperator, ObjectStoragePath

from airflow_provider_batch import requests as batch_requests
from airflow_provider_batch.completion import XCOM_BATCH_ID, cancel_quietly, finish_batch, manifest
from airflow_provider_batch.events import build_event, validate_event
from airflow_provider_batch.exceptions import OpenAIBatchConfigError
from airflow_provider_batch.hooks.batch import IDEMPOTENCY_KEY, OpenAIBatchHook, snapshot_of
from airflow_provider_batch.identity import (
    AIRFLOW_METADATA_KEYS,
    STATE_BATCH_ID,
    STATE_SUBMISSION_KEY,
    identity_tags,
    input_fingerprint,
    remember,
    run_started,
    submission_key,
)
from airflow_provider_batch.landing import as_path, require_writable
from airflow_provider_batch.limits import MAX_METADATA_PAIRS, endpoint_problem
from airflow_provider_batch.links.batch import BATCH_URL_XCOM_KEY, OpenAIBatchLink, reserve_batch_url
from airflow_provider_batch.status import BatchSnapshot, BatchStatus, PollSchedule, decide
from airflow_provider_batch.triggers.batch import OpenAIBatchTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context

DEFER_METHOD_NAME = "execute_complete"
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
            key = submission_key(context, self.endpoint, input_fingerprint(source, self.input_file_id))
            batch = self._reattach(context, key) or self._submit(context, source, key)
        self.batch_id = batch.batch_id
        remember(context, batch.batch_id, key)
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
                    IDEMPOTENCY_KEY, key, created_after=run_started(context)
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
        with self.hook.explaining(f"Creating the batch on file {input_file_id}"):
            batch = self.hook.create_batch(
                str(input_file_id),
                self.endpoint,
                completion_window=self.completion_window,
                metadata={**(self.metadata or {}), **identity_tags(context)},
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


def _jsonl_name(source: Any) -> str:
    name = Path(str(getattr(source, "name", source))).name
    return name if name.endswith(".jsonl") else f"{name}.jsonl"
