"""Landed results as Parquet: the same rows as the landed JSONL file, typed columns for ETL.

The landed JSONL file (:func:`~airflow_provider_batch.results.write_joined`,
:func:`~airflow_provider_batch.rounds.close_round`) stays the file of record: one row per input request,
in input order, with the raw response ``body``. :func:`write_parquet` converts it in one streaming pass
into a Parquet file with one fixed schema, so a warehouse load or a DataFrame read needs no JSON parsing
and no schema inference that changes with the data (an all-null column read as ``null`` type, a
``status_code`` read as float because one row had none).

Three choices shape the file (figures from ``benchmarks/landing_formats.py``):

* **No ``body`` column.** The raw body is most of a row's bytes and is kept by the JSONL file and by
  OpenAI's files; the table holds what ETL reads. The decoder declares ``body`` as :class:`msgspec.Raw`,
  which only measures it.
* **Memory is one row group, not the file.** Rows are decoded one at a time; every few thousand rows
  become Arrow arrays (compact: a count is 8 bytes there, about 40 as a Python ``int`` in a list), and a
  row group is written as soon as it has ``row_group_rows`` rows or ``row_group_bytes`` bytes of kept
  JSON, whichever comes first. The byte bound matters for wide rows: a 3,072-dimension embedding is
  about 60 KB of JSON, so a bound on rows alone would let one group grow to gigabytes. Converting
  1,000,000 chat rows grows the process by about 92 MB, 100,000 embedding rows by about 77 MB.
* **zstd, dictionary pages where values repeat, byte-stream-split floats.** zstd (pyarrow's default
  level) made 1,000,000 chat rows 13.7 MB, against 24.7 MB with snappy and 129 MB uncompressed, at no
  time cost that the benchmark could tell apart from noise. Repeated strings (``text`` labels,
  ``finish_reason``, ``error_code``, ``batch_id``, categories) are dictionary-encoded; embedding floats
  are written ``BYTE_STREAM_SPLIT`` (about 9 % smaller under zstd than plain floats) with no dictionary,
  which would only be built to be abandoned.

pyarrow is an optional extra (``pip install 'airflow-provider-batch[parquet]'``), so it is imported
inside the functions that need it; :func:`require_parquet` is the check an operator runs before it
submits anything.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import IO, TYPE_CHECKING, Any, Literal

import msgspec
from airflow.sdk import ObjectStoragePath

from airflow_provider_batch.exceptions import OpenAIBatchConfigError
from airflow_provider_batch.jsonl import BLOCK_SIZE, JsonlLines

# The readers and writers of the landed file: one answer to "local path, file object or object storage".
from airflow_provider_batch.results import (
    Destination,
    ResultSource,
    _describe,
    _open_path,
    _open_source,
)

if TYPE_CHECKING:
    from types import ModuleType

OutputFormat = Literal["jsonl", "parquet"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("jsonl", "parquet")
PARQUET_SUFFIX = ".parquet"
INSTALL_HINT = "pip install 'airflow-provider-batch[parquet]'"

DEFAULT_ROW_GROUP_ROWS = 131_072
"""Rows per row group (DuckDB writes 122,880). On 1,000,000 chat rows (``benchmarks/landing_formats.py``)
it makes 8 row groups and a conversion that grows the process by about 92 MB; 32 Ki rows cost 49 MB but
make 31 groups, which readers pay for in metadata and in smaller reads, for a file of the same size
(13.9 against 13.7 MB). Beyond this the byte bound below decides for such rows anyway."""
DEFAULT_ROW_GROUP_BYTES = 64 << 20
"""Bytes of kept JSON (each row's line minus its ``body``) after which a row group is written even if it
has fewer rows: the bound that holds for wide rows. A 256-dimension embedding row keeps about 5 KB, so its
row groups close at about 12,000 rows (12 MB of float32); chat rows keep about 500 bytes, so this and
:data:`DEFAULT_ROW_GROUP_ROWS` agree."""
DEFAULT_COMPRESSION = "zstd"

_BATCH_ROWS = 8192
"""Rows held as Python objects before they become Arrow arrays (a few MB for chat rows)."""
_BATCH_BYTES = 8 << 20
"""Line bytes after which those rows become Arrow arrays sooner: a batch's rows hold on to values
several times their JSON size (a Python float is 32 bytes), so wide rows (embeddings, base64 images)
are sealed after fewer rows."""
_NULL = msgspec.Raw(b"null")
_DICTIONARY_COLUMNS = (
    "status_code",
    "error_code",
    "error_message",
    "text",
    "refusal",
    "finish_reason",
    "categories.list.element",
    "round",
    "batch_id",
)
"""Columns (Parquet leaf paths) whose values repeat from row to row: a classification's answers, error
codes, the few batch ids of a job. Elsewhere (ids, JSON, token counts) a dictionary would mostly be built,
found too large and abandoned; a ``text`` of free answers costs that once per row group, and the labels
of a classification shrink the file by 8 % for it."""
_FLOAT_COLUMNS = ("embedding.list.element", "embeddings.list.element.list.element")
"""Leaf paths of the embedding floats, written ``BYTE_STREAM_SPLIT`` (about 9 % smaller with zstd)."""


class _LandedRow(msgspec.Struct, kw_only=True):
    """One landed row as read back. ``line`` and ``ok`` are required: a row without them is not a landed
    row (an OpenAI output file given by mistake, say). Every other field has a default, so rows written
    before a field existed still convert; ``round`` is 1 for rows of a single batch."""

    custom_id: str | None = None
    line: int
    ok: bool
    status_code: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    text: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    tool_calls: msgspec.Raw = _NULL
    parsed: msgspec.Raw = _NULL
    embedding: list[float] | None = None
    embeddings: list[list[float]] | None = None
    flagged: bool | None = None
    categories: list[str] | None = None
    images: list[str] | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    round: int = 1
    batch_id: str | None = None
    request: msgspec.Raw = _NULL
    body: msgspec.Raw = _NULL
    """Measured (to size row groups by the bytes they keep) and dropped."""


_ROW_DECODER = msgspec.json.Decoder(_LandedRow)


# Public functions -------------------------------------------------------------------------------------------


def require_parquet() -> None:
    """Raise :class:`OpenAIBatchConfigError` if pyarrow is not installed.

    An operator calls this before it uploads or submits anything: found only when the results land, a
    missing package would cost the whole batch's wait (the results would still be safe in OpenAI's files,
    but the task would fail at its end instead of its start).
    """
    _pyarrow()


def output_format_for(
    output_path: str | os.PathLike[str] | ObjectStoragePath, output_format: str | None
) -> OutputFormat:
    """Decide the landed file's format: ``output_format`` when given, else ``parquet`` for a path that ends
    in ``.parquet`` (any case), else ``jsonl``.

    An explicit value wins over the suffix so that a name chosen for other reasons (``results.data``,
    ``…/latest``) can hold either format; it must be one of :data:`OUTPUT_FORMATS` exactly, since a typo
    would otherwise land a day's batch in a format nobody asked for.

    :raises OpenAIBatchConfigError: (a ``ValueError``) for any other ``output_format``.
    """
    if output_format is not None:
        if output_format not in OUTPUT_FORMATS:
            raise OpenAIBatchConfigError(
                f"output_format={output_format!r} is not a landing format: use 'jsonl' or 'parquet',"
                " or leave it unset to choose by output_path's suffix (.parquet for Parquet)."
            )
        return output_format
    name = str(output_path).rstrip("/").rsplit("/", 1)[-1]
    return "parquet" if name.lower().endswith(PARQUET_SUFFIX) else "jsonl"


def parquet_schema() -> Any:
    """The ``pyarrow.Schema`` of every file :func:`write_parquet` writes (a fixed schema, whatever the rows
    hold: an all-null column keeps its type)."""
    pa, _ = _pyarrow()
    return _schema(pa)


def write_parquet(
    source: ResultSource,
    destination: Destination,
    *,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    compression: str = DEFAULT_COMPRESSION,
) -> int:
    """Convert a landed JSONL file into Parquet at ``destination``; return the number of rows written.

    Rows keep their order (input order, as landed). Every key of the landed row becomes a column except
    ``body``; ``tool_calls``, ``parsed`` and ``request`` are JSON text, exactly the bytes of the landed
    file, so values that have no fixed Arrow type (a structured output of any schema) still fit one schema.
    Embeddings are ``float32``, the precision the API computes them in. A file with no rows is a valid
    Parquet file with the schema and no row groups.

    Memory is bounded by one row group, not by the file (see the module docstring). A conversion that
    fails removes what it wrote (best effort) and in any case never finishes the file: a Parquet file
    whose footer is missing is refused by every reader, where one closed early would read as complete.

    :param source: a local path, a binary file object (read from its position, left open) or an
        ``ObjectStoragePath``.
    :param destination: a local path or an ``ObjectStoragePath``; overwritten.
    :param row_group_rows: at most this many rows per row group.
    :param row_group_bytes: a row group is written once its rows' kept JSON reaches this many bytes.
    :param compression: any codec pyarrow's ``ParquetWriter`` knows (``zstd``, ``snappy``, ``none``...).
    :raises OpenAIBatchConfigError: pyarrow is not installed.
    :raises ValueError: a line is not a landed row (its line number is in the message).
    """
    if row_group_rows < 1 or row_group_bytes < 1:
        raise ValueError("row_group_rows and row_group_bytes must be at least 1.")
    pa, pq = _pyarrow()
    schema = _schema(pa)
    opened = False
    try:
        with _open_source(source) as stream, _open_path(destination, "wb") as out:
            opened = True
            sink = _Sink(out)
            writer = pq.ParquetWriter(
                sink,
                schema,
                compression=compression,
                use_dictionary=list(_DICTIONARY_COLUMNS),
                use_byte_stream_split=list(_FLOAT_COLUMNS),
            )
            try:
                written = _write_groups(
                    pa, schema, writer, stream, _describe(source), row_group_rows, row_group_bytes
                )
            except BaseException:
                sink.abandon()
                raise
            finally:
                writer.close()  # after abandon(), the footer goes nowhere
            sink.flush()
    except BaseException:
        if opened:  # a destination never opened is someone else's file
            _discard(destination)
        raise
    return written


# Internals --------------------------------------------------------------------------------------------------


def _pyarrow() -> tuple[ModuleType, ModuleType]:
    """``(pyarrow, pyarrow.parquet)``, imported on first use: the extra is optional and a large import."""
    try:
        import pyarrow  # type: ignore[import-untyped]  # no stubs: used as Any here
        import pyarrow.parquet  # type: ignore[import-untyped]
    except ImportError as exc:
        raise OpenAIBatchConfigError(
            f"Landing results as Parquet needs pyarrow, which is not installed ({exc}). Install the"
            f" extra: {INSTALL_HINT}, or land JSONL (output_format='jsonl', or an output_path that does"
            " not end in .parquet)."
        ) from None
    return pyarrow, pyarrow.parquet


def _write_groups(
    pa: Any,
    schema: Any,
    writer: Any,
    stream: IO[bytes],
    label: str,
    row_group_rows: int,
    row_group_bytes: int,
) -> int:
    """Decode the landed rows one at a time into row groups; return how many rows were written."""
    groups = _GroupWriter(pa, schema, writer, row_group_rows, row_group_bytes)
    for number, _, raw in JsonlLines(stream):
        try:
            row = _ROW_DECODER.decode(raw)
        except msgspec.DecodeError as exc:  # also msgspec.ValidationError
            raise ValueError(f"{label} line {number} is not a landed result row: {exc}") from None
        groups.add(row, len(raw), len(raw) - len(row.body))
    return groups.finish()


class _GroupWriter:
    """Rows in, row groups out: builders of Python values for a few thousand rows, sealed into an Arrow
    record batch, and the row group's batches written as one row group once it is full.

    Two stages, because a row held as Python objects (a ``str`` per value, an ``int`` per count, a list
    slot per column) costs several times what it costs in Arrow: building the whole row group in Python
    would make memory several times the row group's Arrow size. Sealed every :data:`_BATCH_ROWS` rows,
    only that many rows are ever Python objects. Batches are cut where the row group must end, so a row
    group holds exactly ``row_group_rows`` rows (or fewer, when the byte bound comes first).
    """

    def __init__(self, pa: Any, schema: Any, writer: Any, row_group_rows: int, row_group_bytes: int) -> None:
        self._pa, self._schema, self._writer = pa, schema, writer
        self._max_rows, self._max_bytes = row_group_rows, row_group_bytes
        self.written = 0
        self._batches: list[Any] = []
        self._rows = self._kept = 0
        """Rows and kept bytes of the sealed batches of the row group being built."""
        self._columns = _Columns()
        self._size = self._pending = 0
        """Line bytes and kept bytes of the rows in ``_columns``."""

    def add(self, row: _LandedRow, size: int, kept: int) -> None:
        self._columns.add(row)
        self._size += size
        self._pending += kept
        if (
            len(self._columns.rows) >= min(_BATCH_ROWS, self._max_rows - self._rows)
            or self._size >= _BATCH_BYTES
            or self._pending >= self._max_bytes - self._kept
        ):
            self._seal()
            if self._rows >= self._max_rows or self._kept >= self._max_bytes:
                self._write()

    def finish(self) -> int:
        if self._columns.rows:
            self._seal()
        if self._rows:
            self._write()
        return self.written

    def _seal(self) -> None:
        self._batches.append(self._columns.record_batch(self._pa, self._schema))
        self._rows += len(self._columns.rows)
        self._kept += self._pending
        self._columns, self._size, self._pending = _Columns(), 0, 0

    def _write(self) -> None:
        table = self._pa.Table.from_batches(self._batches, schema=self._schema)
        self._writer.write_table(table, row_group_size=self._rows)
        self.written += self._rows
        self._batches, self._rows, self._kept = [], 0, 0


class _Sink(io.RawIOBase):
    """The writer's output: buffered into ~1 MiB writes, and able to drop everything once abandoned.

    Buffered, because the Parquet writer emits each page header as its own small write, and every write
    to an ``ObjectStoragePath`` file pays fsspec's and Airflow's lineage wrapper's per-call cost.
    Abandonable, because closing a ``ParquetWriter`` always writes the footer, and a footer after a failed
    conversion would make a truncated file that reads as valid, with rows silently missing; abandoned, the
    file has no footer and every reader refuses it (and :func:`_discard` then removes it).
    """

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__()
        self._out = out
        self._buffer = bytearray()
        self._position = 0
        self._abandoned = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        size = len(data)
        if not self._abandoned:
            self._buffer += data
            self._position += size
            if len(self._buffer) >= BLOCK_SIZE:
                self.flush()
        return size

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        if self._buffer and not self._abandoned:
            self._out.write(bytes(self._buffer))
            self._buffer.clear()

    def abandon(self) -> None:
        self._abandoned = True
        self._buffer.clear()


def _discard(destination: Destination) -> None:
    """Remove what a failed conversion left at ``destination``, best effort (the failure is what the
    caller needs to hear about, not a store that refuses deletes)."""
    with contextlib.suppress(Exception):
        if isinstance(destination, ObjectStoragePath):
            destination.unlink(missing_ok=True)
        else:
            os.remove(destination)


def _schema(pa: Any) -> Any:
    """The one schema; field order is the landed row's key order without ``body``."""
    text, json_text, int64 = pa.string(), pa.string(), pa.int64()
    floats = pa.list_(pa.float32())
    return pa.schema(
        [
            pa.field("custom_id", text),
            pa.field("line", int64, nullable=False),
            pa.field("ok", pa.bool_(), nullable=False),
            pa.field("status_code", pa.int32()),
            pa.field("error_code", text),
            pa.field("error_message", text),
            pa.field("text", text),
            pa.field("refusal", text),
            pa.field("finish_reason", text),
            pa.field("tool_calls", json_text),
            pa.field("parsed", json_text),
            pa.field("embedding", floats),
            pa.field("embeddings", pa.list_(floats)),
            pa.field("flagged", pa.bool_()),
            pa.field("categories", pa.list_(text)),
            pa.field("images", pa.list_(text)),
            pa.field("input_tokens", int64),
            pa.field("output_tokens", int64),
            pa.field("cached_tokens", int64),
            pa.field("reasoning_tokens", int64),
            pa.field("round", pa.int32(), nullable=False),
            pa.field("batch_id", text),
            pa.field("request", json_text),
        ]
    )


