"""Cut a batch input of any size into shards: inputs that each fit one OpenAI batch.

One batch takes at most 50,000 requests, 200 MiB and, for embeddings, 50,000 inputs (``limits.py``); users
can set smaller caps. A larger input is cut on line boundaries, by count *and* bytes (reference §18 item
13), into ``shard-00001.jsonl``, ``shard-00002.jsonl``... in input order, so results concatenated in shard
order come back in input order. Each line is copied byte for byte: nothing is re-encoded, so what is
submitted is exactly what the user wrote.

The cut is a pure rule (:meth:`ShardLimits.starts_new_shard`); :func:`split_batch_file` applies it in one
streaming pass that also validates every line with the rules of :func:`~.requests.validate_batch_file`,
checks that every ``custom_id`` is unique across the whole input (the job merges results by it), and
raises every problem before anything can be uploaded. An input that fits one batch is not copied at all:
the plan names the source itself, so the single-batch path stays what it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple, cast

from airflow_provider_batch.jsonl import BLOCK_SIZE, JsonlLines
from airflow_provider_batch.limits import MAX_EMBEDDING_INPUTS, MAX_FILE_BYTES, MAX_REQUESTS
from airflow_provider_batch.requests import DEFAULT_MAX_ERRORS, _Checker, _is_local_path, _open

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_batch.requests import FileLike
    from airflow_provider_batch.tokens import ModelTokens, RequestTokens, TokenTally

    Directory = str | os.PathLike[str] | ObjectStoragePath
    """Where shard files are written: a local directory or any object storage path."""

SHARD_NAME = "shard-{:05d}.jsonl"
"""File name of shard ``n`` (1-based); zero-padded so that a listing sorts in input order."""


def _check_limit(name: str, value: object, api_limit: int, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= api_limit:
        raise ValueError(
            f"{name} must be an integer from 1 to {api_limit:,} (OpenAI's limit of {unit} per batch),"
            f" or None for that limit; got {value!r}"
        )


class ShardSize(NamedTuple):
    """The running size of a shard: what the cut rule weighs the next line against."""

    requests: int = 0
    bytes: int = 0
    embedding_inputs: int = 0


@dataclass(frozen=True)
class ShardLimits:
    """What one shard may hold; each value defaults to, and may not exceed, OpenAI's limit per batch.

    :param max_requests: requests (non-blank lines) per shard.
    :param max_bytes: bytes per shard file, newlines included.
    :param max_embedding_inputs: embedding inputs per shard, counted as OpenAI counts them (``/v1/embeddings``
        only; every other endpoint's lines count none).
    """

    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_FILE_BYTES
    max_embedding_inputs: int = MAX_EMBEDDING_INPUTS

    def __post_init__(self) -> None:
        _check_limit("max_requests", self.max_requests, MAX_REQUESTS, "requests")
        _check_limit("max_bytes", self.max_bytes, MAX_FILE_BYTES, "bytes")
        _check_limit(
            "max_embedding_inputs", self.max_embedding_inputs, MAX_EMBEDDING_INPUTS, "embedding inputs"
        )

    @classmethod
    def from_batch_caps(
        cls, max_requests_per_batch: int | None = None, max_bytes_per_batch: int | None = None
    ) -> ShardLimits:
        """The limits for the operator's caps ``max_requests_per_batch``, ``max_bytes_per_batch``.

        ``None`` stands for OpenAI's limit.

        They are checked here, under the operator's names, so that a bad value is reported as the user
        spelled it.
        """
        if max_requests_per_batch is not None:
            _check_limit("max_requests_per_batch", max_requests_per_batch, MAX_REQUESTS, "requests")
        if max_bytes_per_batch is not None:
            _check_limit("max_bytes_per_batch", max_bytes_per_batch, MAX_FILE_BYTES, "bytes")
        return cls(
            max_requests=MAX_REQUESTS if max_requests_per_batch is None else max_requests_per_batch,
            max_bytes=MAX_FILE_BYTES if max_bytes_per_batch is None else max_bytes_per_batch,
        )

    def starts_new_shard(self, shard: ShardSize, line_bytes: int, line_inputs: int) -> bool:
        """Whether the next line must open a new shard, because adding it would break a limit of ``shard``.

        An empty shard takes any line: one that cannot fit even alone is :meth:`line_problem`'s case.

        :param shard: the current shard's size so far.
        :param line_bytes: the line's bytes as written, its newline included (if it has one).
        :param line_inputs: the line's embedding inputs.
        """
        return shard.requests > 0 and (
            shard.requests >= self.max_requests
            or shard.bytes + line_bytes > self.max_bytes
            or shard.embedding_inputs + line_inputs > self.max_embedding_inputs
        )

    def line_problem(self, line_bytes: int, line_inputs: int) -> tuple[str | None, str] | None:
        """Why a line fits no shard at all, as ``(field, message)``; ``None`` when it fits an empty one.

        A request cannot be split across batches, so such a line is an input error, not a cut.
        """
        if line_bytes > self.max_bytes:
            return None, (
                f"expected a line of at most {self.max_bytes:,} bytes ({self._bytes_limit_name()}),"
                f" got {line_bytes:,} bytes: a request cannot be split across batches"
            )
        if line_inputs > self.max_embedding_inputs:
            return "body.input", (
                f"field 'body.input' must hold at most {self.max_embedding_inputs:,} embedding inputs"
                f" (the limit of one batch), got {line_inputs:,}: a request cannot be split across batches"
            )
        return None

    def _bytes_limit_name(self) -> str:
        if self.max_bytes < MAX_FILE_BYTES:
            return "max_bytes_per_batch"
        return f"OpenAI's limit of {MAX_FILE_BYTES / 2**20:g} MiB per batch file"


@dataclass(frozen=True)
class Shard:
    """One batch of a plan.

    :param index: 1-based, in input order.
    :param path: the shard file, or the source itself when the input fits one batch.
    :param first_line: 1-based input line of the shard's first request (blank lines counted, as an editor
        does).
    :param last_line: input line of its last request.
    :param requests: requests in the shard.
    :param bytes: the file's size: bytes written, or the source's size when it is the source.
    :param embedding_inputs: embedding inputs in the shard (``/v1/embeddings`` only, else 0).
    :param input_tokens: the shard's estimated input tokens, when the pass counted them: what it adds to
        the model's enqueued tokens while it runs.
    """

    index: int
    path: FileLike
    first_line: int
    last_line: int
    requests: int
    bytes: int
    embedding_inputs: int
    input_tokens: int = 0


@dataclass(frozen=True)
class ShardPlan:
    """How an input is submitted: the shards in input order, and what the whole input holds.

    :param split: ``False`` when the input fits one batch: no file was written and the only shard's
        ``path`` is the source, to be uploaded as is (a file object must be rewound first).
    :param requests: requests across the input.
    :param bytes: bytes read from the input, blank lines included.
    :param model: the model of the input's requests (one per input, hence one per shard).
    :param embedding_inputs: embedding inputs across the input.
    :param tokens: token estimates per model, when the pass counted them.
    :param structured: some request may ask for a structured output (its line mentions
        ``"response_format"`` or ``"format"``), so its reply is checked when it is read; a cheap test that
        may say yes in vain (a prompt quoting the word), which only costs reading a round's files.
    """

    endpoint: str
    shards: tuple[Shard, ...]
    split: bool
    requests: int
    bytes: int
    model: str | None
    embedding_inputs: int
    tokens: Mapping[str | None, ModelTokens] = field(default_factory=dict)
    structured: bool = False


STRUCTURED_OUTPUT_KEYS = (b'"response_format"', b'"format"')
"""Keys whose presence in a request line means it may ask for a structured output (Chat's
``response_format``; the Responses API's ``text.format``)."""


class _IdDigests:
    """The ``custom_id`` values seen so far, as 8-byte digests with the line of each, in a flat hash table.

    A job's input can hold millions of ids. As strings in a dict they cost about 130 bytes each; a Python
    set of digests still about 80 (an int object and a slot each), and it cannot name the first line. Two
    ``array`` columns with open addressing cost 16 bytes per slot, 32 to 64 per id at a load of 1/4 to 1/2.

    The digest is Python's ``hash`` of the string, SipHash with a key drawn per process: two different ids
    share a digest with a chance of about 3 in 100 million for a million ids, and a retry draws a new key.
    """

    def __init__(self, slots: int = 1 << 12) -> None:
        self._digests = array("Q", bytes(8 * slots))
        """Digests by slot; 0 marks an empty slot (a digest of 0 is stored as 1)."""
        self._lines = array("Q", bytes(8 * slots))
        self._mask = slots - 1
        self._free = slots // 2
        """Ids that may still be added before the table doubles: at most half the slots are used, which keeps
        the probes short."""

    def first_line_of(self, custom_id: str, line: int) -> int:
        """The line that first used ``custom_id``; ``line`` itself, now recorded, when the id is new."""
        digest = hash(custom_id) & 0xFFFF_FFFF_FFFF_FFFF or 1
        digests, mask = self._digests, self._mask
        slot = digest & mask
        while found := digests[slot]:
            if found == digest:
                return self._lines[slot]
            slot = (slot + 1) & mask
        digests[slot] = digest
        self._lines[slot] = line
        self._free -= 1
        if not self._free:
            self._grow()
        return line

    def _grow(self) -> None:
        old_digests, old_lines = self._digests, self._lines
        slots = 2 * len(old_digests)
        self._digests = digests = array("Q", bytes(8 * slots))
        self._lines = lines = array("Q", bytes(8 * slots))
        self._mask = mask = slots - 1
        self._free = slots // 2 - len(old_digests) // 2
        for digest, line in zip(old_digests, old_lines, strict=True):
            if digest:
                slot = digest & mask
                while digests[slot]:
                    slot = (slot + 1) & mask
                digests[slot], lines[slot] = digest, line


class _ShardFiles:
    """Writes the shard files, holding the first one back until the input proves too large for one batch.

    Shard 1 goes to a local temporary spool, copied into ``directory`` only when a second shard starts (or
    blank lines alone make the source too large): an input that fits one batch leaves nothing behind and is
    uploaded as it is. :meth:`discard` removes every file written, for an input that turns out invalid.
    """

    def __init__(self, directory: Directory) -> None:
        self._directory = directory
        self.written: list[Path | ObjectStoragePath] = []
        # Open across calls, closed by close_shard or discard: no single ``with`` block spans its life.
        self._spool: IO[bytes] | None = tempfile.TemporaryFile(buffering=BLOCK_SIZE)  # noqa: SIM115
        self._out: IO[bytes] = self._spool

    def write(self, raw: bytes, newline: bool) -> None:
        self._out.write(raw)
        if newline:
            self._out.write(b"\n")

    def close_shard(self) -> None:
        """Close the current shard's file, writing out the spooled shard 1 if that is the one."""
        if self._spool is not None:
            spool, self._spool = self._spool, None
            with spool:
                spool.seek(0)
                self._out = self._create()
                shutil.copyfileobj(spool, self._out, BLOCK_SIZE)
        self._out.close()

    def next_shard(self) -> None:
        self.close_shard()
        self._out = self._create()

    def discard(self) -> None:
        """Close and remove whatever was written (the spool goes with its closing)."""
        self._out.close()
        for path in self.written:
            path.unlink(missing_ok=True)

    def _create(self) -> IO[bytes]:
        path = shard_path(self._directory, len(self.written) + 1)
        if not self.written:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.written.append(path)
        if _is_local_path(path):  # before Airflow 3.2 an ObjectStoragePath is a Path too: ask its protocol
            return open(path, "wb", buffering=BLOCK_SIZE)
        return path.open("wb")


def shard_path(directory: Directory, index: int) -> Path | ObjectStoragePath:
    """The file of shard ``index`` (1-based) in ``directory``."""
    name = SHARD_NAME.format(index)
    if _is_local_path(directory):
        return Path(directory) / name
    return cast("ObjectStoragePath", directory) / name


def split_batch_file(
    source: FileLike,
    directory: Directory,
    *,
    endpoint: str,
    limits: ShardLimits | None = None,
    max_errors: int = DEFAULT_MAX_ERRORS,
    tokens: TokenTally | None = None,
) -> ShardPlan:
    """Validate an input of any size and cut it into shards of at most ``limits``, in one streaming pass.

    Every line is checked with :func:`~.requests.validate_batch_file`'s rules, ``custom_id`` values must be
    unique across the whole input and the model the same throughout, and a line too large for any shard is
    an error. Memory stays flat (one read block, the longest line, the write buffers) apart from 32 to 64
    bytes per request for the id digests.

    :param source: a local path, an ``airflow.sdk.ObjectStoragePath`` or a binary file object (read from its
        current position, left open): the input, JSONL, one request per line; blank lines are skipped.
    :param directory: where ``shard-00001.jsonl``... are written (created if needed; same-named files are
        replaced), only when the input needs more than one batch.
    :param endpoint: the batch endpoint; every line's ``url`` must equal it.
    :param limits: what each shard may hold; OpenAI's limits by default.
    :param max_errors: problems reported; later ones are only counted.
    :param tokens: a tally to count every request's tokens into, in the same pass; each shard then gets its
        share of the input tokens (exact, or for a sampled tally the counted lines plus the extrapolation
        shared out by bytes).
    :return: the plan: the source itself as its one shard if it fits one batch, else the shard files.
    :raises OpenAIBatchInvalidInput: naming every bad line (up to ``max_errors``) with its ``custom_id``;
        the shard files written so far are removed first.
    """
    limits = limits or ShardLimits()
    checker = _Checker(
        endpoint, max_errors, batch_limits=False, first_line_of=_IdDigests().first_line_of, tokens=tokens
    )
    files = _ShardFiles(directory)
    shards: list[Shard] = []
    size = ShardSize()
    first = last = 0
    counted = _ShardTokens()
    structured = False
    try:
        with _open(source, "rb") as stream:
            lines = JsonlLines(stream)
            for number, offset, raw in lines:
                inputs_before = checker.embedding_inputs
                checker.check_line(number, raw)
                line_inputs = checker.embedding_inputs - inputs_before
                # A line is followed by its newline unless it is an unterminated last line, the only one
                # whose end is the last byte read.
                newline = offset + len(raw) < lines.bytes_read
                line_bytes = len(raw) + newline
                if problem := limits.line_problem(line_bytes, line_inputs):
                    checker.fail(number, *problem)
                    continue
                if limits.starts_new_shard(size, line_bytes, line_inputs):
                    shards.append(
                        Shard(len(shards) + 1, shard_path(directory, len(shards) + 1), first, last, *size)
                    )
                    size = ShardSize()
                    counted.next_shard()
                    if not checker.errors:
                        files.next_shard()
                if size.requests == 0:
                    first = number
                last = number
                size = ShardSize(
                    size.requests + 1, size.bytes + line_bytes, size.embedding_inputs + line_inputs
                )
                counted.add(checker.line_tokens, len(raw))
                structured = structured or any(key in raw for key in STRUCTURED_OUTPUT_KEYS)
                if not checker.errors:  # an invalid input is only checked from its first error on
                    files.write(raw, newline)
        report = checker.finish(lines.bytes_read)
        if report.errors:
            raise checker.error()
        # Blank lines are not written but would be uploaded with the source: count them to keep it whole.
        split = bool(shards) or report.bytes > limits.max_bytes
        if split:
            files.close_shard()
        else:
            files.discard()
    except BaseException:
        files.discard()
        raise
    if split:
        shards.append(Shard(len(shards) + 1, shard_path(directory, len(shards) + 1), first, last, *size))
    else:
        shards = [Shard(1, source, first, last, size.requests, report.bytes, size.embedding_inputs)]
    if tokens is not None:
        total = sum(model.input for model in report.tokens.values())
        shards = [
            replace(shard, input_tokens=share)
            for shard, share in zip(shards, counted.shares(total), strict=True)
        ]
    return ShardPlan(
        endpoint=endpoint,
        shards=tuple(shards),
        split=split,
        requests=report.requests,
        bytes=report.bytes,
        model=report.model,
        embedding_inputs=report.embedding_inputs,
        tokens=report.tokens,
        structured=structured,
    )


class _ShardTokens:
    """Input tokens per shard, as the pass counts them: the counted lines' exact tokens, and the bytes of
    the lines a sampled tally left out, whose tokens are extrapolated at the end."""

    def __init__(self) -> None:
        self.tokens = [0]
        self.skipped_bytes = [0]

    def next_shard(self) -> None:
        self.tokens.append(0)
        self.skipped_bytes.append(0)

    def add(self, tokens: RequestTokens | None, line_bytes: int) -> None:
        if tokens is not None:
            self.tokens[-1] += tokens.input
        else:
            self.skipped_bytes[-1] += line_bytes

    def shares(self, total: int) -> list[int]:
        """Each shard's tokens: its counted ones, plus the extrapolated rest of ``total`` by skipped bytes."""
        rest = max(0, total - sum(self.tokens))
        skipped = sum(self.skipped_bytes)
        return [
            counted + (rest * skipped_bytes // skipped if skipped else 0)
            for counted, skipped_bytes in zip(self.tokens, self.skipped_bytes, strict=True)
        ]
