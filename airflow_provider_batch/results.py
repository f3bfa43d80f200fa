"""Read batch output and error files: typed per-line results, a small summary, and an input-ordered join.

Three user pains drive this module (peers.md §9, openai-batch-api.md §9, §12, §18):

* **Partial failures hide in plain sight.** A failed request usually has ``error: null`` and its failure
  in ``response.status_code`` (openai-openapi #302; artefactual PR #332 read such 400s as successes), while
  expired and cancelled requests have ``response: null`` and a top-level ``error``. :class:`BatchResult`
  decides ``ok`` from both, and one malformed line is reported instead of aborting the parse (litellm
  PR #37457: one bad line zeroed a batch's spend).
* **Order is not guaranteed.** Positional mapping mislabelled results (tidyllm #37, curator PR #289), so
  :func:`write_joined` joins on ``custom_id`` and writes one row per *input* request, in input order, with
  the requests that have no result at all (expired without a line, lost) marked ``missing``.
* **Outputs are large.** 200 MB output files exhausted 4 GiB pods (control-layer PR #662), so nothing here
  holds a file in memory: lines are decoded one at a time with ``msgspec`` and response bodies stay
  :class:`msgspec.Raw` (the bytes as written) until someone asks for them.

Sources are local paths, binary file objects, or :class:`~airflow.sdk.ObjectStoragePath` (any fsspec store
attached to Airflow). A plain ``str`` is always a local path; wrap ``s3://…`` in ``ObjectStoragePath``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import IO, Any, TypeAlias, TypeVar, overload

import msgspec
from airflow.sdk import ObjectStoragePath

from airflow_provider_batch.answers import (
    INVALID_OUTPUT,
    RequestInfo,
    ToolCall,
    UserSchema,
    answer_row,
    read_request,
    token_counts,
)
from airflow_provider_batch.jsonl import BLOCK_SIZE, JsonlLines

ResultSource: TypeAlias = str | os.PathLike[str] | IO[bytes] | ObjectStoragePath
"""Where a JSONL file is read from; file objects must be binary and are read from their current position."""
Destination: TypeAlias = str | os.PathLike[str] | ObjectStoragePath
"""Where the joined file is written: a local path or any ``ObjectStoragePath``."""

DEFAULT_ID_LIMIT = 100
"""How many ids a summary keeps per list; totals are always exact. The summary is meant for an XCom
manifest, and the complete picture is the joined file."""
MALFORMED_LIMIT = 20
"""How many malformed lines a summary describes; each carries a reason, so fewer than ids."""
REASON_LIMIT = 200
"""Characters of a decoder message kept per malformed line (msgspec's are short; this bounds the worst)."""
EXPIRED = "batch_expired"
CANCELLED = "batch_cancelled"
MISSING = "missing"
"""``error_code`` of a joined row whose request has neither an output nor an error line."""
MALFORMED_INPUT = "malformed_input"
"""``error_code`` of a joined row for an input line without a readable ``custom_id``."""

_T = TypeVar("_T")
_NULL = msgspec.Raw(b"null")
_LOCAL_PROTOCOLS = frozenset({"", "file", "local"})


# Wire shapes (openai-batch-api.md §9). Unknown fields are ignored, so additive API changes do not break us.


class _WireError(msgspec.Struct):
    """Top-level ``error`` ``{code, message}``, and ``response.body.error`` ``{message, type, param, code}``
    of an HTTP failure."""

    code: str | None = None
    message: str | None = None
    type: str | None = None


class _WireResponse(msgspec.Struct):
    status_code: int | None = None
    request_id: str | None = None
    body: msgspec.Raw = _NULL


class _WireLine(msgspec.Struct):
    custom_id: str
    response: _WireResponse | None = None
    error: _WireError | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _WireError | None = None


class _Row(msgspec.Struct, kw_only=True):
    """One line of a landed file (joined or merged): the request's outcome, its answer as flat columns
    (:class:`~airflow_provider_batch.answers.Answer`), and the raw bodies last. Field order is key order;
    every key is in every row, so ETL tools infer one schema from any sample of rows."""

    custom_id: str | None
    line: int
    ok: bool
    status_code: int | None
    error_code: str | None
    error_message: str | None
    text: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    tool_calls: list[ToolCall] | None = None
    parsed: Any = None
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


_LINE_DECODER = msgspec.json.Decoder(_WireLine)
_ERROR_DECODER = msgspec.json.Decoder(_ErrorEnvelope)


# Public values ----------------------------------------------------------------------------------------------


class BatchResult(msgspec.Struct, frozen=True, kw_only=True):
    """One result line of an output or error file.

    ``body`` is the endpoint's response body as :class:`msgspec.Raw`: a zero-copy view of those bytes of
    the line, not yet decoded. Decoding every body eagerly would materialise the whole file's objects when
    most callers only route results by ``ok`` or write them elsewhere; raw bytes also pass through to the
    joined file unchanged (no float or key-order drift). Call :meth:`decode_body` to get Python objects or
    a typed struct.
    """

    custom_id: str
    ok: bool
    """True only when the line has no top-level ``error`` and ``200 <= status_code < 300``; the file it came
    from does not matter (error lines usually carry ``error: null`` and a 4xx/5xx inside ``response``)."""
    status_code: int | None
    """``response.status_code``; None for expired or cancelled requests, which never ran."""
    body: msgspec.Raw
    """``response.body`` as raw JSON; ``null`` when there is no response."""
    error_code: str | None
    """Top-level ``error.code`` (``batch_expired``, ``batch_cancelled``, …), else
    ``response.body.error.code``, else that error's ``type``: OpenAI's 5xx bodies carry ``code: null`` and
    only a type such as ``server_error``, which is still the most useful thing to group failures by."""
    error_message: str | None
    request_id: str | None
    line: int
    """1-based line number in the file it was read from (blank lines counted), for pointing at the source."""

    @overload
    def decode_body(self) -> Any: ...

    @overload
    def decode_body(self, into: type[_T]) -> _T: ...

    def decode_body(self, into: Any = Any) -> Any:
        """Decode ``body``: plain Python objects by default, or ``into`` (a ``msgspec.Struct``, dataclass,
        TypedDict…) validated by msgspec."""
        return msgspec.json.decode(self.body, type=into)


@dataclass(frozen=True)
class MalformedLine:
    """A non-blank line that is not a result (or request) line: bad JSON, or no string ``custom_id``."""

    file: str
    """``output``, ``error`` or ``input`` in summaries; the source's name from :func:`iter_results`."""
    line: int
    reason: str


@dataclass(frozen=True)
class TokenUsage:
    """Token totals over successful lines, in the terms of the batch object's ``usage``."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The batch object's ``usage`` shape, so the two compare with ``==``."""
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class IdSample:
    """An exact count of ids and the first few of them, in the order they were met."""

    total: int = 0
    ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "ids": list(self.ids)}


