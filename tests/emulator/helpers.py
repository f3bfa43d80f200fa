"""Shared helpers for the emulator tests: request-line builders, schema-checked SDK calls,
polling with a deadline, and readers for result files.

Every SDK call that returns JSON goes through :func:`checked` (or the helpers built on it), so the
raw body is validated against the OpenAPI schema before the SDK's parsed object is used.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpx
import openai
from openai.types import Batch, FileObject

from tests.emulator.schemas import assert_error_envelope, assert_schema

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
LIFECYCLE = ("validating", "in_progress", "finalizing", "completed")
TIMEOUT = 15.0
"""Default deadline for one wait; generous for a loaded CI machine, never reached when healthy."""
POLL = 0.02
CHAT = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
TIMESTAMPS = (
    "created_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


# Request lines ---------------------------------------------------------------------------------


def request_line(custom_id: str, body: dict[str, Any], url: str = CHAT) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_line(custom_id: str, text: str = "hello", *, model: str = MODEL, **body: Any) -> dict[str, Any]:
    """One chat-completions request line; ``body`` adds or overrides body fields."""
    return request_line(custom_id, {"model": model, "messages": [{"role": "user", "content": text}], **body})


def chat_lines(count: int, prefix: str = "req") -> list[dict[str, Any]]:
    return [chat_line(f"{prefix}-{i}", f"question {i}") for i in range(count)]


def jsonl(lines: Iterable[dict[str, Any] | str | bytes]) -> bytes:
    """JSONL bytes; dicts are encoded, str/bytes are written as they are (for broken lines)."""
    out = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        out.append(line.encode() if isinstance(line, str) else line)
    return b"".join(part + b"\n" for part in out)


# Schema-checked clients and calls --------------------------------------------------------------

ROUTE_SCHEMAS = [
    # OpenAI's /v1/... and the Azure dialect's /openai/... and /openai/v1/...
    (method, re.compile(f"(?:/v1|/openai|/openai/v1)/{pattern}"), schema)
    for method, pattern, schema in (
        ("POST", "files", "OpenAIFile"),
        ("GET", "files", "ListFilesResponse"),
        ("GET", "files/[^/]+", "OpenAIFile"),
        ("DELETE", "files/[^/]+", "DeleteFileResponse"),
        ("POST", "batches", "Batch"),
        ("GET", "batches", "ListBatchesResponse"),
        ("GET", "batches/[^/]+", "Batch"),
        ("POST", "batches/[^/]+/cancel", "Batch"),
    )
]


def is_azure(response: Any) -> bool:
    """Whether a response came from the Azure dialect's routes."""
    return bool(response.request.url.path.startswith("/openai/"))


def check_response(response: Any) -> None:
    """Check any emulator response: a request id; the body of a successful Files/Batches call
    against its schema; every error body against OpenAI's envelope (or Azure's, on its routes)."""
    assert response.headers.get("x-request-id", "").startswith("req_"), dict(response.headers)
    if response.status_code >= 400:
        assert_error_envelope(response.json(), azure=is_azure(response))
        return
    path = response.request.url.path
    for method, pattern, schema in ROUTE_SCHEMAS:
        if response.request.method == method and pattern.fullmatch(path):
            assert_schema(schema, response.json(), azure=is_azure(response))


def _is_json(response: Any) -> bool:
    # File contents are not read here, so that streaming downloads still stream.
    return response.headers.get("content-type", "").startswith("application/json")


def _check_hook(response: Any) -> None:
    if _is_json(response):
        response.read()
        check_response(response)


async def _async_check_hook(response: Any) -> None:
    if _is_json(response):
        await response.aread()
        check_response(response)


