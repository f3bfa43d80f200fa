"""Batch input files: the writer and the validator, against files on disk and in Airflow object storage.

Every error kind is checked by its exact message, since the message (line, field, expectation) is the
feature. Files at the limits are real files: 50,001 short lines, and about 200 MiB written in 1 MiB lines,
which is the quickest way to cross the size limit without patching it.
"""

from __future__ import annotations

import io
import json
import pickle
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_batch.limits import ENDPOINTS, MAX_FILE_BYTES, MAX_REQUESTS
from airflow_provider_batch.requests import (
    LineError,
    OpenAIBatchInvalidInput,
    require_valid_batch_file,
    validate_batch_file,
    write_batch_file,
)

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MODEL = "gpt-4o-mini"
MIB = 1024 * 1024


def request(custom_id: str = "request-1", *, url: str = CHAT, **body: Any) -> dict[str, Any]:
    """A valid request line as a dict; ``body`` fields are added to the model."""
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": {"model": MODEL, **body}}


def jsonl(*lines: dict[str, Any] | bytes) -> bytes:
    """Dicts are dumped as ``json.dumps`` would (ASCII), bytes are kept as they are."""
    return b"".join(
        (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines
    )


def messages(path: Path | ObjectStoragePath, endpoint: str = CHAT, **kwargs: Any) -> list[str]:
    return [str(error) for error in validate_batch_file(path, endpoint=endpoint, **kwargs).errors]


@pytest.fixture
def memory_root() -> Iterator[ObjectStoragePath]:
    """A fresh directory on fsspec's in-memory store (attached as ``memory://`` by ``tests/conftest.py``).

    The memory store is process-wide, hence a unique directory per test, removed afterwards.
    """
    root = ObjectStoragePath(f"memory://test-requests-{uuid.uuid4().hex}")
    yield root
    if root.exists():
        root.fs.rm(root.path, recursive=True)


# Validation: one case per error kind, with a valid line 1 so that line numbers are real ------------------

BAD_UTF8_IN_SKIPPED_FIELD = (
    b'{"custom_id": "request-2", "method": "POST", "url": "/v1/chat/completions",'
    b' "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "caf\xe9"}]}}'
)


@pytest.mark.parametrize(
    ("line_2", "expected"),
    [
        pytest.param(
            b'{"custom_id": "request-2", "method": "POST",',
            "line 2: expected a JSON object, got invalid JSON: Input data was truncated",
            id="truncated-json",
        ),
        pytest.param(
            b'{"custom_id": "request-2",, "method": "POST"}',
            "line 2: expected a JSON object, got invalid JSON:"
            " JSON is malformed: object keys must be strings (byte 26)",
            id="malformed-json",
        ),
        pytest.param(
            b'["request-2", "POST"]', "line 2: expected a JSON object, got an array", id="not-an-object"
        ),
        pytest.param(
            BAD_UTF8_IN_SKIPPED_FIELD,
            "line 2: expected UTF-8 text, got byte 0xe9 at offset"
            f" {BAD_UTF8_IN_SKIPPED_FIELD.index(0xE9)} of the line, which is not valid UTF-8",
            id="utf8-in-a-skipped-field",
        ),
        pytest.param(
            b'{"custom_id": "r\xff", "method": "POST", "url": "/v1/chat/completions",'
            b' "body": {"model": "gpt-4o-mini"}}',
            "line 2: expected UTF-8 text, got byte 0xff at offset 16 of the line, which is not valid UTF-8",
            id="utf8-in-custom-id",
        ),
        pytest.param(
            jsonl(request("request-2"))[:-1] + b" \xe2\x82",
            "line 2: expected UTF-8 text, got byte 0xe2 at offset"
            f" {len(jsonl(request('request-2')))} of the line, which is not valid UTF-8",
            id="utf8-truncated-sequence",
        ),
        pytest.param(
            {"method": "POST", "url": CHAT, "body": {"model": MODEL}},
            "line 2: field 'custom_id' is missing; it must be a non-empty string",
            id="custom-id-missing",
        ),
        pytest.param(
            {**request(), "custom_id": 2},
            "line 2: field 'custom_id' must be a non-empty string, got an integer",
            id="custom-id-type",
        ),
        pytest.param(
            request(""), "line 2: field 'custom_id' must be a non-empty string, got ''", id="custom-id-empty"
        ),
        pytest.param(
            request("request-1"),
            "line 2 (custom_id 'request-1'):"
            " field 'custom_id' must be unique, got 'request-1' already used on line 1",
            id="custom-id-duplicate",
        ),
        pytest.param(
            {"custom_id": "request-2", "url": CHAT, "body": {"model": MODEL}},
            "line 2 (custom_id 'request-2'): field 'method' is missing; it must be 'POST'",
            id="method-missing",
        ),
        pytest.param(
            {**request("request-2"), "method": "GET"},
            "line 2 (custom_id 'request-2'): field 'method' must be 'POST', got 'GET'",
            id="method-value",
        ),
        pytest.param(
            {"custom_id": "request-2", "method": "POST", "body": {"model": MODEL}},
            "line 2 (custom_id 'request-2'):"
            " field 'url' is missing; it must equal the batch endpoint '/v1/chat/completions'",
            id="url-missing",
        ),
        pytest.param(
            request("request-2", url="/v1/embeddings"),
            "line 2 (custom_id 'request-2'):"
            " field 'url' must equal the batch endpoint '/v1/chat/completions', got '/v1/embeddings'",
            id="url-mismatch",
        ),
        pytest.param(
            {"custom_id": "request-2", "method": "POST", "url": CHAT},
            "line 2 (custom_id 'request-2'): field 'body' is missing; it must be a JSON object",
            id="body-missing",
        ),
        pytest.param(
            {**request("request-2"), "body": ["hello"]},
            "line 2 (custom_id 'request-2'): field 'body' must be a JSON object, got an array",
            id="body-type",
        ),
        pytest.param(
            {**request("request-2"), "body": None},
            "line 2 (custom_id 'request-2'): field 'body' must be a JSON object, got null",
            id="body-null",
        ),
        pytest.param(
            request("request-2", model=4),
            "line 2 (custom_id 'request-2'): field 'body.model' must be a string, got an integer",
            id="model-type",
        ),
        pytest.param(
            request("request-2", model="gpt-4o"),
            "line 2 (custom_id 'request-2'): field 'body.model' must be 'gpt-4o-mini' as on line 1"
            " (one model per batch),"
            " got 'gpt-4o'",
            id="model-mismatch",
        ),
        pytest.param(
            request("request-2", stream=True),
            "line 2 (custom_id 'request-2'):"
            " field 'body.stream' must not be true (batch requests cannot stream)",
            id="stream",
        ),
    ],
)
def test_validation_error_messages(tmp_path: Path, line_2: dict[str, Any] | bytes, expected: str) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl(request("request-1"), line_2, request("request-3")))

    report = validate_batch_file(path, endpoint=CHAT)

    assert [str(error) for error in report.errors] == [expected]
    assert report.requests == 3
    assert not report.valid


