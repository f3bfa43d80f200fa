"""The batch lifecycle: ``validating → in_progress → finalizing → completed``, with the ``failed``,
``expired`` and ``cancelling → cancelled`` branches.

One asyncio task drives each unfinished batch. It always re-reads the stored record and runs the
step for the stored status, so a batch resumes wherever it stood after a restart, and a cancel
written by the API between two chunks is seen at the next one. Lines are processed in chunks;
after each chunk the result lines are appended to partial files and the progress is committed
with the counts, so nothing is lost or written twice when the server stops in between.

Per-batch test controls ride in the batch ``metadata`` (any SDK can set them):
``emulator_line_delay``, ``emulator_validating_delay``, ``emulator_finalizing_delay``,
``emulator_cancelling_delay`` (seconds), ``emulator_expire_after_lines`` (expire once that many
lines are done) and ``emulator_fail_validation`` (an error code, e.g. ``token_limit_exceeded``).

The runner counts the lines it processes per ``custom_id`` (:class:`LineCounts`); the per-line
directive's ``times`` reads those counts.

The enqueued-token limit (``enqueued_token_limit``, ``enqueued_token_limits``) is applied per model
across every batch in flight: a batch is admitted at the end of ``validating`` (or at create, in
Azure's fail-fast mode) only if its input tokens and those the model's in-flight batches hold fit
the model's limit, and the check and the admission are one store transaction
(:meth:`Store.admit_batch`), so batches validated at the same moment cannot overfill it together.
:class:`EnqueuedTokens` keeps the highest total seen per model for ``GET /_emulator/stats``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from airflow_provider_batch.emulator.azure import canonical_endpoint, token_limit_message
from airflow_provider_batch.emulator.engines import Engine, usage_of, without_spent_directive
from airflow_provider_batch.emulator.errors import APIError
from airflow_provider_batch.emulator.settings import Settings
from airflow_provider_batch.emulator.store import (
    IN_FLIGHT_STATUSES,
    BatchRecord,
    FileRecord,
    Progress,
    Store,
    Usage,
)
from airflow_provider_batch.emulator.validation import FileReport, validate_input_file

log = logging.getLogger(__name__)

CHUNK_LINES = 500
DAY = 86_400
DEFAULT_FILE_TTL = 30 * DAY
UNFINISHED_LINE_ERRORS = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
}
TOKEN_LIMIT_MESSAGE = (
    "Enqueued token limit reached for {model} in organization org-emulator. Limit: {limit:,} enqueued tokens."
    " Please try again once some in_progress batches have been completed."
)


@dataclass(frozen=True)
class Controls:
    """The delays and forced outcomes that apply to one batch: server settings, overridden by
    the batch's ``emulator_*`` metadata."""

    validating_delay: float
    line_delay: float
    finalizing_delay: float
    cancelling_delay: float
    expire_after_lines: int | None
    fail_validation: str | None

    @classmethod
    def of(cls, batch: BatchRecord, settings: Settings) -> Controls:
        meta = batch.metadata or {}

        def seconds(name: str, default: float) -> float:
            try:
                return max(0.0, float(meta.get(f"emulator_{name}", default)))
            except ValueError:
                return default

        expire_after = meta.get("emulator_expire_after_lines", "")
        return cls(
            validating_delay=seconds("validating_delay", settings.validating_delay),
            line_delay=seconds("line_delay", settings.line_delay),
            finalizing_delay=seconds("finalizing_delay", settings.finalizing_delay),
            cancelling_delay=seconds("cancelling_delay", settings.cancelling_delay),
            expire_after_lines=int(expire_after) if expire_after.isdigit() else None,
            fail_validation=meta.get("emulator_fail_validation") or None,
        )


class LineCounts:
    """How many times each ``custom_id`` was processed: run through the engine with its result
    (success or error) written and committed, the lines a real API bills. Lines written as
    ``batch_expired`` or ``batch_cancelled`` never ran, and a line answered while its batch was
    being cancelled is dropped unwritten, so neither counts.

    Kept in memory since the server started or ``DELETE /_emulator/stats``: one dict entry per
    distinct ``custom_id`` (about 100 bytes each: 50,000 distinct ids take a few MB), which a test
    server can afford; the reset frees it."""

    def __init__(self) -> None:
        self.processed = 0
        self.by_custom_id: Counter[str] = Counter()

    def runs(self, custom_id: str) -> int:
        return self.by_custom_id.get(custom_id, 0)

    def add(self, custom_ids: Iterable[str]) -> None:
        for custom_id in custom_ids:
            self.by_custom_id[custom_id] += 1
            self.processed += 1

    def clear(self) -> None:
        self.processed = 0
        self.by_custom_id = Counter()

    def to_json(self) -> dict[str, Any]:
        return {"processed": self.processed, "custom_ids": dict(self.by_custom_id)}


