"""Build and check OpenAI batch input files (JSONL, one request per line) before they are uploaded.

OpenAI accepts any file at ``POST /batches`` and reports a bad line only minutes later, by failing the whole
batch with one terse error code. Checking locally turns that round trip into an immediate error naming the
line, the field and what was expected. The checks follow the reference (``openai-batch-api.md`` §8, §10,
§11): every line a JSON object with ``custom_id``, ``method``, ``url`` and ``body``, ``method`` ``POST``,
``url`` equal to the batch endpoint, unique ids, one model, no streaming, and the request, size and
embedding-input limits.

:func:`write_batch_file` and :func:`validate_batch_file` apply the same rules through one :class:`_Checker`,
so a file the writer produced passes the validator by construction. Airflow's ``ObjectStoragePath`` is
recognised by its ``open`` method, so plain paths and file objects work without any Airflow storage set up,
for instance in a pre-upload check in CI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, TypeGuard, cast

import msgspec

from airflow_provider_batch.exceptions import OpenAIBatchInvalidInput
from airflow_provider_batch.jsonl import BLOCK_SIZE, JsonlLines
from airflow_provider_batch.limits import (
    MAX_EMBEDDING_INPUTS,
    MAX_FILE_BYTES,
    MAX_REQUESTS,
    MODEL_REQUIRED_ENDPOINTS,
    endpoint_problem,
)
from airflow_provider_batch.tokens import OutputCaps

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_batch.tokens import ModelTokens, RequestTokens, TokenTally

    FileLike = str | os.PathLike[str] | ObjectStoragePath | IO[bytes]
    """Where a batch file is read from or written to: a local path, any object storage path, a file object."""

DEFAULT_MAX_ERRORS = 20
"""Errors kept by a validation pass; past it they are only counted, since the first few are what one fixes."""

REQUEST_FIELDS = ("custom_id", "method", "url", "body")
"""The fields of a request line; the writer rejects anything else rather than drop it silently."""

EMBEDDINGS_ENDPOINT = "/v1/embeddings"


@dataclass(frozen=True)
class LineError:
    """One problem in a batch input file, or in the record that would have become a line.

    :param line: 1-based line number, counting blank lines so that it matches an editor; ``None`` only for a
        problem of the whole file (it holds no request).
    :param field: the request field at fault, dotted (``"url"``, ``"body.model"``), or ``None`` when the line
        as a whole is wrong (not UTF-8, not JSON, over a limit).
    :param message: what was expected and what was found.
    :param custom_id: the request's ``custom_id`` when the line has a readable one, so that a record built
        upstream can be found without counting lines.
    """

    line: int | None
    field: str | None
    message: str
    custom_id: str | None = None

    def __str__(self) -> str:
        if self.line is None:
            return f"file: {self.message}"
        named = f" (custom_id {_describe(self.custom_id)})" if self.custom_id else ""
        return f"line {self.line}{named}: {self.message}"


@dataclass(frozen=True)
class ValidationReport:
    """What one validation pass over a batch input file found.

    :param endpoint: the batch endpoint the file was checked against.
    :param requests: non-blank lines, valid or not.
    :param bytes: bytes read; the file size, except that reading stops soon after the size limit is exceeded.
    :param model: the model of the first line that names one.
    :param embedding_inputs: embedding inputs across all lines (``/v1/embeddings`` only, else 0).
    :param errors: up to ``max_errors`` problems, in line order; empty when the file is valid.
    :param unreported_errors: problems found after ``errors`` reached its cap.
    """

    endpoint: str
    requests: int
    bytes: int
    model: str | None
    embedding_inputs: int
    errors: tuple[LineError, ...]
    unreported_errors: int
    tokens: Mapping[str | None, ModelTokens] = field(default_factory=dict)
    """Token estimates per model, when the pass counted them (:class:`~.tokens.TokenTally`)."""

    @property
    def valid(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class BatchFileSummary:
    """What :func:`write_batch_file` wrote.

    :param destination: the path or URI written, or ``None`` for a file object.
    """

    destination: str | None
    endpoint: str
    requests: int
    bytes: int
    model: str | None


class _Body(OutputCaps, gc=False):
    """The parts of a request body the rules read; every other field is skipped by the decoder.

    Skipping is what makes validation cheaper than a plain decode: ``messages``, ``tools`` and the like are
    scanned but never turned into Python objects. ``input`` stays raw JSON because only embeddings batches
    need to look inside it. The output caps it inherits are for a token tally, which reads them here
    rather than decoding the line a second time.
    """

    model: str | None = None
    stream: bool | None = None
    input: msgspec.Raw = msgspec.Raw()


class _Request(msgspec.Struct, gc=False):
    """A request line in its expected shape; a line that does not decode into it is re-read generically."""

    custom_id: str
    method: str
    url: str
    body: _Body


_DECODER = msgspec.json.Decoder(_Request)


class _Checker:
    """The rules, applied line by line, with what a pass has seen so far.

    Lines in the expected shape go through :meth:`check_line`'s typed decode. Anything else, and every record
    given to the writer, goes through :meth:`_check_value`, which works on plain Python values and is the
    reference: the typed path is only a faster way to the same verdict, and its failure means nothing until
    the generic path has named the problem.

    :param batch_limits: check the request and embedding-input limits of one batch over every line seen. The
        shard splitter turns them off: it cuts the input into batches before either limit is reached.
    :param first_line_of: ``(custom_id, line) -> the line that first used custom_id``, recording it when new.
        By default a dict of the ids, exact; the splitter passes a table of digests, which stays small for a
        whole job's millions of ids.
    """

    def __init__(
        self,
        endpoint: str,
        max_errors: int,
        *,
        batch_limits: bool = True,
        first_line_of: Callable[[str, int], int] | None = None,
        tokens: TokenTally | None = None,
    ) -> None:
        if problem := endpoint_problem(endpoint):
            raise ValueError(problem)
        if max_errors < 1:
            raise ValueError(f"max_errors must be at least 1; got {max_errors}")
        self.endpoint = endpoint
        self.max_errors = max_errors
        self.errors: list[LineError] = []
        self.unreported = 0
        self.requests = 0
        self.model: str | None = None
        self.embedding_inputs = 0
        self._model_line = 0
        self._embeddings = endpoint == EMBEDDINGS_ENDPOINT
        self._batch_limits = batch_limits
        ids: dict[str, int] = {}
        self._first_line_of = first_line_of or ids.setdefault
        self._line_id: tuple[int, str] | None = None
        """The line being checked and its ``custom_id``, once the envelope named one."""
        self.tokens = tokens
        self.line_tokens: RequestTokens | None = None
        """The token estimate of the line just checked (None when not counted: no tally, a bad line,
        or a line left out of a sampled count)."""

    def fail(self, line: int | None, field: str | None, message: str) -> None:
        if len(self.errors) < self.max_errors:
            custom_id = self._line_id[1] if self._line_id and self._line_id[0] == line else None
            self.errors.append(LineError(line, field, message, custom_id))
        else:
            self.unreported += 1

    def check_line(self, line: int, raw: bytes) -> None:
        """Check one non-blank line of a file, without its newline; count its tokens with a tally."""
        self._count_request(line)
        self.line_tokens = None
        # The typed decoder does not validate UTF-8 inside the fields it skips, so check it here; ``isascii``
        # is a fast scan and spares the decode for the usual ``json.dumps`` output.
        if not raw.isascii():
            try:
                raw.decode()
            except UnicodeDecodeError as error:
                self.fail(
                    line,
                    None,
                    f"expected UTF-8 text, got byte 0x{raw[error.start]:02x} at offset {error.start}"
                    " of the line, which is not valid UTF-8",
                )
                return
        try:
            request = _DECODER.decode(raw)
        except msgspec.DecodeError:
            try:
                value = msgspec.json.decode(raw)
            except msgspec.DecodeError as error:
                self.fail(line, None, f"expected a JSON object, got invalid JSON: {error}")
            else:
                self._check_value(line, value)
            return
        self._check_envelope(line, request.custom_id, request.method, request.url)
        body = request.body
        embedding_input = msgspec.json.decode(body.input) if self._embeddings and body.input else None
        self._check_body(line, body.model, body.stream, embedding_input)
        if self.tokens is not None:
            self.line_tokens = self.tokens.add_checked(raw, body.model, body)

    def check_record(self, line: int, value: object) -> None:
        """Check one request given as Python values, the record the writer is about to encode."""
        self._count_request(line)
        self._check_value(line, value)

    def _check_value(self, line: int, value: object) -> None:
        """Check a request as Python values: the reference path, shared by the writer and refused lines."""
        if not isinstance(value, Mapping):
            self.fail(line, None, f"expected a JSON object, got {_describe(value)}")
            return
        self._check_envelope(
            line,
            value.get("custom_id", msgspec.UNSET),
            value.get("method", msgspec.UNSET),
            value.get("url", msgspec.UNSET),
        )
        body = value.get("body", msgspec.UNSET)
        if not isinstance(body, Mapping):
            self.fail(line, "body", _must("body", "be a JSON object", body))
            return
        self._check_body(line, body.get("model"), body.get("stream"), body.get("input"))
        if self.tokens is not None:
            self.line_tokens = self.tokens.add(body)

    def too_large(self, line: int) -> None:
        self.fail(
            line,
            None,
            f"expected at most {MAX_FILE_BYTES:,} bytes ({MAX_FILE_BYTES / 2**20:g} MiB) per batch file,"
            " got more by the end of this line",
        )

    def finish(self, size: int) -> ValidationReport:
        """Close the pass: add the whole-file checks and freeze what was found."""
        if self.requests == 0:
            self.fail(None, None, "expected at least one request, got none")
        return ValidationReport(
            endpoint=self.endpoint,
            requests=self.requests,
            bytes=size,
            model=self.model,
            embedding_inputs=self.embedding_inputs,
            errors=tuple(self.errors),
            unreported_errors=self.unreported,
            tokens=self.tokens.models if self.tokens is not None else {},
        )

    def error(self) -> OpenAIBatchInvalidInput:
        return OpenAIBatchInvalidInput(list(self.errors), self.unreported)

    def _count_request(self, line: int) -> None:
        self.requests += 1
        if self._batch_limits and self.requests == MAX_REQUESTS + 1:
            self.fail(
                line,
                None,
                f"expected at most {MAX_REQUESTS:,} requests per batch,"
                f" got request {self.requests:,} on this line",
            )

    def _check_envelope(self, line: int, custom_id: object, method: object, url: object) -> None:
        if isinstance(custom_id, str) and custom_id:
            self._line_id = (line, custom_id)
        if not isinstance(custom_id, str) or not custom_id:
            self.fail(line, "custom_id", _must("custom_id", "be a non-empty string", custom_id))
        elif (first := self._first_line_of(custom_id, line)) != line:
            self.fail(
                line,
                "custom_id",
                f"field 'custom_id' must be unique, got {_describe(custom_id)} already used on line {first}",
            )
        if method != "POST":
            self.fail(line, "method", _must("method", "be 'POST'", method))
        if url != self.endpoint:
            self.fail(line, "url", _must("url", f"equal the batch endpoint '{self.endpoint}'", url))

    def _check_body(self, line: int, model: object, stream: object, embedding_input: object) -> None:
        if model in (None, msgspec.UNSET) and self.endpoint in MODEL_REQUIRED_ENDPOINTS:
            self.fail(line, "body.model", f"field 'body.model' is missing; {self.endpoint} needs a model")
        elif model not in (None, msgspec.UNSET):
            if not isinstance(model, str):
                self.fail(line, "body.model", _must("body.model", "be a string", model))
            elif self.model is None:
                self.model, self._model_line = model, line
            elif model != self.model:
                self.fail(
                    line,
                    "body.model",
                    f"field 'body.model' must be {_describe(self.model)} as on line {self._model_line}"
                    f" (one model per batch), got {_describe(model)}",
                )
        if stream is True:
            self.fail(
                line, "body.stream", "field 'body.stream' must not be true (batch requests cannot stream)"
            )
        if self._embeddings:
            before = self.embedding_inputs
            self.embedding_inputs += _count_embedding_inputs(embedding_input)
            if self._batch_limits and before <= MAX_EMBEDDING_INPUTS < self.embedding_inputs:
                self.fail(
                    line,
                    "body.input",
                    "field 'body.input' must keep the batch within"
                    f" {MAX_EMBEDDING_INPUTS:,} embedding inputs, got {self.embedding_inputs:,} by this line",
                )


def _must(field: str, expectation: str, value: object) -> str:
    """Phrase a field error the same way for a missing and a wrong value."""
    if value is msgspec.UNSET:
        return f"field '{field}' is missing; it must {expectation}"
    return f"field '{field}' must {expectation}, got {_describe(value)}"


def _describe(value: object) -> str:
    """Name a value in a message: strings quoted (cut at 100 characters), anything else by its JSON type."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 100 else f"{value[:100]!r}..."
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"  # only reachable from records built in Python, e.g. a tuple