def test_url_error_names_line_field_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    lines = [request(f"request-{n}", url=EMBEDDINGS, input="hi") for n in range(1, 17)]
    path.write_bytes(jsonl(*lines, request("request-17", url=CHAT, input="hi")))

    (error,) = validate_batch_file(path, endpoint=EMBEDDINGS).errors

    assert error == LineError(
        17,
        "url",
        "field 'url' must equal the batch endpoint '/v1/embeddings', got '/v1/chat/completions'",
        "request-17",
    )
    assert str(error) == (
        "line 17 (custom_id 'request-17'): field 'url' must equal the batch endpoint '/v1/embeddings',"
        " got '/v1/chat/completions'"
    )


def test_one_line_reports_each_of_its_problems_in_field_order(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    bad = {"custom_id": "request-1", "method": "PUT", "url": "/v1/x", "body": {"model": "o3", "stream": True}}
    path.write_bytes(jsonl(request("request-1"), bad))

    assert [(error.line, error.field) for error in validate_batch_file(path, endpoint=CHAT).errors] == [
        (2, "custom_id"),
        (2, "method"),
        (2, "url"),
        (2, "body.model"),
        (2, "body.stream"),
    ]


def test_long_values_are_cut_in_messages(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl({**request(), "method": "P" * 500}))

    assert messages(path) == [
        f"line 1 (custom_id 'request-1'): field 'method' must be 'POST', got '{'P' * 100}'..."
    ]


def test_valid_file_report(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    data = jsonl(
        request("a", max_tokens=5), b"", request("b", messages=[{"role": "user", "content": "café"}])
    )
    last = json.dumps(request("c", prompt="naïve"), ensure_ascii=False).encode()
    path.write_bytes(data + last)  # no final newline

    report = require_valid_batch_file(path, endpoint=CHAT)

    assert report.valid
    assert (report.requests, report.model, report.embedding_inputs) == (3, MODEL, 0)
    assert report.bytes == len(data) + len(last) == path.stat().st_size


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(
        b"\n   \n" + jsonl(request("a")) + b"\r\n\t\n" + jsonl(request("a")).replace(b"\n", b"\r\n")
    )

    report = validate_batch_file(path, endpoint=CHAT)

    assert report.requests == 2
    assert [str(error) for error in report.errors] == [
        "line 6 (custom_id 'a'): field 'custom_id' must be unique, got 'a' already used on line 3"
    ]


def test_a_line_the_typed_decoder_refuses_can_still_be_valid(tmp_path: Path) -> None:
    """A typed-decode failure is no verdict: ``stream: "no"`` is not the boolean the fast path expects."""
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl(request("a", stream="no"), request("b", stream=False), request("c")))

    report = validate_batch_file(path, endpoint=CHAT)

    assert report.valid
    assert report.model == MODEL


@pytest.mark.parametrize("content", [b"", b"\n\n \r\n"], ids=["empty", "blank-lines-only"])
def test_file_without_requests(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(content)

    report = validate_batch_file(path, endpoint=CHAT)

    assert report.errors == (LineError(None, None, "expected at least one request, got none"),)
    assert str(report.errors[0]) == "file: expected at least one request, got none"


def test_error_cap(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl(*(request(f"r{n}", url="/v1/x") for n in range(1, 26))))

    report = validate_batch_file(path, endpoint=CHAT)
    assert [error.line for error in report.errors] == list(range(1, 21))
    assert report.unreported_errors == 5

    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        require_valid_batch_file(path, endpoint=CHAT, max_errors=2)
    assert str(raised.value) == (
        "invalid batch input, 25 errors:\n"
        "  line 1 (custom_id 'r1'): field 'url' must equal the batch endpoint '/v1/chat/completions',"
        " got '/v1/x'\n"
        "  line 2 (custom_id 'r2'): field 'url' must equal the batch endpoint '/v1/chat/completions',"
        " got '/v1/x'\n"
        "  and 23 more errors not reported"
    )
    assert [error.line for error in raised.value.errors] == [1, 2]
    assert raised.value.unreported == 23


def test_invalid_input_error_survives_pickling() -> None:
    error = OpenAIBatchInvalidInput([LineError(3, "url", "field 'url' must ...")], unreported=1)

    copy = pickle.loads(pickle.dumps(error))

    assert (copy.errors, copy.unreported, str(copy)) == (error.errors, 1, str(error))
    assert isinstance(copy, ValueError)


def test_arguments_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl(request()))
    with pytest.raises(
        ValueError,
        match=r"endpoint '/v1/chat' is not a batch endpoint; use one of /v1/responses, .*\. Did you mean"
        r" '/v1/chat/completions'\?",
    ):
        validate_batch_file(path, endpoint="/v1/chat")
    with pytest.raises(ValueError, match="max_errors must be at least 1; got 0"):
        validate_batch_file(path, endpoint=CHAT, max_errors=0)


# Validation: limits ---------------------------------------------------------------------------------------


def tiny_lines(count: int) -> bytes:
    return b"".join(
        b'{"custom_id":"%d","method":"POST","url":"/v1/embeddings","body":{"model":"m"}}\n' % n
        for n in range(count)
    )


@pytest.mark.parametrize(("count", "expected"), [(MAX_REQUESTS, []), (MAX_REQUESTS + 1, ["line 50002"])])
def test_request_limit(tmp_path: Path, count: int, expected: list[str]) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"\n" + tiny_lines(count))  # the blank first line shifts line numbers by one

    report = validate_batch_file(path, endpoint=EMBEDDINGS)

    assert report.requests == count
    assert [str(error) for error in report.errors] == [
        f"{line}: expected at most 50,000 requests per batch, got request 50,001 on this line"
        for line in expected
    ]