class EnqueuedTokens:
    """What the enqueued-token limit saw, per model, since the server started or
    ``DELETE /_emulator/stats``: the highest total that in-flight batches held at once, and how many
    batches the limit refused. The current totals are read from the store (they survive a restart);
    the peaks and refusals live in memory, and a peak is never reported below the current total."""

    def __init__(self) -> None:
        self.peak: dict[str, int] = {}
        self.refused: Counter[str] = Counter()

    def saw(self, model: str | None, total: int) -> None:
        """The model's in-flight batches hold ``total`` tokens now (after an admission)."""
        if model is not None and total > self.peak.get(model, 0):
            self.peak[model] = total

    def refuse(self, model: str | None) -> None:
        self.refused[model or ""] += 1

    def clear(self) -> None:
        """Start again from now: the peaks restart from the current totals."""
        self.peak = {}
        self.refused = Counter()

    def to_json(self, current: dict[str, int]) -> dict[str, Any]:
        peak = dict(self.peak)
        for model, tokens in current.items():
            peak[model] = max(peak.get(model, 0), tokens)
        return {"current": current, "peak": peak, "refused": dict(self.refused)}


def scaled(seconds: float, settings: Settings) -> float:
    """Real seconds that ``seconds`` of emulated time last under the current time scale."""
    return seconds / settings.time_scale if settings.time_scale > 0 else seconds


