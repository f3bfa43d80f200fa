"""Rounds of a job: which lines a next round resubmits, and how the rounds' results merge into one file.

A job runs its input as batches (shards); when a round of batches has ended, the lines without a success
are resubmitted, and only those, up to ``max_rounds`` rounds (issue 12). Two promises shape this module:

* **No line is paid for twice** (but by choice). A line is resubmitted only when the request never ran (its
  batch expired first, or no result line came back at all), when it failed in a way a later attempt can
  fix (rate limits, server errors), or, the one paid retry, when its reply is not the structured output
  it asked for (``invalid_output``): a row the next task cannot use. A success is never resubmitted, nor
  a failure the same bytes would meet again (400, 401, 404...), nor anything of a job the user cancelled.
  :data:`RULES` is the whole rule, in one table, and :func:`classify_line` applies it to plain values.
* **One result file, however many rounds.** The merged file has one row per input line, in input order,
  across all shards and rounds: the row format of :func:`~airflow_provider_batch.results.write_joined`,
  ``round`` being the 1-based round whose attempt the row is. A line's row is its last attempt.

:func:`close_round` does both for one round in one streaming pass, batch by batch: it indexes one batch's
result files at a time (the per-request index of :mod:`~airflow_provider_batch.results`, so memory is
bounded by the largest batch, not by the job) and walks the round's input once, writing the next round's
input (the original request lines, byte for byte) and the merged file, which it interleaves with the
previous round's merged file. Both walks are in input order, so neither needs more than a line at a time.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import IO, Any

import msgspec
from airflow.sdk import ObjectStoragePath

# One index, one parser and one row for result files: results.py's internals, shared on purpose.
from airflow_provider_batch.answers import INVALID_OUTPUT
from airflow_provider_batch.jsonl import JsonlLines
from airflow_provider_batch.results import (
    CANCELLED,
    DEFAULT_ID_LIMIT,
    EXPIRED,
    MALFORMED_INPUT,
    MISSING,
    Destination,
    IdSample,
    ResultSource,
    ResultSummary,
    RowOptions,
    RowSink,
    _index_results,
    _Indexed,
    _open_path,
    _open_source,
    _Row,
    _seekable_copy,
    _Slot,
    _Tally,
    failure_code,
    make_row,
    read_input_line,
    read_slot,
)
from airflow_provider_batch.status import TERMINAL, BatchStatus, parse_status


class Verdict(StrEnum):
    """What becomes of one request after a round."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    """Resubmitted in the next round (if there is one)."""
    FINAL = "final"
    """Failed for good: another attempt would fail the same way, or the job was cancelled."""


BATCH_FAILED = "batch_failed"
"""Reason of a line without a result in a batch that ``failed`` (validation: the batch never ran)."""
SUCCESS = "ok"
"""Reason of a succeeded line."""

RULES: Mapping[str, Verdict] = MappingProxyType(
    {
        # No result line at all in a completed or expired batch: the request never finished, so it was not
        # billed (only completed requests are) and running it now pays for it once.
        MISSING: Verdict.RETRY,
        # Not run before the 24 h window closed (openai-batch-api.md §12): the guide says resubmit these.
        EXPIRED: Verdict.RETRY,
        # The user cancelled: a cancel ends the job, so nothing of it is resubmitted, whatever its error.
        CANCELLED: Verdict.FINAL,
        # The batch failed validation and never ran: the same lines would fail it again.
        BATCH_FAILED: Verdict.FINAL,
        # Error codes that decide whatever the status (or without one: a top-level error).
        "rate_limit_exceeded": Verdict.RETRY,
        "server_error": Verdict.RETRY,  # also the type OpenAI's 5xx bodies carry in place of a code
        "insufficient_quota": Verdict.FINAL,  # a 429 that only a payment fixes, not a later attempt
        # The request ran (and was billed), but its reply is not the structured output it asked for. A
        # model's reply varies from one attempt to the next, and a row the next task cannot use is worth
        # one more paid attempt: the only retry that pays for a line again (max_rounds=1 turns it off).
        INVALID_OUTPUT: Verdict.RETRY,
        # HTTP statuses, for a code not named above: the statuses the provider's own call retry policy treats
        # as transient (hooks/retry.py), so a line and a call are retried for the same reasons.
        "http_408": Verdict.RETRY,
        "http_429": Verdict.RETRY,
        "http_5xx": Verdict.RETRY,
    }
)
"""The resubmission rule, keyed by a line's code: its error code when the table names it, else its HTTP
status (``http_<status>``, every 5xx as ``http_5xx``). Anything the table does not name is
:attr:`Verdict.FINAL`: every other 4xx (``invalid_request_error``, ``invalid_prompt``, a 401, a 404: the
same bytes would be refused again) and any unknown failure, which is reported rather than paid for again.
Codes the table does not name never override a retryable status: :class:`BatchResult` falls back to the
error's ``type`` when the body has no code, and a type is too coarse to overrule the status. A success
is always :attr:`Verdict.SUCCEEDED`, and in a cancelled job every ``retry`` becomes ``final`` with reason
``batch_cancelled``.