def _json_text(raw: msgspec.Raw) -> bytes | None:
    """The JSON value's bytes (copied, so the row's whole line, body included, is not kept alive by a
    view into it), or None for JSON ``null``. pyarrow takes UTF-8 bytes for a string column as is."""
    data = msgspec.json.encode(raw)
    return None if data == b"null" else data


class _Columns:
    """A few thousand rows as tuples of Python values in schema order, turned into Arrow arrays column by
    column (``zip(*rows)``): one tuple per row is far cheaper than an ``append`` per column per row."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []

    def add(self, row: _LandedRow) -> None:
        self.rows.append(
            (
                row.custom_id,
                row.line,
                row.ok,
                row.status_code,
                row.error_code,
                row.error_message,
                row.text,
                row.refusal,
                row.finish_reason,
                _json_text(row.tool_calls),
                _json_text(row.parsed),
                row.embedding,
                row.embeddings,
                row.flagged,
                row.categories,
                row.images,
                row.input_tokens,
                row.output_tokens,
                row.cached_tokens,
                row.reasoning_tokens,
                row.round,
                row.batch_id,
                _json_text(row.request),
            )
        )

    def record_batch(self, pa: Any, schema: Any) -> Any:
        columns = zip(*self.rows, strict=True)
        arrays = [pa.array(values, type=field.type) for field, values in zip(schema, columns, strict=True)]
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