def _count_embedding_inputs(value: object) -> int:
    """Count the inputs of one embeddings request, which is what OpenAI's 50,000 limit counts.

    A string or a token array (a list of integers) is one input; a list of strings or token arrays is one
    input per item. A missing input counts nothing, and any other shape one: such a request fails on its
    own at OpenAI, which is not a file-level problem.
    """
    if value is None:
        return 0
    if isinstance(value, list) and not all(isinstance(item, int) for item in value):
        return len(value)
    return 1


def validate_batch_file(
    source: FileLike, *, endpoint: str, max_errors: int = DEFAULT_MAX_ERRORS
) -> ValidationReport:
    """Check a batch input file against OpenAI's rules in one streaming pass, before it is uploaded.

    Memory stays flat whatever the file size (one read chunk, the longest line and the set of ``custom_id``
    values), and only the fields the rules need are decoded. Reading stops once the file exceeds the size
    limit, since nothing past that point can make it valid.

    :param source: a local path, an ``airflow.sdk.ObjectStoragePath`` (any fsspec store), or a binary file
        object, read from its current position and left open.
    :param endpoint: the batch endpoint, e.g. ``"/v1/chat/completions"``; every line's ``url`` must equal it.
    :param max_errors: problems kept in the report; later ones are only counted.
    :return: the report; check ``report.valid`` or use :func:`require_valid_batch_file` to raise.
    """
    checker = _Checker(endpoint, max_errors)
    with _open(source, "rb") as stream:
        lines = JsonlLines(stream, skip_blank=False)
        for number, offset, raw in lines:
            # ``offset + len(raw) + 1`` counts a newline after every line, one too many for an unterminated
            # last line; only when more bytes than the limit were actually read is the file too large.
            if offset + len(raw) >= MAX_FILE_BYTES and lines.bytes_read > MAX_FILE_BYTES:
                checker.too_large(number)
                break
            if raw and not raw.isspace():
                checker.check_line(number, raw)
    return checker.finish(lines.bytes_read)