@dataclass(frozen=True)
class ResultSummary:
    """What a batch's result files say, small enough for an XCom manifest.

    Outcome counts are per result line: ``lines == succeeded + sum(failed_by_status.values()) + expired +
    cancelled + sum(other_errors.values())``. A ``custom_id`` met twice counts twice and is listed in
    ``duplicates``. ``requests``, ``missing`` and ``unknown`` need the input file and are None without it.
    """

    lines: int
    succeeded: int
    failed_by_status: Mapping[int, int]
    """HTTP-level failures (a response with a non-2xx status), by status code."""
    expired: int
    cancelled: int
    other_errors: Mapping[str, int]
    """Lines failed for another reason, by top-level error code (``no_response`` when a line has neither a
    status nor an error)."""
    usage: TokenUsage
    errors_by_code: Mapping[str, int]
    """Every failed line by what to group it by: its error code (``batch_expired``,
    ``rate_limit_exceeded``, ``server_error``...), else ``http_<status>`` for an error body that names
    none, else ``no_response``."""
    failed_ids: IdSample
    """The ``custom_id`` values of failed lines, the first few in file order: where to start looking."""
    duplicates: IdSample
    """``custom_id`` values that have more than one result line."""
    malformed_total: int
    malformed: tuple[MalformedLine, ...]
    requests: int | None = None
    """Requests in the input file."""
    missing: IdSample | None = None
    """Input ``custom_id`` values with neither an output nor an error line: resubmit these."""
    unknown: IdSample | None = None
    """Result ``custom_id`` values absent from the input file (the wrong input file, or a server bug)."""

    @property
    def failed(self) -> int:
        """Result lines that are not successes, whatever the reason."""
        return self.lines - self.succeeded

    def to_dict(self) -> dict[str, Any]:
        """JSON-native values only (status codes become string keys)."""
        return {
            "lines": self.lines,
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failed_by_status": {str(code): count for code, count in sorted(self.failed_by_status.items())},
            "expired": self.expired,
            "cancelled": self.cancelled,
            "other_errors": dict(sorted(self.other_errors.items())),
            "usage": self.usage.to_dict(),
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
            "failed_ids": self.failed_ids.to_dict(),
            "missing": self.missing.to_dict() if self.missing is not None else None,
            "duplicates": self.duplicates.to_dict(),
            "unknown": self.unknown.to_dict() if self.unknown is not None else None,
            "malformed": {"total": self.malformed_total, "lines": [asdict(m) for m in self.malformed]},
        }