def test_embedding_inputs_are_counted_per_input(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    shapes = ["one string", [1, 2, 3], ["a", "b"], [[1, 2], [3], [4]], None, []]
    lines = [request(f"r{n}", url=EMBEDDINGS, input=shape) for n, shape in enumerate(shapes)]
    path.write_bytes(jsonl(*lines, request("no-input", url=EMBEDDINGS)))

    report = validate_batch_file(path, endpoint=EMBEDDINGS)

    assert report.valid
    assert report.embedding_inputs == 1 + 1 + 2 + 3 + 0 + 1


@pytest.mark.parametrize(("second", "expected"), [(19_999, []), (20_001, ["line 2 (custom_id 'b')"])])
def test_embedding_input_limit(tmp_path: Path, second: int, expected: list[str]) -> None:
    path = tmp_path / "input.jsonl"
    lines = [
        request("a", url=EMBEDDINGS, input=["x"] * 30_000),
        request("b", url=EMBEDDINGS, input=["x"] * second),
    ]
    path.write_bytes(jsonl(*lines, request("c", url=EMBEDDINGS, input="x")))

    report = validate_batch_file(path, endpoint=EMBEDDINGS)

    assert report.embedding_inputs == 30_000 + second + 1
    assert [str(error) for error in report.errors] == [
        f"{line}: field 'body.input' must keep the batch within 50,000 embedding inputs,"
        " got 50,001 by this line"
        for line in expected
    ]


def test_embedding_inputs_are_not_counted_for_other_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl(request(input=["x"] * 60_000, url="/v1/moderations")))

    report = validate_batch_file(path, endpoint="/v1/moderations")

    assert report.valid
    assert report.embedding_inputs == 0