def sdk(server: Any, *, plain: bool = False, **options: Any) -> openai.OpenAI:
    """The SDK client for ``server`` whose every JSON response goes through :func:`check_response`.

    Under the azure dialect it is an ``AzureOpenAI`` client (classic routes, ``api-version``), or
    with ``plain=True`` an ``OpenAI`` client on the v1 routes (``server.base_url``). A failed check
    raises inside the SDK's transport, which reports it as ``APIConnectionError`` with the schema
    violation as its cause.
    """
    options.setdefault("api_key", server.api_key or "emulator")
    http_client = openai.DefaultHttpxClient(event_hooks={"response": [_check_hook]})
    if server.dialect == "azure" and not plain:
        return openai.AzureOpenAI(**server.client_options(), http_client=http_client, **options)
    return openai.OpenAI(base_url=server.base_url, http_client=http_client, **options)


def async_sdk(server: Any, **options: Any) -> openai.AsyncOpenAI:
    """The async twin of :func:`sdk`."""
    options.setdefault("api_key", server.api_key or "emulator")
    http_client = openai.DefaultAsyncHttpxClient(event_hooks={"response": [_async_check_hook]})
    if server.dialect == "azure":
        return openai.AsyncAzureOpenAI(**server.client_options(), http_client=http_client, **options)
    return openai.AsyncOpenAI(base_url=server.base_url, http_client=http_client, **options)


def checked(raw: Any, schema: str) -> Any:
    """Validate a ``with_raw_response`` result's JSON against ``schema``; return the parsed object."""
    response: httpx.Response = raw.http_response
    assert response.headers.get("x-request-id", "").startswith("req_"), dict(response.headers)
    assert_schema(schema, response.json(), azure=is_azure(response))
    return raw.parse()


def upload(
    client: Any, content: bytes, *, filename: str = "input.jsonl", purpose: str = "batch", **kw: Any
) -> FileObject:
    return checked(
        client.files.with_raw_response.create(
            file=(filename, content, "application/jsonl"), purpose=purpose, **kw
        ),
        "OpenAIFile",
    )


def create_batch(
    client: Any,
    lines: Iterable[dict[str, Any] | str | bytes],
    *,
    endpoint: str = CHAT,
    metadata: dict[str, str] | None = None,
    **kw: Any,
) -> Batch:
    """Upload ``lines`` as a batch input file and create a batch on it."""
    file = upload(client, jsonl(lines))
    if metadata is not None:
        kw["metadata"] = metadata
    return checked(
        client.batches.with_raw_response.create(
            input_file_id=file.id, endpoint=endpoint, completion_window="24h", **kw
        ),
        "Batch",
    )


def retrieve_batch(client: Any, batch_id: str) -> Batch:
    return checked(client.batches.with_raw_response.retrieve(batch_id), "Batch")


def retrieve_file(client: Any, file_id: str) -> FileObject:
    return checked(client.files.with_raw_response.retrieve(file_id), "OpenAIFile")


# Waiting ---------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], Any], *, timeout: float = TIMEOUT, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy, and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {value!r}")
        time.sleep(POLL)


def wait_for(
    client: Any,
    batch_id: str,
    condition: Callable[[Batch], bool],
    *,
    timeout: float = TIMEOUT,
    what: str = "",
) -> Batch:
    """Poll the batch (schema-checked on every poll) until ``condition(batch)`` holds."""
    last: list[Batch] = []

    def poll() -> Batch | None:
        batch = retrieve_batch(client, batch_id)
        last[:] = [batch]
        return batch if condition(batch) else None

    try:
        return wait_until(poll, timeout=timeout, what=what or f"batch {batch_id}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last batch: {last[0] if last else None}") from None


def wait_for_status(client: Any, batch_id: str, *statuses: str, timeout: float = TIMEOUT) -> Batch:
    """Wait until the batch reaches one of ``statuses`` (default: any terminal status)."""
    wanted = set(statuses or TERMINAL)
    return wait_for(
        client, batch_id, lambda b: b.status in wanted, timeout=timeout, what=f"status in {wanted}"
    )


def run_batch(client: Any, lines: Iterable[dict[str, Any] | str | bytes], **kw: Any) -> Batch:
    """Create a batch and wait until it is terminal."""
    return wait_for_status(client, create_batch(client, lines, **kw).id)


async def async_checked(awaitable: Awaitable[Any], schema: str) -> Any:
    return checked(await awaitable, schema)