@dataclass(frozen=True)
class RowOptions:
    """What the rows of a landed file carry beyond each request's outcome and answer."""

    output_schema: UserSchema | None = None
    """The caller's contract for every reply (a JSON Schema dict or a Pydantic model class), checked in
    place of the schema each request asked for; see :func:`~.answers.check_output`."""
    include_request: bool = False
    """Whether each row carries its request's body (``request``), so a downstream task sees what was
    asked without joining on ``custom_id``; off by default, since it about doubles the file."""


# Public functions -------------------------------------------------------------------------------------------


def failure_code(status_code: int | None, error_code: str | None) -> str:
    """What a failed line is grouped by in ``errors_by_code``: its error code, else ``http_<status>``
    (an error body that names no code), else ``no_response``."""
    if error_code:
        return error_code
    return f"http_{status_code}" if status_code is not None else "no_response"


def iter_results(source: ResultSource) -> Iterator[BatchResult | MalformedLine]:
    """Stream one output or error file, one line at a time, in file order.

    Malformed lines are yielded as :class:`MalformedLine` among the results rather than raised, so a caller
    cannot lose a whole file to one bad line, and cannot overlook it either: the type says it is there.
    Blank lines are skipped.
    """
    label = _describe(source)
    with _open_source(source) as stream:
        for number, _, raw in JsonlLines(stream):
            yield _parse(raw, number, label)


def summarize(
    *,
    output_file: ResultSource | None = None,
    error_file: ResultSource | None = None,
    input_file: ResultSource | None = None,
    id_limit: int = DEFAULT_ID_LIMIT,
) -> ResultSummary:
    """Count outcomes and sum usage over a batch's output and error files in one streaming pass each.

    Either file may be None: OpenAI sets ``output_file_id`` to null when nothing succeeded, and
    ``error_file_id`` to null when nothing failed. With ``input_file``, the summary also reports the requests
    that have no result line (``missing``) and result lines for ids not in the input (``unknown``).

    :param id_limit: how many ids each id list keeps; totals stay exact.
    """
    tally = _Tally(id_limit)
    with ExitStack() as stack:
        sources = [
            _Indexed(label, stack.enter_context(_open_source(source)), 0)
            for label, source in (("output", output_file), ("error", error_file))
            if source is not None
        ]
        index = _index_results(sources, tally)
        if input_file is not None:
            for _ in _walk_input(stack.enter_context(_open_source(input_file)), index, tally):
                pass
    return tally.summary()