@pytest.fixture
def big_file(tmp_path: Path) -> Iterator[Path]:
    """A path for a file of about 200 MiB, deleted after the test: pytest keeps recent tmp dirs."""
    path = tmp_path / "big.jsonl"
    yield path
    path.unlink(missing_ok=True)


def mib_line(number: int, size: int = MIB) -> bytes:
    """A valid request line of exactly ``size`` bytes, newline included."""
    head = (
        b'{"custom_id":"r%05d","method":"POST","url":"/v1/chat/completions","body":{"model":"m","pad":"'
        % number
    )
    return head + b"x" * (size - len(head) - 4) + b'"}}\n'


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        pytest.param(b"", [], id="exactly-200-MiB"),
        pytest.param(b"\n", ["line 201"], id="one-byte-over"),
        pytest.param(b"!unterminated", ["line 200"], id="over-in-an-unterminated-last-line"),
    ],
)
def test_size_limit(big_file: Path, tail: bytes, expected: list[str]) -> None:
    lines = MAX_FILE_BYTES // MIB
    with big_file.open("wb") as out:
        for number in range(1, lines):
            out.write(mib_line(number))
        if tail == b"!unterminated":
            out.write(mib_line(lines)[:-1] + b"  ")  # one byte over, with no newline at the end
        else:
            out.write(mib_line(lines) + tail)

    report = validate_batch_file(big_file, endpoint=CHAT)

    assert [str(error) for error in report.errors] == [
        f"{line}: expected at most 209,715,200 bytes (200 MiB) per batch file,"
        " got more by the end of this line"
        for line in expected
    ]
    assert report.bytes == big_file.stat().st_size


def test_exactly_200_mib_without_final_newline_is_valid(big_file: Path) -> None:
    lines = MAX_FILE_BYTES // MIB
    with big_file.open("wb") as out:
        for number in range(1, lines):
            out.write(mib_line(number))
        out.write(mib_line(lines, MIB + 1)[:-1])  # the last line takes the newline's byte

    assert big_file.stat().st_size == MAX_FILE_BYTES
    assert validate_batch_file(big_file, endpoint=CHAT).valid


# Validation: sources --------------------------------------------------------------------------------------


def test_validates_object_storage_paths(tmp_path: Path, memory_root: ObjectStoragePath) -> None:
    data = jsonl(request("a"), request("a"))
    expected = ["line 2 (custom_id 'a'): field 'custom_id' must be unique, got 'a' already used on line 1"]
    local = tmp_path / "input.jsonl"
    local.write_bytes(data)
    in_memory = memory_root / "input.jsonl"
    in_memory.write_bytes(data)

    for source in (ObjectStoragePath(f"file://{local}"), in_memory, str(local), io.BytesIO(data)):
        report = validate_batch_file(source, endpoint=CHAT)
        assert [str(error) for error in report.errors] == expected, source
        assert report.bytes == len(data)