408 (request timeout) is retried: the server gave up waiting, nothing was produced, and the provider's
call policy retries it too. 409 (conflict) is final: the provider's call policy treats it as a real
answer, and a request line that conflicts with the state of a resource conflicts again when resubmitted
unchanged (the SDK retries 409 for lock contention on its own API objects, which a batch line has none of).
"""


@dataclass(frozen=True)
class LineVerdict:
    verdict: Verdict
    reason: str
    """The code the verdict was taken on: ``ok``, ``missing``, the line's error code, ``http_<status>``,
    ``no_response``, ``batch_cancelled`` (a cancelled job), ``batch_failed`` or ``malformed_input``."""


def classify_line(
    *,
    batch_status: str,
    ok: bool | None,
    status_code: int | None = None,
    error_code: str | None = None,
) -> LineVerdict:
    """Apply :data:`RULES` to one request.

    :param batch_status: how the request's batch ended (a terminal status); pass ``cancelled`` for every
        line of a job in which any batch was cancelled, since a cancel ends the whole job.
    :param ok: the result line's ``ok``, or None when the request has no result line at all.
    :param status_code: the result line's ``response.status_code``.
    :param error_code: the result line's error code, as :class:`~airflow_provider_batch.results.BatchResult`
        reads it (top-level ``error.code``, else the body's error code or type).
    :raises ValueError: when ``batch_status`` is not terminal: a running batch's lines have no verdict yet.
    """
    status = _terminal(batch_status)
    if ok:
        return _SUCCEEDED
    if ok is None:
        reason = {BatchStatus.CANCELLED: CANCELLED, BatchStatus.FAILED: BATCH_FAILED}.get(status, MISSING)
        key = reason
    else:
        reason = failure_code(status_code, error_code)
        key = error_code if error_code is not None and error_code in RULES else _status_key(status_code)
    verdict = RULES.get(key, Verdict.FINAL)
    if verdict is Verdict.RETRY and status is BatchStatus.CANCELLED:
        return LineVerdict(Verdict.FINAL, CANCELLED)
    return LineVerdict(verdict, reason)


_SUCCEEDED = LineVerdict(Verdict.SUCCEEDED, SUCCESS)


def _terminal(batch_status: str) -> BatchStatus:
    status = batch_status if isinstance(batch_status, BatchStatus) else parse_status(batch_status)
    if status not in TERMINAL:
        raise ValueError(f"Batch status {batch_status!r} is not terminal: its lines have no verdict yet.")
    return status


def _status_key(status_code: int | None) -> str:
    if status_code is None:
        return "no_response"
    return "http_5xx" if 500 <= status_code < 600 else f"http_{status_code}"


# Rounds -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundBatch:
    """One batch of a round: how it ended, its result files, and which of the round's requests it held.

    Batches are consecutive ranges of the round's input, in order (that is how the input is split), so a
    count per batch is enough to know which batch a line without any result line belonged to, and which of
    its result files to look it up in. Only one batch's index is in memory at a time.
    """

    status: str
    """A terminal status: ``completed``, ``expired``, ``cancelled`` or ``failed``."""
    output_file: ResultSource | None = None
    error_file: ResultSource | None = None
    requests: int | None = None
    """Non-blank lines of the round's input this batch held; None (only for the last batch): the rest."""
    batch_id: str | None = None
    """The batch's id, written in its rows."""


@dataclass(frozen=True)
class MergedSummary:
    """What a merged file says, in the terms of :class:`~airflow_provider_batch.results.ResultSummary`."""

    requests: int
    """Rows: one per non-blank line of the original input."""
    succeeded: int
    errors_by_code: Mapping[str, int]
    """Failed rows by :func:`failure_code` (``missing`` and ``malformed_input`` included)."""
    by_round: Mapping[int, Mapping[str, int]]
    """``{round: {"succeeded": n, "failed": n}}``: which round's attempt the rows are."""
    failed_ids: IdSample

    @property
    def failed(self) -> int:
        return self.requests - self.succeeded

    def to_dict(self) -> dict[str, Any]:
        """JSON-native values only (rounds become string keys)."""
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
            "by_round": {str(number): dict(counts) for number, counts in sorted(self.by_round.items())},
            "failed_ids": self.failed_ids.to_dict(),
        }