def write_joined(
    *,
    input_file: ResultSource,
    destination: Destination,
    output_file: ResultSource | None = None,
    error_file: ResultSource | None = None,
    id_limit: int = DEFAULT_ID_LIMIT,
    options: RowOptions | None = None,
    batch_id: str | None = None,
) -> ResultSummary:
    """Write one JSONL row per input request, in input order, and return the summary of the same pass.

    A row holds the request's outcome (``custom_id``; ``line``, its 1-based line in the input file; ``ok``;
    ``status_code``; ``error_code``; ``error_message``), its answer as flat columns (``text``, ``refusal``,
    ``finish_reason``, ``tool_calls``, ``parsed``, ``embedding``/``embeddings``, ``flagged``/``categories``,
    ``images``, token counts: :class:`~airflow_provider_batch.answers.Answer`), ``round`` (1 here),
    ``batch_id``, ``request`` (the request body with ``options.include_request``, else null) and ``body``,
    the response body exactly as the result file had it. A request without a result line gets ``ok: false,
    error_code: "missing"``; an input line without a readable ``custom_id`` gets ``custom_id: null,
    error_code: "malformed_input"``, so every non-blank input line has exactly one row. When a ``custom_id``
    has several result lines, the first successful one wins, else the first one: a request that did succeed
    must not be reported failed. A successful reply that is not the structured output its request asked for
    (or not ``options.output_schema``) becomes ``ok: false, error_code: "invalid_output"`` with the reason,
    and counts as failed in the summary.

    Memory grows with the number of requests, not with the size of the files: one pass over the result files
    records, per ``custom_id``, which file and byte range holds its line (about 20 MB for 50,000 requests);
    the input is then read in order and each row's line is read back by seeking. Local files and seekable
    file objects are read in place (a file object's position moves). Object storage and non-seekable streams
    are first copied to an anonymous local temporary file, because the second pass is random access in input
    order: tens of thousands of ranged reads against S3 or GCS would cost one request each, while the copy is
    one sequential download (it needs local disk space the size of the result files). The input file is
    only read sequentially, so it is streamed from wherever it is.

    :param destination: a local path or any ``ObjectStoragePath``; overwritten.
    :param id_limit: how many ids each id list of the summary keeps; totals stay exact.
    """
    tally = _Tally(id_limit)
    with ExitStack() as stack:
        sources = [
            stack.enter_context(_seekable_copy(label, source))
            for label, source in (("output", output_file), ("error", error_file))
            if source is not None
        ]
        index = _index_results(sources, tally)
        requests = _walk_input(stack.enter_context(_open_source(input_file)), index, tally)
        with _open_path(destination, "wb") as out:
            _write_rows(out, requests, sources, tally, options or RowOptions(), batch_id)
    return tally.summary()


# Parsing ----------------------------------------------------------------------------------------------------


def _parse(raw: bytes, number: int, label: str) -> BatchResult | MalformedLine:
    try:
        wire = _LINE_DECODER.decode(raw)
    except msgspec.DecodeError as exc:  # also msgspec.ValidationError, e.g. no custom_id
        return MalformedLine(label, number, str(exc)[:REASON_LIMIT])
    return _to_result(wire, number)


def _to_result(wire: _WireLine, number: int) -> BatchResult:
    response = wire.response
    status = response.status_code if response is not None else None
    body = response.body if response is not None else _NULL
    ok = wire.error is None and status is not None and 200 <= status < 300
    code = message = None
    if wire.error is not None:
        code, message = wire.error.code, wire.error.message
    elif not ok and response is not None:
        code, message = _http_error(body)
    return BatchResult(
        custom_id=wire.custom_id,
        ok=ok,
        status_code=status,
        body=body,
        error_code=code,
        error_message=message,
        request_id=response.request_id if response is not None else None,
        line=number,
    )


