"""Landing results: the input-ordered join of a batch's files, written to ``output_path``.

:func:`require_writable` runs before anything is uploaded, so a destination that cannot work is
found before a day-long batch instead of after it. :func:`land_results` runs once the batch has
ended; if it fails, the results are still in OpenAI's files, and its error says so and that a
rerun re-attaches to the same batch at no cost.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import ObjectStoragePath

from airflow_provider_batch.exceptions import OpenAIBatchConfigError, OpenAIBatchLandingError
from airflow_provider_batch.results import write_joined

if TYPE_CHECKING:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook
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
