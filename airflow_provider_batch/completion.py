"""Completion: what the end of a wait means for the task, shared by the operator and the sensor.

:func:`finish_batch` turns a wait's final event into the task's result: it pushes the ids, lands
the results (before raising, so paid-for output is never thrown away), applies the failed-line
policy, and returns the small manifest or raises the error for the ending
(:func:`~airflow_provider_batch.exceptions.ending_error`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset

from airflow_provider_batch.answers import INVALID_OUTPUT
from airflow_provider_batch.events import snapshot_from_event
from airflow_provider_batch.exceptions import OpenAIBatchPartialFailure, ending_error
from airflow_provider_batch.landing import land_results
from airflow_provider_batch.lineage import report_output
from airflow_provider_batch.results import RowOptions, summarize
from airflow_provider_batch.status import BatchSnapshot, classify_completion

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_batch.hooks.batch import OpenAIBatchHook

log = logging.getLogger(__name__)

XCOM_BATCH_ID = "batch_id"
XCOM_OUTPUT_FILE_ID = "output_file_id"
XCOM_ERROR_FILE_ID = "error_file_id"
XCOM_RETURN_KEY = "return_value"


def finish_batch(
    context: Context,
    event: dict[str, Any],
    *,
    hook: OpenAIBatchHook,
    max_failed_fraction: float,
    output_path: Any = None,
    output_format: str = "jsonl",
    rows: RowOptions | None = None,
    invalid_outputs: int | None = None,
    fail_on_invalid_output: bool = True,
    outlets: Iterable[Any] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Turn a wait's final event into the task's result: land results, push XComs, set the asset
    extra, and return the manifest, or raise the typed error for the outcome.

    Partial results of an expired or cancelled batch are landed *before* the error is raised, so
    paid-for output is never thrown away, and reported to lineage as the task's output once written.
    ``extra`` adds keys to the manifest (the cost).

    Replies that are not the structured output asked for (``invalid_output``) are lines the API counts
    as completed; they count as failed too, unless ``fail_on_invalid_output`` is false. Their number is
    ``invalid_outputs`` when the caller read the batch's files already, else what landing found.
    """
    batch = snapshot_from_event(event)
    reason = event["termination_reason"]
    ti = context["ti"]
    ti.xcom_push(key=XCOM_BATCH_ID, value=batch.batch_id)
    ti.xcom_push(key=XCOM_OUTPUT_FILE_ID, value=batch.output_file_id)
    ti.xcom_push(key=XCOM_ERROR_FILE_ID, value=batch.error_file_id)
    landed = None
    if output_path is not None and (batch.output_file_id or batch.error_file_id):
        landed = land_results(hook, batch, output_path, output_format=output_format, rows=rows)
        report_output(hook, landed["results_uri"])  # written, whatever the task's outcome
    if invalid_outputs is None:
        invalid_outputs = landed["results_summary"]["errors_by_code"].get(INVALID_OUTPUT, 0) if landed else 0
    if invalid_outputs:  # the API counts these lines completed: say it, whatever the task makes of them
        log.warning(
            "%s of the batch's replies are not the structured output asked for (invalid_output)%s",
            f"{invalid_outputs:,}",
            "" if fail_on_invalid_output else "; fail_on_invalid_output=False: they do not fail the task",
        )
    too_many_failed = partial_failure(
        batch, max_failed_fraction, also_failed=invalid_outputs if fail_on_invalid_output else 0
    )
    result = {**manifest(batch, landed=landed), **(extra or {})}
    if reason != "completed" or too_many_failed:
        # A failed task returns nothing; pushed here, the manifest still reaches downstream tasks
        # that run anyway (trigger_rule="all_done") through the usual ``.output``.
        ti.xcom_push(key=XCOM_RETURN_KEY, value=result)

    if reason != "completed":
        raise ending_error(reason, batch, detail=event.get("message") or "", where=hook.server)
    if too_many_failed:
        counts = batch.request_counts or {}
        summary = landed["results_summary"] if landed else summarize_errors(hook, batch)
        invalid = f", {invalid_outputs:,} more replied invalid output" if invalid_outputs else ""
        raise OpenAIBatchPartialFailure(
            f"Batch {batch.batch_id} completed, but {counts.get('failed', 0):,} of {counts.get('total', 0):,}"
            f" lines failed{invalid} (more than max_failed_fraction={max_failed_fraction}).",
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


def partial_failure(batch: BatchSnapshot, max_failed_fraction: float, *, also_failed: int = 0) -> bool:
    """Whether a completed batch failed more lines than the task accepts; ``also_failed`` lines the API
    counts as completed fail too (replies that are not the structured output asked for)."""
    counts = batch.request_counts
    if also_failed and counts:
        counts = {**counts, "failed": counts.get("failed", 0) + also_failed}
    return classify_completion(counts, max_failed_fraction) == "too_many_failed_lines"


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


def cancel_quietly(hook: OpenAIBatchHook, batch_id: str, logger: Any) -> None:
    """Cancel, logging instead of raising: a failed cancel must not hide the task's real outcome."""
    try:
        hook.cancel_batch(batch_id)
        logger.info("Cancelled batch %s", batch_id)
    except Exception as exc:
        logger.warning("Could not cancel batch %s: %s", batch_id, exc)