def _http_error(body: msgspec.Raw) -> tuple[str | None, str | None]:
    """``(code or type, message)`` of an HTTP error body; ``(None, None)`` when the body is not OpenAI's
    error envelope (a proxy's HTML page, say): the status code still tells the caller what happened."""
    try:
        error = _ERROR_DECODER.decode(body).error
    except msgspec.DecodeError:
        return None, None
    if error is None:
        return None, None
    return error.code or error.type, error.message


# Summary ----------------------------------------------------------------------------------------------------


_Slot: TypeAlias = tuple[int, int, int, bool]
"""Where a result line is: (source index, byte offset, length, ok)."""


@dataclass(frozen=True)
class _Indexed:
    """A result file being indexed: its label, an open stream, and the stream position of byte 0."""

    label: str
    stream: IO[bytes]
    start: int


@dataclass
class _Tally:
    """Mutable counters behind :class:`ResultSummary`, fed by the passes over result and input files."""

    id_limit: int
    lines: int = 0
    succeeded: int = 0
    expired: int = 0
    cancelled: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    other: dict[str, int] = field(default_factory=dict)
    by_code: dict[str, int] = field(default_factory=dict)
    failed_ids: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=lambda: {f.name: 0 for f in fields(TokenUsage)})
    duplicates: dict[str, None] = field(default_factory=dict)
    """An ordered set: every duplicated id (duplicates are rare, and the total must be exact)."""
    malformed_total: int = 0
    malformed: list[MalformedLine] = field(default_factory=list)
    requests: int | None = None
    missing: IdSample | None = None
    unknown: IdSample | None = None

    def add(self, result: BatchResult) -> None:
        self.lines += 1
        if result.ok:
            self.succeeded += 1
            self._add_usage(result.body)
            return
        code = failure_code(result.status_code, result.error_code)
        self.by_code[code] = self.by_code.get(code, 0) + 1
        if len(self.failed_ids) < self.id_limit:
            self.failed_ids.append(result.custom_id)
        if result.status_code is not None and not 200 <= result.status_code < 300:
            self.by_status[result.status_code] = self.by_status.get(result.status_code, 0) + 1
        elif result.error_code == EXPIRED:
            self.expired += 1
        elif result.error_code == CANCELLED:
            self.cancelled += 1
        else:
            code = result.error_code or "no_response"
            self.other[code] = self.other.get(code, 0) + 1

    def invalid(self, custom_id: str) -> None:
        """Move a counted success to the failures: its reply is not the structured output asked for.
        Its usage stays counted: the request ran and was billed."""
        self.succeeded -= 1
        self.by_code[INVALID_OUTPUT] = self.by_code.get(INVALID_OUTPUT, 0) + 1
        self.other[INVALID_OUTPUT] = self.other.get(INVALID_OUTPUT, 0) + 1
        if len(self.failed_ids) < self.id_limit:
            self.failed_ids.append(custom_id)

    def add_malformed(self, line: MalformedLine) -> None:
        self.malformed_total += 1
        if len(self.malformed) < MALFORMED_LIMIT:
            self.malformed.append(line)

    def _add_usage(self, body: msgspec.Raw) -> None:
        counts = token_counts(body)
        inputs, outputs = counts.input_tokens or 0, counts.output_tokens or 0
        self.usage["input_tokens"] += inputs
        self.usage["output_tokens"] += outputs
        self.usage["total_tokens"] += inputs + outputs
        self.usage["cached_tokens"] += counts.cached_tokens or 0
        self.usage["reasoning_tokens"] += counts.reasoning_tokens or 0

    def sample(self, ids: list[str], total: int) -> IdSample:
        return IdSample(total, tuple(ids[: self.id_limit]))

    def summary(self) -> ResultSummary:
        return ResultSummary(
            lines=self.lines,
            succeeded=self.succeeded,
            failed_by_status=dict(self.by_status),
            expired=self.expired,
            cancelled=self.cancelled,
            other_errors=dict(self.other),
            usage=TokenUsage(**self.usage),
            errors_by_code=dict(self.by_code),
            failed_ids=self.sample(self.failed_ids, self.lines - self.succeeded),
            duplicates=self.sample(list(self.duplicates), len(self.duplicates)),
            malformed_total=self.malformed_total,
            malformed=tuple(self.malformed),
            requests=self.requests,
            missing=self.missing,
            unknown=self.unknown,
        )