class BatchRunner:
    """Owns one task per unfinished batch.

    A cancel or an expiry changes the stored batch and calls :meth:`wake`; a task sleeping through one
    of the ``emulator_*_delay`` controls is nudged out of that sleep, so it acts on the change now rather
    than after the delay (which a test may have made an hour long).
    """

    def __init__(self, store: Store, engine: Engine, settings: Settings, dialect: str = "openai") -> None:
        self.store = store
        self.engine = engine
        self.settings = settings
        self.dialect = dialect
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._nudges: dict[str, asyncio.Event] = {}
        self.lines = LineCounts()
        self.enqueued = EnqueuedTokens()

    def resume_all(self) -> None:
        """Pick up every batch a previous server left unfinished."""
        for batch in self.store.unfinished_batches():
            self.wake(batch.id)

    def wake(self, batch_id: str) -> None:
        """Make sure a task drives ``batch_id`` and looks at its stored state again now."""
        task = self._tasks.get(batch_id)
        if task is None or task.done():
            self._tasks[batch_id] = asyncio.create_task(self._drive(batch_id), name=f"batch {batch_id}")
        else:
            self._nudges.setdefault(batch_id, asyncio.Event()).set()

    async def _nap(self, batch_id: str, seconds: float) -> bool:
        """Sleep ``seconds`` unless :meth:`wake` nudges the batch first; True when it did."""
        nudge = self._nudges.setdefault(batch_id, asyncio.Event())
        try:
            await asyncio.wait_for(nudge.wait(), seconds)
        except TimeoutError:
            return False
        nudge.clear()
        return True

    async def _nap_until(self, batch_id: str, moment: float) -> bool:
        """:meth:`_nap` until ``moment`` (unix time): a step that was nudged and runs again waits only
        for what is left of its phase."""
        return await self._nap(batch_id, moment - time.time())

    async def stop(self) -> None:
        tasks = [task for task in self._tasks.values() if not task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drive(self, batch_id: str) -> None:
        steps = {
            "validating": self._validate,
            "in_progress": self._process,
            "finalizing": self._finalize,
            "cancelling": self._cancel,
        }
        try:
            while True:
                batch = self.store.get_batch(batch_id)
                step = steps.get(batch.status)
                if step is None:
                    return
                await step(batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must fail the batch, not leave it running forever
            log.exception("batch %s: processing failed", batch_id)
            message = f"Emulator error: {type(exc).__name__}: {exc}"
            self.store.update_batch(batch_id, lambda b: _fail(b, "emulator_error", message))
        finally:
            self._nudges.pop(batch_id, None)

    # validating ----------------------------------------------------------------------------

    async def _validate(self, batch: BatchRecord) -> None:
        controls = Controls.of(batch, self.settings)
        if await self._nap_until(batch.id, batch.phase_started + controls.validating_delay):
            return  # cancelled or expired meanwhile: the drive loop reads the batch again
        if time.time() >= batch.deadline:
            await self._end_unfinished(batch, "expired")
            return
        try:
            input_file = self.store.get_file(batch.input_file_id)
        except APIError:
            self.store.update_batch(
                batch.id,
                lambda b: _fail(
                    b, "file_not_found", f"The input file {batch.input_file_id} no longer exists."
                ),
            )
            return
        report = await asyncio.to_thread(self.read_input, input_file.id, batch.endpoint)
        errors = report.errors
        if not errors and controls.fail_validation:
            errors = [self._forced_error(controls.fail_validation, report.model)]
        refused = False

        def settle(b: BatchRecord, others: int) -> None:
            # ``others``: the tokens the model's other in-flight batches hold, read in this transaction.
            nonlocal refused
            if b.status != "validating":
                return  # cancelled meanwhile: the cancel step takes it from here
            b.model = report.model
            if not errors and not b.admitted and not self.admits(report, others):
                refused = True
                b.status, b.failed_at = "failed", int(time.time())
                b.errors = [self._forced_error("token_limit_exceeded", report.model)]
                return
            if errors:
                b.status, b.failed_at, b.errors = "failed", int(time.time()), errors
                return
            if not b.admitted:
                b.admitted, b.enqueued_tokens = True, report.input_tokens
            b.status, b.in_progress_at = "in_progress", int(time.time())
            b.request_counts.total = report.requests

        record, total = self.store.admit_batch(batch.id, report.model, settle)
        if refused:
            self.enqueued.refuse(report.model)
        elif record.status in IN_FLIGHT_STATUSES:
            self.enqueued.saw(record.model, total)

    def read_input(self, file_id: str, endpoint: str) -> FileReport:
        """Validate an input file against ``endpoint`` (in either Azure form, under that dialect),
        counting its input tokens while an enqueued-token limit is set."""
        path = self.store.blob_path(file_id)
        count = self.settings.counts_tokens()
        if self.dialect == "azure":
            endpoint = canonical_endpoint(endpoint)
            return validate_input_file(
                path, endpoint, lambda url, ep: canonical_endpoint(url) == ep, count_tokens=count
            )
        return validate_input_file(path, endpoint, count_tokens=count)

    def admits(self, report: FileReport, others: int) -> bool:
        """The admission rule, the same at create (Azure's fail-fast mode) and in ``validating``:
        whether the batch ``report`` describes fits its model's (Azure: deployment's) enqueued-token
        limit next to the ``others`` tokens that the model's in-flight batches hold. A batch of no
        model, or of a model without a limit, always fits."""
        if report.model is None:
            return True
        limit = self.settings.token_limit(report.model)
        return not limit or others + report.input_tokens <= limit

    def token_limit_message(self, model: str | None) -> str:
        limit = (self.settings.token_limit(model) if model is not None else 0) or 2_000_000
        if self.dialect == "azure":
            return token_limit_message(model, limit)
        return TOKEN_LIMIT_MESSAGE.format(model=model, limit=limit)

    def _forced_error(self, code: str, model: str | None) -> dict[str, Any]:
        if code == "token_limit_exceeded":
            message = self.token_limit_message(model)
        else:
            message = f"Validation failed with {code} (forced by emulator_fail_validation)."
        return {"code": code, "message": message, "param": None, "line": None}

    # in_progress ---------------------------------------------------------------------------

    async def _process(self, batch: BatchRecord) -> None:
        controls = Controls.of(batch, self.settings)
        chunk_lines = 1 if controls.line_delay else CHUNK_LINES
        with _PartialResults(self.store, batch, shuffle=self.settings.shuffle_output) as results:
            while batch.status == "in_progress":
                lines_done = batch.request_counts.completed + batch.request_counts.failed
                expire_now = (
                    controls.expire_after_lines is not None and lines_done >= controls.expire_after_lines
                )
                if expire_now or time.time() >= batch.deadline:
                    results.close()
                    await self._end_unfinished(batch, "expired")
                    return
                limit = chunk_lines
                if controls.expire_after_lines is not None:  # stop exactly at the line where it expires
                    limit = min(limit, controls.expire_after_lines - lines_done)
                chunk = await asyncio.to_thread(self._read_chunk, batch, limit)
                if chunk.lines:
                    bodies = [
                        without_spent_directive(body, self.lines.runs(custom_id))
                        for custom_id, body in chunk.lines
                    ]
                    responses = await self.engine.respond_many(canonical_endpoint(batch.endpoint), bodies)
                    if controls.line_delay and await self._nap(
                        batch.id, controls.line_delay * len(chunk.lines)
                    ):
                        batch = self.store.get_batch(batch.id)  # cancelled or expired meanwhile
                        continue  # the chunk was not answered; it is read again if the batch goes on
                    written = await asyncio.to_thread(results.write, chunk, responses)
                    batch = self.store.update_batch(batch.id, written.commit)
                    self.lines.add(custom_id for custom_id, _ in chunk.lines)
                else:
                    batch = self.store.update_batch(batch.id, _start_finalizing)

    def _read_chunk(self, batch: BatchRecord, max_lines: int) -> _Chunk:
        """Read up to ``max_lines`` requests from the committed input offset on."""
        lines: list[tuple[str, dict[str, Any]]] = []
        line_number = batch.progress.line_number
        with self.store.blob_path(batch.input_file_id).open("rb") as source:
            source.seek(batch.progress.input_offset)
            while len(lines) < max_lines:
                raw = source.readline()
                if not raw:
                    break
                line_number += 1
                if raw.strip():
                    request = msgspec.json.decode(raw)
                    lines.append((request["custom_id"], request["body"]))
            return _Chunk(lines=lines, end_offset=source.tell(), end_line=line_number)

    # finalizing, cancelling, expiry --------------------------------------------------------

    async def _finalize(self, batch: BatchRecord) -> None:
        controls = Controls.of(batch, self.settings)
        started = batch.phase_started or batch.finalizing_at or time.time()
        if await self._nap_until(batch.id, started + controls.finalizing_delay):
            return  # cancelled meanwhile: the drive loop reads the batch again
        batch = self.store.get_batch(batch.id)
        if batch.status == "finalizing":  # not cancelled while we waited
            self._publish(batch, "completed")

    async def _cancel(self, batch: BatchRecord) -> None:
        controls = Controls.of(batch, self.settings)
        started = batch.phase_started or batch.cancelling_at or time.time()
        if await self._nap_until(batch.id, started + controls.cancelling_delay):
            return  # expired meanwhile: the drive loop reads the batch again
        await self._end_unfinished(batch, "cancelled")

    async def _end_unfinished(self, batch: BatchRecord, outcome: str) -> None:
        """Write every line not yet run as an error line (``batch_expired`` or ``batch_cancelled``),
        then publish the partial results and settle the batch as ``outcome``."""
        if batch.in_progress_at is not None:
            code, message = UNFINISHED_LINE_ERRORS[outcome]
            with _PartialResults(self.store, batch, shuffle=self.settings.shuffle_output) as results:
                while True:
                    chunk = await asyncio.to_thread(self._read_chunk, batch, CHUNK_LINES)
                    if not chunk.lines:
                        break
                    written = await asyncio.to_thread(results.write_unrun, chunk, code, message)
                    batch = self.store.update_batch(batch.id, written.commit)
        self._publish(batch, outcome)

    def _publish(self, batch: BatchRecord, outcome: str) -> None:
        """Turn the partial result files into ``batch_output`` files and settle the batch.

        File ids derive from the batch id, so publishing again after a crash halfway through
        finds the same files instead of creating new ones.
        """
        ids: dict[str, str | None] = {}
        for kind in ("output", "error"):
            part = _part_path(self.store, batch.id, kind)
            file_id = "file-" + hashlib.blake2b(f"{batch.id}:{kind}".encode(), digest_size=12).hexdigest()
            blob = self.store.blob_path(file_id)
            if part.exists():
                if part.stat().st_size == 0:
                    part.unlink()
                else:
                    part.replace(blob)
            if not blob.exists():
                ids[kind] = None
                continue
            now = int(time.time())
            # Azure keeps result files without an expiry unless output_expires_after was given.
            ttl = batch.output_expires_after or (None if self.dialect == "azure" else DEFAULT_FILE_TTL)
            self.store.add_file(
                FileRecord(
                    id=file_id,
                    bytes=blob.stat().st_size,
                    created_at=now,
                    expires_at=None if ttl is None else now + max(1, round(scaled(ttl, self.settings))),
                    filename=f"batch_{batch.id}_{kind}.jsonl",
                    purpose="batch_output",
                )
            )
            ids[kind] = file_id

        def settle(b: BatchRecord) -> None:
            b.output_file_id, b.error_file_id = ids["output"], ids["error"]
            b.status = outcome
            setattr(b, f"{outcome}_at", int(time.time()))

        self.store.update_batch(batch.id, settle)


@dataclass(frozen=True)
class _Chunk:
    lines: list[tuple[str, dict[str, Any]]]
    end_offset: int
    end_line: int


@dataclass(frozen=True)
class _Written:
    """What one chunk added; ``commit`` applies it to the stored record."""

    chunk: _Chunk
    output_bytes: int
    error_bytes: int
    completed: int
    failed: int
    usage: Usage

    def commit(self, batch: BatchRecord) -> None:
        batch.progress = Progress(
            input_offset=self.chunk.end_offset,
            line_number=self.chunk.end_line,
            output_bytes=self.output_bytes,
            error_bytes=self.error_bytes,
        )
        batch.request_counts.completed += self.completed
        batch.request_counts.failed += self.failed
        batch.usage.add(self.usage)


class _PartialResults:
    """The output and error files of a running batch, cut back to the committed progress on open
    so that lines written after the last commit (then lost to a crash) are not duplicated."""

    def __init__(self, store: Store, batch: BatchRecord, *, shuffle: bool) -> None:
        self.batch = batch
        self.shuffle = shuffle
        self.files: dict[str, IO[bytes]] = {}
        for kind, size in (("output", batch.progress.output_bytes), ("error", batch.progress.error_bytes)):
            path = _part_path(store, batch.id, kind)
            if path.exists():
                handle: IO[bytes] = path.open("r+b")
                handle.truncate(size)
                handle.seek(size)
            else:  # a new batch, or one whose results were already published before a crash
                handle = path.open("wb")
            self.files[kind] = handle

    def __enter__(self) -> _PartialResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()

    def write(self, chunk: _Chunk, responses: list[tuple[int, dict[str, Any]]]) -> _Written:
        ok: list[bytes] = []
        failed: list[bytes] = []
        usage = Usage()
        for (custom_id, _), (status, body) in zip(chunk.lines, responses, strict=True):
            line = {
                "id": _line_id("batch_req_", self.batch.id, custom_id),
                "custom_id": custom_id,
                "response": {
                    "status_code": status,
                    "request_id": _line_id("req_", self.batch.id, custom_id),
                    "body": body,
                },
                "error": None,
            }
            (ok if 200 <= status < 300 else failed).append(msgspec.json.encode(line))
            usage.add(usage_of(canonical_endpoint(self.batch.endpoint), status, body))
        return self._append(chunk, ok, failed, usage)

    def write_unrun(self, chunk: _Chunk, code: str, message: str) -> _Written:
        failed = [
            msgspec.json.encode(
                {
                    "id": _line_id("batch_req_", self.batch.id, custom_id),
                    "custom_id": custom_id,
                    "response": None,
                    "error": {"code": code, "message": message},
                }
            )
            for custom_id, _ in chunk.lines
        ]
        return self._append(chunk, [], failed, Usage())

    def _append(self, chunk: _Chunk, ok: list[bytes], failed: list[bytes], usage: Usage) -> _Written:
        if self.shuffle:
            rng = random.Random(f"{self.batch.id}:{chunk.end_offset}")
            rng.shuffle(ok)
            rng.shuffle(failed)
        for kind, lines in (("output", ok), ("error", failed)):
            if lines:
                self.files[kind].write(b"\n".join(lines) + b"\n")
            self.files[kind].flush()
        return _Written(
            chunk=chunk,
            output_bytes=self.files["output"].tell(),
            error_bytes=self.files["error"].tell(),
            completed=len(ok),
            failed=len(failed),
            usage=usage,
        )


def _part_path(store: Store, batch_id: str, kind: str) -> Path:
    return store.work_dir / f"{batch_id}.{kind}.part"


def _line_id(prefix: str, batch_id: str, custom_id: str) -> str:
    return prefix + hashlib.blake2b(f"{batch_id}:{custom_id}".encode(), digest_size=12).hexdigest()


def _start_finalizing(batch: BatchRecord) -> None:
    if batch.status == "in_progress":
        now = time.time()
        batch.status, batch.finalizing_at, batch.phase_started = "finalizing", int(now), now


def _fail(batch: BatchRecord, code: str, message: str) -> None:
    batch.status, batch.failed_at = "failed", int(time.time())
    batch.errors = [{"code": code, "message": message, "param": None, "line": None}]