async def async_create_batch(
    client: Any, lines: Iterable[dict[str, Any] | str | bytes], *, endpoint: str = CHAT, **kw: Any
) -> Batch:
    file = await async_checked(
        client.files.with_raw_response.create(file=("input.jsonl", jsonl(lines)), purpose="batch"),
        "OpenAIFile",
    )
    return await async_checked(
        client.batches.with_raw_response.create(
            input_file_id=file.id, endpoint=endpoint, completion_window="24h", **kw
        ),
        "Batch",
    )


async def async_wait_for_status(client: Any, batch_id: str, *statuses: str, within: float = TIMEOUT) -> Batch:
    wanted = set(statuses or TERMINAL)
    batch = None
    try:
        async with asyncio.timeout(within):
            while True:
                batch = await async_checked(client.batches.with_raw_response.retrieve(batch_id), "Batch")
                if batch.status in wanted:
                    return batch
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {wanted}; last batch: {batch}") from None


# Results ---------------------------------------------------------------------------------------


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def download(client: Any, file_id: str) -> bytes:
    """The file's bytes, streamed (``with_streaming_response`` + ``iter_bytes``), as large files must be."""
    with client.files.with_streaming_response.content(file_id) as response:
        assert response.http_response.status_code == 200
        return b"".join(response.iter_bytes())


async def async_download(client: Any, file_id: str) -> bytes:
    async with client.files.with_streaming_response.content(file_id) as response:
        return b"".join([chunk async for chunk in response.iter_bytes()])


def read_lines(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    """The JSON lines of a result file; none when the id is null (nothing to report)."""
    return parse_jsonl(download(client, file_id)) if file_id else []


def results(client: Any, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(output lines, error lines)`` of a finished batch, each file checked as a batch_output file."""
    for file_id in (batch.output_file_id, batch.error_file_id):
        if file_id:
            assert retrieve_file(client, file_id).purpose == "batch_output"
    return read_lines(client, batch.output_file_id), read_lines(client, batch.error_file_id)


def assert_each_custom_id_once(lines: Iterable[dict[str, Any]], expected: Iterable[str]) -> None:
    """Every expected ``custom_id`` appears exactly once across ``lines``, and nothing else does."""
    counts = Counter(line["custom_id"] for line in lines)
    duplicated = {custom_id: n for custom_id, n in counts.items() if n > 1}
    assert not duplicated, f"custom_ids written more than once: {duplicated}"
    assert set(counts) == set(expected)


def assert_unrun_line(line: dict[str, Any], code: str) -> None:
    """A line that never ran (``batch_expired``/``batch_cancelled``): no response, an error object."""
    assert line["id"].startswith("batch_req_")
    assert line["response"] is None
    assert line["error"]["code"] == code
    assert line["error"]["message"]


def assert_counts_match_files(batch: Batch, output: list[Any], errors: list[Any]) -> None:
    counts = batch.request_counts
    assert counts is not None
    assert (counts.completed, counts.failed) == (len(output), len(errors))
    assert counts.total == counts.completed + counts.failed


# Errors ----------------------------------------------------------------------------------------


def assert_error(
    response: httpx.Response,
    status: int,
    *,
    message: str | None = None,
    type: str | None = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Check an error response: status, exact envelope, request id and the given field values."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id", "").startswith("req_")
    error = assert_error_envelope(response.json())
    expected = {"param": param, "code": code}
    if type is not None:
        expected["type"] = type
    if message is not None:
        expected["message"] = message
    assert {key: error[key] for key in expected} == expected, error
    return error


def admin_url(server: Any, path: str) -> str:
    return f"{server.root_url}/_emulator/{path}"


def assert_azure_error(response: httpx.Response, status: int, code: str, message: str | None = None) -> str:
    """Check an error in Azure's own shape (``{"error": {"code", "message"}}``); return the message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers.get("x-request-id", "").startswith("req_")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    if message is not None:
        assert body["error"]["message"] == message, body
    return str(body["error"]["message"])