def _index_results(sources: list[_Indexed], tally: _Tally) -> dict[str, _Slot]:
    """One pass over the result files: tally every line and map each ``custom_id`` to its line's slot."""
    index: dict[str, _Slot] = {}
    for position, source in enumerate(sources):
        for number, offset, raw in JsonlLines(source.stream):
            result = _parse(raw, number, source.label)
            if isinstance(result, MalformedLine):
                tally.add_malformed(result)
                continue
            tally.add(result)
            slot = (position, source.start + offset, len(raw), result.ok)
            previous = index.get(result.custom_id)
            if previous is None:
                index[result.custom_id] = slot
                continue
            tally.duplicates[result.custom_id] = None
            if result.ok and not previous[3]:
                index[result.custom_id] = slot
    return index


def _walk_input(
    stream: IO[bytes], index: dict[str, _Slot], tally: _Tally
) -> Iterator[tuple[int, RequestInfo | None, _Slot | None]]:
    """Yield ``(input line, request, slot)`` per request in input order; record ``requests``, ``missing``
    and ``unknown`` in ``tally`` once exhausted. ``request`` is None for a malformed input line."""
    seen: set[str] = set()
    missing: list[str] = []
    missing_total = requests = 0
    for number, _, raw in JsonlLines(stream):
        request = read_input_line(raw, number, tally)
        if request is None:
            yield number, None, None
            continue
        custom_id = request.custom_id
        requests += 1
        seen.add(custom_id)
        slot = index.get(custom_id)
        if slot is None:
            missing_total += 1
            if len(missing) < tally.id_limit:
                missing.append(custom_id)
        yield number, request, slot
    unknown = [custom_id for custom_id in index if custom_id not in seen]
    tally.requests = requests
    tally.missing = tally.sample(missing, missing_total)
    tally.unknown = tally.sample(unknown, len(unknown))


def read_input_line(raw: bytes, number: int, tally: _Tally) -> RequestInfo | None:
    """An input line's request, or None for a line without a readable ``custom_id`` (recorded as
    malformed in ``tally``)."""
    try:
        return read_request(raw)
    except msgspec.DecodeError as exc:
        tally.add_malformed(MalformedLine("input", number, str(exc)[:REASON_LIMIT]))
        return None


# Rows -------------------------------------------------------------------------------------------------------


def make_row(
    number: int,
    request: RequestInfo | None,
    result: BatchResult | None,
    options: RowOptions,
    *,
    round_number: int = 1,
    batch_id: str | None = None,
) -> _Row:
    """The landed row of input line ``number``: its outcome and its answer, the reply checked against
    the structured output asked for. Without a ``result``, a ``missing`` row (or ``malformed_input``
    without a ``request``)."""
    carried = request.body if request is not None and options.include_request else _NULL
    custom_id = request.custom_id if request is not None else None
    if result is None:
        code, message = (
            (MISSING, "No output or error line has this custom_id.")
            if request is not None
            else (MALFORMED_INPUT, "This input line has no readable custom_id.")
        )
        return _Row(
            custom_id=custom_id,
            line=number,
            ok=False,
            status_code=None,
            error_code=code,
            error_message=message,
            round=round_number,
            batch_id=batch_id,
            request=carried,
        )
    answer, invalid = answer_row(request, result.ok, result.body, user_schema=options.output_schema)
    return _Row(
        custom_id=custom_id,
        line=number,
        ok=result.ok and invalid is None,
        status_code=result.status_code,
        error_code=INVALID_OUTPUT if invalid is not None else result.error_code,
        error_message=invalid if invalid is not None else result.error_message,
        round=round_number,
        batch_id=batch_id,
        request=carried,
        body=result.body,
        **msgspec.structs.asdict(answer),
    )


