"""Landing results: the input-ordered join of a batch's files (or of a job's rounds), written to
``output_path`` as JSONL (the file of record, raw bodies included) or as Parquet (typed columns for ETL,
converted from the JSONL in one streaming pass, :mod:`~airflow_provider_batch.parquet`).

:func:`require_writable` runs before anything is uploaded, so a destination that cannot work is
found before a day-long batch instead of after it. :func:`land_results` runs once the batch has
ended; if it fails, the results are still in OpenAI's files, and its error says so and that a
rerun re-attaches to the same batch at no cost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_batch.answers import UserSchema, check_user_schema
from airflow_provider_batch.exceptions import OpenAIBatchConfigError, OpenAIBatchLandingError
from airflow_provider_batch.parquet import OUTPUT_FORMATS, output_format_for, require_parquet, write_parquet
from airflow_provider_batch.results import Destination, RowOptions, write_joined
from airflow_provider_batch.round_files import fetch_round
from airflow_provider_batch.rounds import close_round

if TYPE_CHECKING:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_batch.job import JobState
    from airflow_provider_batch.status import BatchSnapshot


def as_path(value: str | os.PathLike[str] | ObjectStoragePath) -> Path | ObjectStoragePath:
    """A local ``Path``, or an ``ObjectStoragePath`` for URLs such as ``s3://bucket/key``."""
    if isinstance(value, ObjectStoragePath):
        return value
    return ObjectStoragePath(str(value)) if "://" in str(value) else Path(value)


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
        # Through the filesystem itself: ObjectStoragePath.open would report the probe as an output.
        opened = probe.fs.open(probe.path, "wb") if isinstance(probe, ObjectStoragePath) else probe.open("wb")
        with opened as handle:
            handle.write(b"")
        with contextlib.suppress(Exception):  # writing is what matters; some stores refuse deletes
            probe.unlink()
    except Exception as exc:
        raise OpenAIBatchConfigError(
            f"output_path {str(output_path)!r} cannot be written to ({type(exc).__name__}: {exc}). Nothing"
            " was uploaded or submitted. Fix the path, its storage connection, or install the"
            " filesystem package for its scheme (for example s3fs for s3://)."
        ) from None


def check_landing_arguments(output_format: str | None, output_schema: UserSchema | None) -> None:
    """Refuse, when the DAG is parsed, an ``output_format`` or an ``output_schema`` that could never work.

    :raises ValueError: naming the argument and what it expects.
    """
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, got {output_format!r}")
    if output_schema is not None:
        try:
            check_user_schema(output_schema)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"output_schema: {exc}") from None


def require_landing(output_path: Any, output_format: str | None) -> str:
    """Before anything is sent or waited for: ``output_path`` can be written (:func:`require_writable`) and
    the format's package is installed. Returns the format (``jsonl`` or ``parquet``)."""
    require_writable(output_path)
    chosen = output_format_for(output_path, output_format)
    if chosen == "parquet":
        require_parquet()
    return chosen


def land_results(
    hook: OpenAIBatchHook,
    batch: BatchSnapshot,
    output_path: Any,
    *,
    output_format: str = "jsonl",
    rows: RowOptions | None = None,
) -> dict[str, Any]:
    """Download the result files and the input, and write the input-ordered join to ``output_path``;
    a failure says where the results are and that a rerun costs nothing.

    :param output_format: ``jsonl`` or ``parquet``.
    :param rows: what the rows carry (the request body) and the schema every reply must match.
    """
    try:
        return _land(hook, batch, output_path, output_format, rows)
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


def _land(
    hook: OpenAIBatchHook, batch: BatchSnapshot, output_path: Any, output_format: str, rows: RowOptions | None
) -> dict[str, Any]:
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
        output_file = download("output", batch.output_file_id)
        error_file = download("error", batch.error_file_id)
        with _landed_file(destination, output_format) as target:
            summary = write_joined(
                input_file=input_file,
                destination=target,
                output_file=output_file,
                error_file=error_file,
                options=rows,
                batch_id=batch.batch_id,
            )
    return {"results_uri": str(destination), "results_summary": summary.to_dict()}


def land_job_results(
    hook: OpenAIBatchHook,
    state: JobState,
    output_path: Any,
    *,
    output_format: str = "jsonl",
    rows: RowOptions | None = None,
) -> dict[str, Any]:
    """Write a job's merged results to ``output_path``: one row per input line, in input order, each
    its last attempt with the round that made it (:func:`~.rounds.close_round`).

    The rounds are replayed from the API's files, one after the other, each merged into the previous
    round's merged file; only the last merge is written to ``output_path``. Memory stays that of one
    batch's result index; local disk holds one round's files at a time.
    """
    try:
        with tempfile.TemporaryDirectory(prefix="openai-batch-job-") as workdir:
            destination = as_path(output_path)
            destination.parent.mkdir(parents=True, exist_ok=True)
            previous: Path | None = None
            for job_round in state.rounds:
                intermediate = Path(workdir) / f"merged-{job_round.number:03d}.jsonl"
                round_dir = Path(workdir) / f"round-{job_round.number:03d}"
                round_dir.mkdir()
                input_file, batches = fetch_round(hook, job_round, round_dir)
                last = job_round is state.rounds[-1]
                target = (
                    _landed_file(destination, output_format) if last else contextlib.nullcontext(intermediate)
                )
                with target as merged:
                    plan = close_round(
                        round_number=job_round.number,
                        input_file=input_file,
                        batches=batches,
                        merged=merged,
                        previous_merged=previous,
                        options=rows,
                    )
                shutil.rmtree(round_dir)
                if previous is not None:
                    previous.unlink()
                previous = intermediate
    except Exception as exc:
        batch_ids = ", ".join(job_batch.batch.batch_id for job_batch in state.batches())
        raise OpenAIBatchLandingError(
            f"The job's results could not be written to {str(output_path)!r} ({type(exc).__name__}: {exc})."
            f" They are safe in the output and error files of its batches ({batch_ids}). Fix output_path and"
            " clear or rerun the task: it re-attaches to these batches and only lands the results again,"
            " without a new batch or a new bill.",
            batch_id=state.rounds[0].batches[0].batch.batch_id,
        ) from exc
    assert plan.merged is not None  # close_round returns the merged summary whenever it writes one
    return {"results_uri": str(destination), "results_summary": plan.merged.to_dict()}


@contextlib.contextmanager
def _landed_file(destination: Any, output_format: str) -> Iterator[Destination]:
    """Where to write the landed rows (JSONL): ``destination`` itself, or for Parquet a local temporary
    file, converted into ``destination`` in one streaming pass once written."""
    if output_format != "parquet":
        yield destination
        return
    with tempfile.TemporaryDirectory(prefix="openai-batch-parquet-") as workdir:
        rows_file = Path(workdir) / "rows.jsonl"
        yield rows_file
        write_parquet(rows_file, destination)