@dataclass(frozen=True)
class RoundPlan:
    """What a round ended with, and what the next one resubmits."""

    round: int
    counts: Mapping[Verdict, Mapping[str, int]]
    """Requests of the round by verdict, then by reason (see :class:`LineVerdict`)."""
    resubmitted: IdSample
    """The lines written to the next round's input: their total and first ``custom_id`` values."""
    cancelled: bool
    """A batch of the round was cancelled: the job ends, and nothing is resubmitted."""
    results: ResultSummary
    """The round's result files, counted as :func:`~airflow_provider_batch.results.summarize` does."""
    merged: MergedSummary | None = None
    """The merged file after this round, when one was written."""

    @property
    def requests(self) -> int:
        """Non-blank lines of the round's input."""
        return sum(self.total(verdict) for verdict in Verdict)

    @property
    def next_round(self) -> bool:
        """Whether any line is left to resubmit; the caller still applies its ``max_rounds``."""
        return self.resubmitted.total > 0

    def total(self, verdict: Verdict) -> int:
        return sum(self.counts.get(verdict, {}).values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-native values only, for an XCom manifest."""
        return {
            "round": self.round,
            "requests": self.requests,
            "counts": {
                str(verdict): dict(sorted(self.counts.get(verdict, {}).items())) for verdict in Verdict
            },
            "resubmitted": self.resubmitted.to_dict(),
            "next_round": self.next_round,
            "cancelled": self.cancelled,
            "results": self.results.to_dict(),
            "merged": self.merged.to_dict() if self.merged is not None else None,
        }


def close_round(
    *,
    round_number: int,
    input_file: ResultSource,
    batches: Sequence[RoundBatch],
    next_input: Destination | None = None,
    merged: Destination | None = None,
    previous_merged: ResultSource | None = None,
    id_limit: int = DEFAULT_ID_LIMIT,
    options: RowOptions | None = None,
) -> RoundPlan:
    """Classify every request of a finished round, write the next round's input and the merged file.

    One pass over the round's input, batch by batch: each batch's output and error files are indexed
    (``custom_id`` to byte range), its range of input lines is walked in order, each line classified by
    :func:`classify_line`, and the index dropped before the next batch. Memory is that index for the largest
    batch plus a few blocks, whatever the size of the job.

    :param round_number: 1-based; the ``round`` of the rows this round writes.
    :param input_file: the round's input: the job's input in round 1, the previous ``next_input`` after.
    :param batches: the round's batches in input order; see :class:`RoundBatch`.
    :param next_input: where to write the lines to resubmit, unchanged (byte for byte, without blank lines),
        in input order; None to only count them (the last allowed round).
    :param merged: where to write the merged file; None to skip it. Must differ from ``previous_merged``,
        which is read while this is written.
    :param previous_merged: the merged file of the previous round; required with ``merged`` after round 1.
        Its rows are copied unchanged except those of this round's requests, which keep their ``line`` (the
        line in the original input) and take this round's attempt.
    :param id_limit: how many ids each id list keeps; totals stay exact.
    :param options: what the rows carry, and the caller's schema for every reply; a reply that is not the
        structured output asked for is ``invalid_output``, resubmitted like a retryable failure.
    :raises ValueError: when the files do not fit together: batch counts that do not add up to the input,
        result lines for requests outside their batch's range (the wrong files, or a wrong ``requests``
        count: resubmitting then could pay twice), or a round input that is not a subsequence of the
        previous merged file. The destinations are then incomplete.
    """
    _check_arguments(round_number, batches, merged, previous_merged)
    job_cancelled = any(_terminal(batch.status) is BatchStatus.CANCELLED for batch in batches)
    walk = _RoundWalk(_Tally(id_limit), id_limit, options or RowOptions(), round_number)
    merged_tally = _MergedTally(id_limit)
    with ExitStack() as stack:
        lines = iter(JsonlLines(stack.enter_context(_open_source(input_file))))
        resubmit = (
            RowSink(stack.enter_context(_open_path(next_input, "wb"))) if next_input is not None else None
        )
        rows = None
        if merged is not None:
            previous = (
                stack.enter_context(_open_source(previous_merged)) if previous_merged is not None else None
            )
            out = RowSink(stack.enter_context(_open_path(merged, "wb")))
            rows = _Merger(out, previous, merged_tally)
        for position, batch in enumerate(batches, 1):
            status = BatchStatus.CANCELLED if job_cancelled else _terminal(batch.status)
            with ExitStack() as files:
                sources = [
                    files.enter_context(_seekable_copy(label, source))
                    for label, source in (("output", batch.output_file), ("error", batch.error_file))
                    if source is not None
                ]
                index = _index_results(sources, walk.tally)
                taken = 0
                for number, _, raw in itertools.islice(lines, batch.requests):
                    taken += 1
                    walk.line(number, raw, status, index, sources, resubmit, rows, batch.batch_id)
            if batch.requests is not None and taken < batch.requests:
                raise ValueError(
                    f"Batch {position} holds {batch.requests} requests; the input had {taken} left."
                )
            if index:
                strays = ", ".join(repr(custom_id) for custom_id in itertools.islice(index, 5))
                raise ValueError(
                    f"Batch {position}'s result files name {len(index)} custom_id(s) absent from its range "
                    f"of the round's input ({strays}): wrong files or a wrong request count."
                )
            del index  # popping never shrinks a dict: free its table before the next batch's index
        if next(lines, None) is not None:
            raise ValueError("The round's input has more requests than its batches hold.")
        if rows is not None:
            rows.finish()
        if resubmit is not None:
            resubmit.flush()
    return RoundPlan(
        round=round_number,
        counts={verdict: dict(reasons) for verdict, reasons in walk.counts.items()},
        resubmitted=walk.tally.sample(walk.retry_ids, walk.retries),
        cancelled=job_cancelled,
        results=walk.results(),
        merged=merged_tally.summary() if merged is not None else None,
    )


def summarize_merged(source: ResultSource, *, id_limit: int = DEFAULT_ID_LIMIT) -> MergedSummary:
    """Count a merged file's rows in one streaming pass (what :func:`close_round` returns as it writes it).

    :raises ValueError: on a line that is not a merged row.
    """
    tally = _MergedTally(id_limit)
    with _open_source(source) as stream:
        for number, _, raw in JsonlLines(stream):
            tally.add(_decode_head(raw, number))
    return tally.summary()


# Internals --------------------------------------------------------------------------------------------------


class _RowHead(msgspec.Struct):
    """The fields of a merged row that routing and counting need; the body is skipped, not decoded."""

    custom_id: str | None
    line: int
    ok: bool
    status_code: int | None
    error_code: str | None
    round: int


_HEAD_DECODER = msgspec.json.Decoder(_RowHead)


def _decode_head(raw: bytes, number: int) -> _RowHead:
    try:
        return _HEAD_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"Line {number} of the merged file is not a merged row: {exc}") from exc


def _check_arguments(
    round_number: int,
    batches: Sequence[RoundBatch],
    merged: Destination | None,
    previous_merged: ResultSource | None,
) -> None:
    if round_number < 1:
        raise ValueError(f"Rounds are numbered from 1, not {round_number}.")
    if not batches:
        raise ValueError("A round has at least one batch.")
    for position, batch in enumerate(batches, 1):
        if parse_status(batch.status) not in TERMINAL:
            raise ValueError(f"Batch {position} is {batch.status!r}, not terminal: its round has not ended.")
        if batch.requests is None and position < len(batches):
            raise ValueError(f"Batch {position} needs a request count: only the last batch takes the rest.")
    if merged is not None:
        if previous_merged is not None and round_number == 1:
            raise ValueError("Round 1 has no previous merged file.")
        if previous_merged is None and round_number > 1:
            raise ValueError(f"Round {round_number} merges into the previous round's merged file: pass it.")
        if _same_file(merged, previous_merged):
            raise ValueError("The merged file is read and written at once: give it a new path per round.")


def _same_file(one: Destination, other: ResultSource | None) -> bool:
    if isinstance(one, ObjectStoragePath) or isinstance(other, ObjectStoragePath):
        return str(one) == str(other)
    if isinstance(other, str | os.PathLike):
        return os.path.abspath(one) == os.path.abspath(other)
    return False


@dataclass
class _MergedTally:
    id_limit: int
    requests: int = 0
    succeeded: int = 0
    by_code: dict[str, int] = field(default_factory=dict)
    succeeded_by_round: dict[int, int] = field(default_factory=dict)
    failed_by_round: dict[int, int] = field(default_factory=dict)
    failed_ids: list[str] = field(default_factory=list)

    def add(self, row: _RowHead | _Row) -> None:
        self.requests += 1
        if row.ok:
            self.succeeded += 1
            self.succeeded_by_round[row.round] = self.succeeded_by_round.get(row.round, 0) + 1
            return
        self.failed_by_round[row.round] = self.failed_by_round.get(row.round, 0) + 1
        code = failure_code(row.status_code, row.error_code)
        self.by_code[code] = self.by_code.get(code, 0) + 1
        if row.custom_id is not None and len(self.failed_ids) < self.id_limit:
            self.failed_ids.append(row.custom_id)

    def summary(self) -> MergedSummary:
        return MergedSummary(
            requests=self.requests,
            succeeded=self.succeeded,
            errors_by_code=dict(self.by_code),
            by_round={
                number: {
                    "succeeded": self.succeeded_by_round.get(number, 0),
                    "failed": self.failed_by_round.get(number, 0),
                }
                for number in sorted(self.succeeded_by_round.keys() | self.failed_by_round.keys())
            },
            failed_ids=IdSample(self.requests - self.succeeded, tuple(self.failed_ids)),
        )


class _Merger:
    """Write this round's rows into the previous merged file's sequence.

    The round's requests are a subsequence of the previous rows, in the same order, with unique
    ``custom_id`` values (the API rejects duplicates), so one forward walk of the previous file finds each
    request's row: the rows before it are copied as they are, and it is replaced.
    """

    def __init__(self, out: RowSink, previous: IO[bytes] | None, tally: _MergedTally) -> None:
        self.out = out
        self.previous: Iterator[tuple[int, int, bytes]] | None = (
            iter(JsonlLines(previous)) if previous is not None else None
        )
        self.tally = tally

    def add(self, row: _Row) -> None:
        """Write the row of one of the round's requests; after round 1 it takes the ``line`` of the
        request's row in the previous merged file (its line in the original input)."""
        if self.previous is not None:
            row.line = self._skip_to(row.custom_id)
        self.out.row(row)
        self.tally.add(row)

    def finish(self) -> None:
        if self.previous is not None:
            for number, _, raw in self.previous:
                self._keep(number, raw)
        self.out.flush()

    def _skip_to(self, custom_id: str | None) -> int:
        assert self.previous is not None
        if custom_id is None:
            raise ValueError("A round after the first has an input line without a readable custom_id.")
        for number, _, raw in self.previous:
            head = _decode_head(raw, number)
            if head.custom_id == custom_id:
                return head.line
            self.out.line(raw)
            self.tally.add(head)
        raise ValueError(
            f"Request {custom_id!r} has no row in the previous merged file after the rows of the requests "
            "before it: the round's input is not a subsequence of the previous round's."
        )

    def _keep(self, number: int, raw: bytes) -> None:
        self.out.line(raw)
        self.tally.add(_decode_head(raw, number))