def read_slot(sources: list[_Indexed], slot: _Slot, number: int) -> BatchResult:
    """Read back the result line a slot points at; it carries the input's line ``number``."""
    source = sources[slot[0]]
    source.stream.seek(slot[1])
    return _to_result(_LINE_DECODER.decode(source.stream.read(slot[2])), number)


# I/O --------------------------------------------------------------------------------------------------------


def _describe(source: ResultSource) -> str:
    if isinstance(source, ObjectStoragePath):
        return str(source)
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return str(getattr(source, "name", "<stream>"))


def _local_path(source: ResultSource) -> str | os.PathLike[str] | None:
    if isinstance(source, ObjectStoragePath):
        return source.path if source.protocol in _LOCAL_PROTOCOLS else None
    if isinstance(source, str | os.PathLike):
        return source
    return None


@contextmanager
def _open_path(path: Destination, mode: str) -> Iterator[IO[bytes]]:
    if isinstance(path, ObjectStoragePath):
        with path.open(mode) as stream:
            yield stream
    else:
        with open(path, mode) as stream:
            yield stream


@contextmanager
def _open_source(source: ResultSource) -> Iterator[IO[bytes]]:
    """Open a path for binary reading; a caller's file object is used as is and left open (it is theirs)."""
    if isinstance(source, ObjectStoragePath | str | os.PathLike):
        with _open_path(source, "rb") as stream:
            yield stream
    else:
        yield source


@contextmanager
def _seekable_copy(label: str, source: ResultSource) -> Iterator[_Indexed]:
    """Open a result file for random access: local files and seekable file objects in place (a caller's file
    object is read from its current position and left elsewhere), anything else spooled to disk first."""
    local = _local_path(source)
    if local is not None:
        with open(local, "rb") as stream:
            yield _Indexed(label, stream, 0)
    elif not isinstance(source, ObjectStoragePath | str | os.PathLike) and source.seekable():
        yield _Indexed(label, source, source.tell())
    else:
        with _open_source(source) as stream, tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(stream, spool, BLOCK_SIZE)
            spool.seek(0)
            yield _Indexed(label, spool, 0)


def _write_rows(
    out: IO[bytes],
    requests: Iterator[tuple[int, RequestInfo | None, _Slot | None]],
    sources: list[_Indexed],
    tally: _Tally,
    options: RowOptions,
    batch_id: str | None,
) -> None:
    """Write the joined rows in input order, moving the replies that miss their schema from the tally's
    successes to its failures."""
    sink = RowSink(out)
    for number, request, slot in requests:
        result = read_slot(sources, slot, number) if slot is not None else None
        row = make_row(number, request, result, options, batch_id=batch_id)
        if result is not None and result.ok and not row.ok:
            tally.invalid(result.custom_id)
        sink.row(row)
    sink.flush()


class RowSink:
    """Rows (structs) or lines (bytes) gathered into ~1 MiB writes: a ``write`` per row would pay the
    per-call cost of fsspec and of Airflow's lineage wrapper a million times."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.buffer = bytearray()
        self.encoder = msgspec.json.Encoder()

    def line(self, data: bytes) -> None:
        self.buffer += data
        self.buffer += b"\n"
        if len(self.buffer) >= BLOCK_SIZE:
            self.flush()

    def row(self, row: msgspec.Struct) -> None:
        self.encoder.encode_into(row, self.buffer, -1)
        self.line(b"")

    def flush(self) -> None:
        if self.buffer:
            self.out.write(bytes(self.buffer))
            self.buffer.clear()
