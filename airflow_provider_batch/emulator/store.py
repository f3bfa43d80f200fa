"""Durable state: file and batch records in SQLite (WAL), file contents as blobs on disk.

Everything a batch needs to resume lives here, so a server killed mid-batch and started again on
the same data directory finishes the batch without losing or repeating a line: the runner commits
its progress (input offset, lines done, bytes of the partial result files, counts) in the same
transaction that records the batch, and truncates the partial files back to those byte counts on
resume.

Records are msgspec structs stored as JSON next to the few columns that queries need. One
connection serves every thread behind one lock; each call is a short transaction.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

from airflow_provider_batch.emulator.errors import not_found

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
IN_FLIGHT_STATUSES = ("validating", "in_progress", "finalizing")
"""The statuses whose batches hold enqueued tokens (in ``validating``, only once admitted)."""


class FileRecord(msgspec.Struct, kw_only=True):
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    expires_at: int | None = None
    processed_at: float = 0.0
    """Real time from which the file is ``processed``; before it, ``pending`` (Azure only)."""

    def status(self) -> str:
        return "processed" if time.time() >= self.processed_at else "pending"

    def to_api(self, dialect: str = "openai") -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": self.status() if dialect == "azure" else "processed",
            "status_details": None,
        }


class RequestCounts(msgspec.Struct):
    total: int = 0
    completed: int = 0
    failed: int = 0


class Usage(msgspec.Struct):
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.cached_tokens += other.cached_tokens
        self.output_tokens += other.output_tokens
        self.reasoning_tokens += other.reasoning_tokens

    def to_api(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


class Progress(msgspec.Struct):
    """Where processing stands; committed after every chunk of lines."""

    input_offset: int = 0
    """Byte offset in the input file of the next line to process."""
    line_number: int = 0
    """1-based number of the last input line consumed (blank lines included)."""
    output_bytes: int = 0
    error_bytes: int = 0


class BatchRecord(msgspec.Struct, kw_only=True):
    """A batch: the public fields of OpenAI's Batch object plus what the runner needs to resume."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = msgspec.field(default_factory=RequestCounts)
    usage: Usage = msgspec.field(default_factory=Usage)
    # Internal: never shown to clients.
    deadline: float = 0.0
    """Real time at which the (scaled) completion window closes."""
    phase_started: float = 0.0
    """Real time at which the current timed phase (``validating``, ``finalizing``, ``cancelling``)
    began. The public ``*_at`` fields are whole seconds, too coarse to time a sub-second phase delay
    from; this survives a restart like them."""
    output_expires_after: int | None = None
    """Seconds after their creation at which the result files expire, as requested."""
    enqueued_tokens: int = 0
    """Input tokens the batch holds against its model's enqueued-token limit once admitted, while
    it is in flight (:data:`IN_FLIGHT_STATUSES`); 0 before admission and when no limit applied."""
    admitted: bool = False
    """Whether the batch passed the enqueued-token admission: at create (Azure's fail-fast mode)
    or at the end of ``validating``."""
    progress: Progress = msgspec.field(default_factory=Progress)

    def to_api(self, dialect: str = "openai") -> dict[str, Any]:
        # Azure sends "" rather than null for a result file that does not exist (yet).
        no_file = "" if dialect == "azure" else None
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "model": self.model,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id or no_file,
            "error_file_id": self.error_file_id or no_file,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": msgspec.structs.asdict(self.request_counts),
            "usage": self.usage.to_api(),
            "metadata": self.metadata,
        }


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    purpose TEXT NOT NULL,
    expires_at INTEGER,
    record BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    record BLOB NOT NULL
);
"""


class Store:
    """SQLite records plus blob files under ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.blob_dir = self.data_dir / "files"
        self.work_dir = self.data_dir / "work"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.data_dir / "emulator.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # Files -----------------------------------------------------------------------------------

    def blob_path(self, file_id: str) -> Path:
        return self.blob_dir / file_id

    def add_file(self, record: FileRecord) -> None:
        """Record a file whose blob is already at :meth:`blob_path`; a repeat is ignored."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO files (id, purpose, expires_at, record) VALUES (?, ?, ?, ?)",
                (record.id, record.purpose, record.expires_at, msgspec.json.encode(record)),
            )

    def get_file(self, file_id: str) -> FileRecord:
        """Return a live file, or raise OpenAI's 404 (deleted and expired files are gone)."""
        with self._lock:
            row = self._db.execute(
                "SELECT record FROM files WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
                (file_id, int(time.time())),
            ).fetchone()
        if row is None:
            raise not_found("file", file_id, "file_id")
        return msgspec.json.decode(row[0], type=FileRecord)

    def list_files(self, *, purpose: str | None, after: str | None, limit: int, ascending: bool) -> Page:
        where = ["(expires_at IS NULL OR expires_at > ?)"]
        params: list[Any] = [int(time.time())]
        if purpose:
            where.append("purpose = ?")
            params.append(purpose)
        return self._page("files", FileRecord, where, params, after=after, limit=limit, ascending=ascending)

    def count_files_without_expiry(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM files WHERE expires_at IS NULL").fetchone()[0])

    def delete_file(self, file_id: str) -> None:
        self.get_file(file_id)
        with self._transaction() as db:
            db.execute("DELETE FROM files WHERE id = ?", (file_id,))
        self.blob_path(file_id).unlink(missing_ok=True)

    # Batches ---------------------------------------------------------------------------------

    def add_batch(
        self, record: BatchRecord, *, admit: Callable[[BatchRecord, int], None] | None = None
    ) -> int:
        """Record a new batch; with ``admit``, first call it with the record and the tokens that the
        in-flight batches of ``record.model`` hold, in the same transaction, so that no other
        admission can slip in between; ``admit`` may change the record, or raise to refuse it
        (nothing is written then). Return the tokens of the model's in-flight batches afterwards."""
        with self._transaction() as db:
            if admit is not None:
                admit(record, self._enqueued(db, record.model, excluding=record.id))
            db.execute(
                "INSERT INTO batches (id, status, record) VALUES (?, ?, ?)",
                (record.id, record.status, msgspec.json.encode(record)),
            )
            return self._enqueued(db, record.model, excluding="")

    def get_batch(self, batch_id: str) -> BatchRecord:
        with self._lock:
            row = self._db.execute("SELECT record FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            raise not_found("batch", batch_id, "batch_id")
        return msgspec.json.decode(row[0], type=BatchRecord)

    def update_batch(self, batch_id: str, change: Callable[[BatchRecord], None]) -> BatchRecord:
        """Apply ``change`` to the current record atomically and return the new record.

        The runner and the cancel route both write batches; reading and writing under one
        transaction means neither can overwrite the other's change with a stale copy.
        """
        with self._transaction() as db:
            return self._update(db, batch_id, change)

    def admit_batch(
        self, batch_id: str, model: str | None, settle: Callable[[BatchRecord, int], None]
    ) -> tuple[BatchRecord, int]:
        """:meth:`update_batch` for the enqueued-token admission: ``settle`` gets the record and the
        tokens that the other in-flight batches of ``model`` hold, read in the same transaction, so
        two admissions can never both see room that only one of them fits in. Return the new record
        and the tokens of the model's in-flight batches afterwards (the record's own included)."""
        with self._transaction() as db:
            others = self._enqueued(db, model, excluding=batch_id)
            record = self._update(db, batch_id, lambda b: settle(b, others))
            return record, self._enqueued(db, model, excluding="")

    def _update(
        self, db: sqlite3.Connection, batch_id: str, change: Callable[[BatchRecord], None]
    ) -> BatchRecord:
        row = db.execute("SELECT record FROM batches WHERE id = ?", (batch_id,)).fetchone()
        if row is None:
            raise not_found("batch", batch_id, "batch_id")
        record = msgspec.json.decode(row[0], type=BatchRecord)
        change(record)
        db.execute(
            "UPDATE batches SET status = ?, record = ? WHERE id = ?",
            (record.status, msgspec.json.encode(record), batch_id),
        )
        return record

    def list_batches(self, *, after: str | None, limit: int) -> Page:
        return self._page("batches", BatchRecord, [], [], after=after, limit=limit, ascending=False)

    def unfinished_batches(self) -> list[BatchRecord]:
        placeholders = ",".join("?" * len(TERMINAL_STATUSES))
        with self._lock:
            rows = self._db.execute(
                f"SELECT record FROM batches WHERE status NOT IN ({placeholders}) ORDER BY seq",
                tuple(TERMINAL_STATUSES),
            ).fetchall()
        return [msgspec.json.decode(row[0], type=BatchRecord) for row in rows]

    def enqueued_tokens(self) -> dict[str, int]:
        """The tokens that in-flight batches hold, per model (models holding none are left out)."""
        with self._lock:
            totals: dict[str, int] = {}
            for batch in self._in_flight(self._db):
                if batch.model is not None and batch.enqueued_tokens:
                    totals[batch.model] = totals.get(batch.model, 0) + batch.enqueued_tokens
            return totals

    def _enqueued(self, db: sqlite3.Connection, model: str | None, *, excluding: str) -> int:
        """The tokens that the in-flight batches of ``model`` other than ``excluding`` hold."""
        if model is None:
            return 0
        return sum(
            batch.enqueued_tokens
            for batch in self._in_flight(db)
            if batch.model == model and batch.id != excluding
        )

    @staticmethod
    def _in_flight(db: sqlite3.Connection) -> list[BatchRecord]:
        """Admitted batches in :data:`IN_FLIGHT_STATUSES`; the caller holds the lock."""
        placeholders = ",".join("?" * len(IN_FLIGHT_STATUSES))
        rows = db.execute(
            f"SELECT record FROM batches WHERE status IN ({placeholders})", IN_FLIGHT_STATUSES
        ).fetchall()
        batches = (msgspec.json.decode(row[0], type=BatchRecord) for row in rows)
        return [batch for batch in batches if batch.admitted or batch.status != "validating"]

    # Pagination ------------------------------------------------------------------------------

    def _page(
        self,
        table: str,
        kind: type,
        where: list[str],
        params: list[Any],
        *,
        after: str | None,
        limit: int,
        ascending: bool,
    ) -> Page:
        """One page in creation order, ``after`` being an exclusive id cursor (OpenAI's paging)."""
        where = list(where)
        params = list(params)
        with self._lock:
            if after:
                cursor = self._db.execute(f"SELECT seq FROM {table} WHERE id = ?", (after,)).fetchone()
                if cursor is not None:
                    where.append("seq > ?" if ascending else "seq < ?")
                    params.append(cursor[0])
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            order = "ASC" if ascending else "DESC"
            rows = self._db.execute(
                f"SELECT record FROM {table} {clause} ORDER BY seq {order} LIMIT ?", (*params, limit + 1)
            ).fetchall()
        items: list[Any] = [msgspec.json.decode(row[0], type=kind) for row in rows[:limit]]
        return Page(items=items, has_more=len(rows) > limit)


class Page(msgspec.Struct):
    items: list[Any]
    has_more: bool

    def to_api(self, dialect: str = "openai") -> dict[str, Any]:
        return {
            "object": "list",
            "data": [item.to_api(dialect) for item in self.items],
            "first_id": self.items[0].id if self.items else None,
            "last_id": self.items[-1].id if self.items else None,
            "has_more": self.has_more,
        }
