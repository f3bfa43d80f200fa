"""Garbage in, a 4xx in OpenAI's error shape out: never a 500, never a dropped connection.

Raw httpx throughout, because the SDK cannot send most of this. The suite's conftest also fails a
test if the server logged a traceback meanwhile, so a crash hidden behind a 4xx is caught too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from tests.emulator.helpers import (
    CHAT,
    assert_error,
    chat_lines,
    jsonl,
    run_batch,
    sdk,
    upload,
)
from tests.emulator.schemas import assert_error_envelope, assert_schema

UNPARSEABLE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP"
    " library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)
NOT_AN_OBJECT = "The request body must be a JSON object."


@pytest.fixture
def http(emulator: EmulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.root_url, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", UNPARSEABLE),
        (b"", UNPARSEABLE),
        (b"{", UNPARSEABLE),
        (b'{"input_file_id": "file-\xff\xfe"}', UNPARSEABLE),  # invalid UTF-8 inside a string
        (b"\xff\xfe\x00{}", UNPARSEABLE),
        (b"[" * 100_000, UNPARSEABLE),  # nesting far too deep
        (b"null", NOT_AN_OBJECT),
        (b"[1, 2]", NOT_AN_OBJECT),
        (b'"a string"', NOT_AN_OBJECT),
        (b"12", NOT_AN_OBJECT),
    ],
    ids=lambda value: repr(value[:20]) if isinstance(value, bytes) else None,
)
def test_create_batch_with_a_garbage_body(http: httpx.Client, body: bytes, message: str) -> None:
    response = http.post("/v1/batches", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, message=message)


def test_oversized_json_body(http: httpx.Client) -> None:
    body = json.dumps({"input_file_id": "file-x", "metadata": {str(i): "x" * 100 for i in range(20_000)}})
    assert_error(
        http.post("/v1/batches", content=body), 413, message="The request body is larger than 1048576 bytes."
    )


def test_huge_metadata_under_the_body_limit(http: httpx.Client) -> None:
    body = {"input_file_id": "file-x", "endpoint": CHAT, "completion_window": "24h"}
    many = {**body, "metadata": {f"k{i}": "v" for i in range(10_000)}}
    assert_error(
        http.post("/v1/batches", json=many), 400, param="metadata", code="object_above_max_properties"
    )
    long = {**body, "metadata": {"k": "v" * 500_000}}
    assert_error(http.post("/v1/batches", json=long), 400, param="metadata.k", code="string_above_max_length")
    nested = {**body, "metadata": {"k": {"deep": ["v"] * 1000}}}
    assert_error(http.post("/v1/batches", json=nested), 400, param="metadata.k", code="invalid_type")


UNKNOWN_IDS = [
    "file-doesnotexist",
    "batch_doesnotexist",
    "x" * 3000,
    "%ff",
    "%00",
    "'; DROP TABLE batches; --",
]
ID_ROUTES = [
    ("GET", "/v1/files/{id}", "file"),
    ("DELETE", "/v1/files/{id}", "file"),
    ("GET", "/v1/files/{id}/content", "file"),
    ("GET", "/v1/batches/{id}", "batch"),
    ("POST", "/v1/batches/{id}/cancel", "batch"),
    ("POST", "/_emulator/batches/{id}/expire", "batch"),
]


@pytest.mark.parametrize(("method", "route", "kind"), ID_ROUTES)
def test_unknown_ids_on_every_id_route(http: httpx.Client, method: str, route: str, kind: str) -> None:
    for unknown in UNKNOWN_IDS:
        response = http.request(method, route.format(id=unknown))
        error = assert_error(response, 404, param=f"{kind}_id")
        assert error["message"].startswith(f"No such {kind}: ")


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/batches?limit=abc", "limit"),
        ("/v1/batches?limit=0", "limit"),
        ("/v1/batches?limit=-5", "limit"),
        ("/v1/batches?limit=1e3", "limit"),
        ("/v1/batches?limit=99999999999999999999999999", "limit"),
        ("/v1/batches?limit=%ff", "limit"),
        ("/v1/files?limit=abc", "limit"),
        ("/v1/files?limit=0", "limit"),
        ("/v1/files?order=sideways", "order"),
        ("/v1/files?order=", "order"),
        ("/v1/files?order=%00", "order"),
    ],
)
def test_bad_query_parameters(http: httpx.Client, path: str, param: str) -> None:
    assert_error(http.get(path), 400, param=param)


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("/v1/batches?after=nonexistent", "ListBatchesResponse"),
        ("/v1/batches?after=%ff&unknown=1", "ListBatchesResponse"),
        ("/v1/files?after=%00&purpose=%ff", "ListFilesResponse"),
        ("/v1/files?purpose=no-such-purpose", "ListFilesResponse"),
    ],
)
def test_odd_but_harmless_query_parameters(http: httpx.Client, path: str, schema: str) -> None:
    response = http.get(path)
    assert response.status_code == 200
    assert_schema(schema, response.json())


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/batches"),
        ("DELETE", "/v1/batches"),
        ("PATCH", "/v1/files"),
        ("PUT", "/v1/files/file-x"),
        ("POST", "/v1/files/file-x"),
        ("POST", "/v1/files/file-x/content"),
        ("DELETE", "/v1/batches/batch_x"),
        ("GET", "/v1/batches/batch_x/cancel"),
        ("GET", "/v1/chat/completions"),
        ("PUT", "/v1/embeddings"),
        ("POST", "/_emulator/stats"),
        ("GET", "/_emulator/batches/batch_x/expire"),
    ],
)
def test_wrong_methods(http: httpx.Client, method: str, path: str) -> None:
    assert_error(http.request(method, path), 405, message=f"Method {method} is not allowed for {path}.")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v1",
        "/v1/",
        "/v1/nope",
        "/v2/batches",
        "/v1/batches/batch_x/results",
        "/v1/files/a/b/c",
        "/_emulator/x",
    ],
)
def test_unknown_paths(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404, message=f"Invalid URL (GET {path})")


MULTIPART = "multipart/form-data; boundary=xyz"


NOT_MULTIPART = "The request must be multipart/form-data with 'file' and 'purpose' fields."
NO_FILE = {
    "message": "Missing required parameter: 'file'.",
    "param": "file",
    "code": "missing_required_parameter",
}


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"garbage", MULTIPART, {}),
        (b"--xyz\r\nnot a header\r\n\r\nbody\r\n--xyz--\r\n", MULTIPART, {}),
        (b"--xyz\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--xyz--\r\n", MULTIPART, {}),
        (b"garbage", "multipart/form-data", {"message": "Missing boundary in multipart."}),
        (b"", MULTIPART, NO_FILE),
        (b"", None, {"message": NOT_MULTIPART}),
        (b'{"purpose": "batch"}', "application/json", {"message": NOT_MULTIPART}),
        (b"purpose=batch", "application/x-www-form-urlencoded", {"message": NOT_MULTIPART}),
    ],
)
def test_multipart_garbage(
    http: httpx.Client, body: bytes, content_type: str | None, expected: dict[str, str]
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert_error(http.post("/v1/files", content=body, headers=headers), 400, **expected)


def test_multipart_with_too_many_parts(http: httpx.Client) -> None:
    two_files = [("file", ("a.jsonl", b"{}")), ("file", ("b.jsonl", b"{}"))]
    assert_error(http.post("/v1/files", files=two_files, data={"purpose": "batch"}), 400)
    many_fields = {f"field{i}": "x" for i in range(20)} | {"purpose": "batch"}
    assert_error(http.post("/v1/files", files={"file": ("a.jsonl", b"{}")}, data=many_fields), 400)


def test_invalid_utf8_in_multipart_fields(http: httpx.Client) -> None:
    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n\xff\xfe\r\n'
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a\xff.jsonl"\r\n\r\n{}\r\n'
        b"--xyz--\r\n"
    )
    assert_error(
        http.post("/v1/files", content=body, headers={"content-type": MULTIPART}), 400, param="purpose"
    )


def test_binary_upload_is_accepted_then_fails_validation(emulator: EmulatorProcess) -> None:
    """OpenAI takes any bytes named .jsonl at upload; validation reports the lines later."""
    client = sdk(emulator)
    content = bytes(range(256)) * 4  # four newlines in there: five lines of binary junk
    assert upload(client, content, filename="binary.jsonl").bytes == 1024
    batch = run_batch(client, [content.removesuffix(b"\n")])
    assert batch.status == "failed"
    assert batch.errors is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [("invalid_json_line", n) for n in range(1, 6)]


def test_many_errors_are_capped(emulator: EmulatorProcess) -> None:
    batch = run_batch(sdk(emulator), ["garbage"] * 150)
    assert batch.errors is not None
    assert [e.line for e in batch.errors.data] == list(range(1, 101))  # the first 100 only


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "m"}, "messages"),
        ("/v1/chat/completions", {"model": 5, "messages": []}, "model"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
        ("/v1/chat/completions", {"model": "m", "messages": "hello"}, "messages"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/responses", {"model": "m", "input": 5}, "input"),
        ("/v1/responses", {"model": "m", "input": "x", "instructions": ["be brief"]}, "instructions"),
        ("/v1/embeddings", {"model": "m", "input": {"a": 1}}, "input"),
        ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": 99_999}, "dimensions"),
        ("/v1/embeddings", {"model": "m", "input": "x", "dimensions": True}, "dimensions"),
        ("/v1/moderations", {"input": None}, "input"),
    ],
)
def test_bad_bodies_on_the_synchronous_endpoints(
    http: httpx.Client, path: str, body: dict[str, Any], param: str
) -> None:
    assert_error(http.post(path, json=body), 400, param=param)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": 5}], "n": 10**30, "max_tokens": "5"},
        {"model": "m", "messages": [{"content": [{"text": {}}, "part", None]}], "response_format": "text"},
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "text": "plain",
            "max_completion_tokens": -1,
        },
    ],
)
def test_odd_but_harmless_bodies_are_answered(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["object"] == "chat.completion"


POST_ROUTES = [
    "/v1/batches",
    "/v1/files",
    "/v1/batches/batch_x/cancel",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/embeddings",
    "/v1/moderations",
    "/_emulator/batches/batch_x/expire",
]
CONTENT_TYPES = [
    "application/json",
    "multipart/form-data; boundary=b",
    "text/plain",
    "application/octet-stream",
    "",
]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_random_bytes(http: httpx.Client, path: str) -> None:
    dice = random.Random(path)  # seeded: the same bytes on every run
    for _ in range(25):
        body = dice.randbytes(dice.choice([0, 1, 7, 100, 5000]))
        if dice.random() < 0.3:  # sometimes almost JSON
            body = b'{"' + body + b'": 1}'
        headers = {"content-type": dice.choice(CONTENT_TYPES)}
        response = http.post(path, content=body, headers=headers)
        assert 400 <= response.status_code < 500, (path, body[:50], response.status_code, response.text)
        assert response.headers["x-request-id"].startswith("req_")
        assert_error_envelope(response.json())


def test_random_settings_patches(http: httpx.Client) -> None:
    dice = random.Random(0)
    before = http.get("/_emulator/settings").json()
    for _ in range(25):
        response = http.patch("/_emulator/settings", content=dice.randbytes(dice.choice([0, 5, 200])))
        assert_error(response, 400)
    assert http.get("/_emulator/settings").json() == before


def test_still_serving_after_the_garbage(http: httpx.Client, emulator: EmulatorProcess) -> None:
    assert http.get("/_emulator/health").json() == {"status": "ok"}
    client = sdk(emulator)
    assert run_batch(client, chat_lines(3)).status == "completed"
    assert upload(client, jsonl(chat_lines(1))).status == "processed"