class _RoundWalk:
    """The per-line work of :func:`close_round` and its counters."""

    def __init__(self, tally: _Tally, id_limit: int, options: RowOptions, round_number: int) -> None:
        self.tally = tally
        self.id_limit = id_limit
        self.options = options
        self.round = round_number
        self.counts: dict[Verdict, dict[str, int]] = {verdict: {} for verdict in Verdict}
        self.retries = 0
        self.retry_ids: list[str] = []
        self.requests = 0
        self.missing = 0
        self.missing_ids: list[str] = []

    def line(
        self,
        number: int,
        raw: bytes,
        status: BatchStatus,
        index: dict[str, _Slot],
        sources: list[_Indexed],
        resubmit: RowSink | None,
        rows: _Merger | None,
        batch_id: str | None,
    ) -> None:
        request = read_input_line(raw, number, self.tally)
        if request is None:
            self._count(LineVerdict(Verdict.FINAL, MALFORMED_INPUT))
            if rows is not None:
                rows.add(
                    make_row(number, None, None, self.options, round_number=self.round, batch_id=batch_id)
                )
            return
        custom_id = request.custom_id
        self.requests += 1
        # Popped, so what is left once the batch's range is walked are ids the range does not hold.
        slot = index.pop(custom_id, None)
        if slot is None:
            self.missing += 1
            if len(self.missing_ids) < self.id_limit:
                self.missing_ids.append(custom_id)
        # A success needs no re-read to be classified, unless its reply is checked or its row written.
        checked = request.expected is not None or self.options.output_schema is not None
        row = None
        if slot is not None and (rows is not None or checked or not slot[3]):
            result = read_slot(sources, slot, number)
            row = make_row(number, request, result, self.options, round_number=self.round, batch_id=batch_id)
            if result.ok and not row.ok:
                self.tally.invalid(custom_id)
        elif slot is None and rows is not None:
            row = make_row(number, request, None, self.options, round_number=self.round, batch_id=batch_id)
        if slot is not None and (row is None or row.ok):
            verdict = _SUCCEEDED
        else:
            verdict = classify_line(
                batch_status=status,
                ok=None if slot is None else False,
                status_code=row.status_code if row is not None else None,
                error_code=row.error_code if row is not None else None,
            )
        self._count(verdict)
        if verdict.verdict is Verdict.RETRY:
            self.retries += 1
            if len(self.retry_ids) < self.id_limit:
                self.retry_ids.append(custom_id)
            if resubmit is not None:
                resubmit.line(raw)
        if rows is not None:
            assert row is not None
            rows.add(row)

    def _count(self, verdict: LineVerdict) -> None:
        reasons = self.counts[verdict.verdict]
        reasons[verdict.reason] = reasons.get(verdict.reason, 0) + 1

    def results(self) -> ResultSummary:
        self.tally.requests = self.requests
        self.tally.missing = self.tally.sample(self.missing_ids, self.missing)
        self.tally.unknown = IdSample()  # close_round refuses result lines outside their batch
        return self.tally.summary()