def require_valid_batch_file(
    source: FileLike, *, endpoint: str, max_errors: int = DEFAULT_MAX_ERRORS
) -> ValidationReport:
    """Validate like :func:`validate_batch_file`, raising :class:`OpenAIBatchInvalidInput` on any problem."""
    report = validate_batch_file(source, endpoint=endpoint, max_errors=max_errors)
    if report.errors:
        raise OpenAIBatchInvalidInput(list(report.errors), report.unreported_errors)
    return report


def write_batch_file(
    records: Iterable[Mapping[str, Any]], destination: FileLike, *, endpoint: str
) -> BatchFileSummary:
    """Write records as a batch input file, checking each one as it goes.

    Each record has ``custom_id`` and ``body``; ``method`` and ``url`` are filled in (``POST`` and
    ``endpoint``) and, when a record has them, must already match. Records are consumed one at a time, so a
    generator of 50,000 requests is never held in memory.

    Lines are spooled to a local temporary file and copied to ``destination`` only once every record has
    passed. A bad record can be the last one (a duplicate id, a second model, request 50,001), so checking
    each record before writing it is not enough; and an object store commits whatever was written when its
    file is closed, even on an exception, so deleting afterwards would briefly expose a half-written file and
    still leave one behind if the delete failed. The spool costs one local copy of at most 200 MiB.

    :param records: mappings with ``custom_id``, ``body`` and optionally ``method`` and ``url``.
    :param destination: a local path, an ``airflow.sdk.ObjectStoragePath`` (opened with ``open("wb")``), or
        a binary file object, written from its current position and left open.
    :param endpoint: the batch endpoint, one of :data:`airflow_provider_batch.limits.ENDPOINTS`.
    :raises OpenAIBatchInvalidInput: listing the problems of every bad record (up to
        :data:`DEFAULT_MAX_ERRORS`, the rest counted), each with its line and ``custom_id``;
        ``destination`` is not touched.
    """
    checker = _Checker(endpoint, DEFAULT_MAX_ERRORS)
    with tempfile.TemporaryFile(buffering=BLOCK_SIZE) as spool:
        size = 0
        for number, record in enumerate(records, start=1):
            line = _encode_record(checker, number, record)
            if line is None:
                continue  # the file is refused; the remaining records are still checked, not written
            size += len(line) + 1
            if size > MAX_FILE_BYTES:
                checker.too_large(number)
                raise checker.error()
            spool.write(line)
            spool.write(b"\n")
        checker.finish(size)
        if checker.errors:
            raise checker.error()
        spool.seek(0)
        with _open(destination, "wb") as out:
            shutil.copyfileobj(spool, out, BLOCK_SIZE)
    return BatchFileSummary(
        destination=_name(destination),
        endpoint=endpoint,
        requests=checker.requests,
        bytes=size,
        model=checker.model,
    )


