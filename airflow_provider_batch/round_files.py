"""A round's files, fetched back from the API: what closing a round and merging a job's results read.

A job's worker is stateless between rounds: it may resume on another machine, a day later, after a crash.
So nothing a round needs is kept on a worker's disk; every file is where the API keeps it. The round's input
is the concatenation of its batches' input files, in shard order (that is exactly what was submitted, byte
for byte, so it is also the safest thing to join results to), and each batch's output and error files hold
its results. :func:`fetch_round` streams them into a local directory, one file at a time, for
:func:`~airflow_provider_batch.rounds.close_round` to read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from airflow_provider_batch.rounds import RoundBatch

if TYPE_CHECKING:
    from airflow_provider_batch.hooks.batch import OpenAIBatchHook
    from airflow_provider_batch.job import JobRound


def fetch_round(hook: OpenAIBatchHook, job_round: JobRound, directory: Path) -> tuple[Path, list[RoundBatch]]:
    """Download a round's input (its batches' input files, concatenated) and each batch's result files.

    :return: the round's input file and its batches for :func:`~.rounds.close_round`, in shard order.
    :raises ValueError: when a batch names no input file (a server that does not report it).
    """
    prefix = f"round-{job_round.number:03d}"
    input_file = directory / f"{prefix}-input.jsonl"
    batches = []
    with input_file.open("wb") as sink:
        for position, job_batch in enumerate(job_round.batches, 1):
            batch = job_batch.batch
            if not batch.input_file_id:
                raise ValueError(f"Batch {batch.batch_id} names no input file: its round cannot be closed.")
            if hook.download_file(batch.input_file_id, sink) and not _ends_with_newline(sink):
                sink.write(b"\n")  # an unterminated last line must not run into the next shard's first
            files = [
                _download(hook, file_id, directory / f"{prefix}-{position:05d}-{name}.jsonl")
                for name, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id))
            ]
            last = position == len(job_round.batches)
            batches.append(
                RoundBatch(
                    status=batch.status,
                    output_file=files[0],
                    error_file=files[1],
                    # The last batch holds "the rest": an input_file_id batch's count may be unknown.
                    requests=None if last else job_batch.lines,
                    batch_id=batch.batch_id,
                )
            )
    return input_file, batches


def _download(hook: OpenAIBatchHook, file_id: str | None, local: Path) -> Path | None:
    if not file_id:
        return None
    hook.download_file(file_id, local)
    return local


def _ends_with_newline(sink: BinaryIO) -> bool:
    sink.flush()
    with open(sink.name, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) == b"\n"