def test_lines_longer_than_a_read_chunk(memory_root: ObjectStoragePath) -> None:
    path = memory_root / "input.jsonl"
    path.write_bytes(mib_line(1, 3 * MIB + 17) + b'{"custom_id": "r2"\n' + mib_line(1, 2 * MIB))

    assert messages(path) == [
        "line 2: expected a JSON object, got invalid JSON: Input data was truncated",
        "line 3 (custom_id 'r00001'): field 'custom_id' must be unique, got 'r00001' already used on line 1",
    ]


# Writing --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_writes_every_endpoint(tmp_path: Path, endpoint: str) -> None:
    path = tmp_path / "input.jsonl"
    records = ({"custom_id": f"r{n}", "body": {"model": "m", "input": "hi"}} for n in range(3))

    summary = write_batch_file(records, path, endpoint=endpoint)

    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert lines == [
        {"custom_id": f"r{n}", "method": "POST", "url": endpoint, "body": {"model": "m", "input": "hi"}}
        for n in range(3)
    ]
    assert [list(line) for line in lines] == [["custom_id", "method", "url", "body"]] * 3
    assert summary.destination == str(path)
    assert (summary.endpoint, summary.requests, summary.bytes, summary.model) == (
        endpoint,
        3,
        path.stat().st_size,
        "m",
    )
    assert require_valid_batch_file(path, endpoint=endpoint).bytes == summary.bytes