def _encode_record(checker: _Checker, line: int, record: object) -> bytes | None:
    """Turn a record into its JSON line, or report why it cannot be one and return ``None``."""
    if not isinstance(record, Mapping):
        checker.check_record(line, record)
        return None
    request = {
        "custom_id": record.get("custom_id", msgspec.UNSET),
        "method": record.get("method", "POST"),
        "url": record.get("url", checker.endpoint),
        "body": record.get("body", msgspec.UNSET),
    }
    checker.check_record(line, request)
    for key in record:
        if key not in REQUEST_FIELDS:
            checker.fail(
                line,
                str(key),
                f"field '{key}' must not be set: a request has only {', '.join(REQUEST_FIELDS)}",
            )
    if checker.errors or checker.unreported:
        return None
    try:
        return msgspec.json.encode(request)
    except (TypeError, msgspec.EncodeError) as error:
        checker.fail(line, "body", f"field 'body' must be JSON-serialisable, got an error: {error}")
        return None


def _is_file_object(target: object) -> TypeGuard[IO[bytes]]:
    return hasattr(target, "read") or hasattr(target, "write")


def _is_local_path(target: object) -> TypeGuard[str | os.PathLike[str]]:
    # Before Airflow 3.2, ObjectStoragePath is also an os.PathLike (whose fspath is its URL): tell it
    # apart by its ``protocol``.
    return isinstance(target, (str, os.PathLike)) and not hasattr(target, "protocol")


def _name(target: FileLike) -> str | None:
    """A local path, or an object storage path's URL; ``None`` for a file object."""
    if _is_local_path(target):
        return os.fspath(target)
    return None if _is_file_object(target) else str(target)


def _open(target: FileLike, mode: str) -> AbstractContextManager[IO[bytes]]:
    """Open a local path, an ``ObjectStoragePath`` or a caller's file object (left open), in binary."""
    if _is_local_path(target):
        return open(target, mode, buffering=0 if mode == "rb" else -1)
    if _is_file_object(target):
        return nullcontext(target)
    # What remains is an ObjectStoragePath, which this module only knows by its ``protocol``.
    return cast("ObjectStoragePath", target).open(mode)