def test_accepts_matching_method_and_url(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"

    write_batch_file([request("a"), {**request("b"), "method": "POST"}], path, endpoint=CHAT)

    assert (
        path.read_bytes()
        == msgspec.json.encode(request("a")) + b"\n" + msgspec.json.encode(request("b")) + b"\n"
    )


def test_generator_is_streamed_not_materialised(tmp_path: Path) -> None:
    """50,000 records of 1 KB would take 50 MB as encoded lines; writing them must stay far below."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 1000}]}
    records = ({"custom_id": f"request-{n}", "body": body} for n in range(MAX_REQUESTS))

    tracemalloc.start()
    try:
        summary = write_batch_file(records, tmp_path / "input.jsonl", endpoint=CHAT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert summary.requests == MAX_REQUESTS
    assert summary.bytes > 50_000_000
    assert peak < 16_000_000


def test_writes_to_object_storage_and_file_objects(tmp_path: Path, memory_root: ObjectStoragePath) -> None:
    records = [request("a"), request("b")]
    expected = jsonl(*(msgspec.json.encode(record) for record in records))
    file_uri = ObjectStoragePath(f"file://{tmp_path}/input.jsonl")
    in_memory = memory_root / "input.jsonl"
    stream = io.BytesIO(b"kept:")
    stream.seek(5)

    for destination in (file_uri, in_memory):
        summary = write_batch_file(iter(records), destination, endpoint=CHAT)
        assert destination.read_bytes() == expected
        assert summary.destination == str(destination)
    summary = write_batch_file(records, stream, endpoint=CHAT)

    assert (tmp_path / "input.jsonl").read_bytes() == expected
    assert stream.getvalue() == b"kept:" + expected
    assert not stream.closed
    assert summary.destination is None


@pytest.mark.parametrize("kind", ["path", "file-uri", "memory-uri"])
def test_bad_record_leaves_no_destination(tmp_path: Path, memory_root: ObjectStoragePath, kind: str) -> None:
    destination = {
        "path": tmp_path / "input.jsonl",
        "file-uri": ObjectStoragePath(f"file://{tmp_path}/input.jsonl"),
        "memory-uri": memory_root / "input.jsonl",
    }[kind]
    consumed: list[int] = []

    def records() -> Iterator[dict[str, Any]]:
        for n in range(1, 1000):
            consumed.append(n)
            yield request("dup" if n in (2, 5, 9) else f"r{n}", url=CHAT if n != 7 else EMBEDDINGS)

    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        write_batch_file(records(), destination, endpoint=CHAT)

    # Every bad record is reported, not only the first: one run shows all there is to fix.
    assert str(raised.value) == (
        "invalid batch input, 3 errors:\n"
        "  line 5 (custom_id 'dup'): field 'custom_id' must be unique, got 'dup' already used on line 2\n"
        "  line 7 (custom_id 'r7'): field 'url' must equal the batch endpoint '/v1/chat/completions',"
        " got '/v1/embeddings'\n"
        "  line 9 (custom_id 'dup'): field 'custom_id' must be unique, got 'dup' already used on line 2"
    )
    assert consumed == list(range(1, 1000))
    assert not destination.exists()


def test_bad_record_leaves_an_existing_destination_untouched(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(b"previous content\n")
    stream = io.BytesIO()

    for destination in (path, stream):
        with pytest.raises(OpenAIBatchInvalidInput):
            write_batch_file([request("a"), request("b", stream=True)], destination, endpoint=CHAT)

    assert path.read_bytes() == b"previous content\n"
    assert stream.getvalue() == b""


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(
            request("a", url=CHAT),
            "line 1 (custom_id 'a'):"
            " field 'url' must equal the batch endpoint '/v1/embeddings', got '/v1/chat/completions'",
            id="url-mismatch",
        ),
        pytest.param(
            {**request("a", url=EMBEDDINGS), "method": "GET"},
            "line 1 (custom_id 'a'): field 'method' must be 'POST', got 'GET'",
            id="method-mismatch",
        ),
        pytest.param(
            {"body": {"model": MODEL, "input": "x"}},
            "line 1: field 'custom_id' is missing; it must be a non-empty string",
            id="custom-id-missing",
        ),
        pytest.param(
            {"custom_id": "a"},
            "line 1 (custom_id 'a'): field 'body' is missing; it must be a JSON object",
            id="body-missing",
        ),
        pytest.param(
            {"custom_id": "a", "body": {"model": MODEL}, "metadata": {}},
            "line 1 (custom_id 'a'):"
            " field 'metadata' must not be set: a request has only custom_id, method, url, body",
            id="unknown-field",
        ),
        pytest.param(("a", {}), "line 1: expected a JSON object, got a tuple", id="not-a-mapping"),
        pytest.param(
            {"custom_id": "a", "body": {"model": MODEL, "input": object()}},
            "line 1 (custom_id 'a'): field 'body' must be JSON-serialisable, got an error:"
            " Encoding objects of type object is unsupported",
            id="not-serialisable",
        ),
    ],
)
def test_bad_record_messages(tmp_path: Path, record: object, expected: str) -> None:
    path = tmp_path / "input.jsonl"

    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        write_batch_file([record], path, endpoint=EMBEDDINGS)

    assert [str(error) for error in raised.value.errors] == [expected]
    assert not path.exists()


def test_writer_limits(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    tiny = ({"custom_id": str(n), "body": {"model": MODEL}} for n in range(MAX_REQUESTS + 1))
    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        write_batch_file(tiny, path, endpoint=CHAT)
    assert str(raised.value.errors[0]) == (
        "line 50001: expected at most 50,000 requests per batch, got request 50,001 on this line"
    )

    pad = "x" * MIB
    line_bytes = len(msgspec.json.encode(request("r00000", url=EMBEDDINGS, pad=pad))) + 1
    big = (request(f"r{n:05d}", url=EMBEDDINGS, pad=pad) for n in range(1, 1000))
    with pytest.raises(OpenAIBatchInvalidInput) as raised:
        write_batch_file(big, path, endpoint=EMBEDDINGS)
    assert str(raised.value.errors[0]) == (
        f"line {MAX_FILE_BYTES // line_bytes + 1} (custom_id 'r{MAX_FILE_BYTES // line_bytes + 1:05d}'):"
        " expected at most 209,715,200 bytes (200 MiB) per batch file, got more by the end of this line"
    )

    with pytest.raises(OpenAIBatchInvalidInput, match="file: expected at least one request, got none"):
        write_batch_file([], path, endpoint=CHAT)
    with pytest.raises(ValueError, match="Did you mean '/v1/chat/completions'"):
        write_batch_file([request()], path, endpoint="v1/chat/completions")
    assert not path.exists()


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        (CHAT, ["line 1 (custom_id 'a'): field 'body.model' is missing; /v1/chat/completions needs a model"]),
        (EMBEDDINGS, ["line 1 (custom_id 'a'): field 'body.model' is missing; /v1/embeddings needs a model"]),
        ("/v1/moderations", []),
    ],
)
def test_a_request_without_a_model(tmp_path: Path, endpoint: str, expected: list[str]) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(jsonl({"custom_id": "a", "method": "POST", "url": endpoint, "body": {"input": "x"}}))
    assert messages(path, endpoint=endpoint) == expected
