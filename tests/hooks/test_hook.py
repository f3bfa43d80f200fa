"""OpenAIBatchHook against a real emulator process: every operation, sync and async, the retry
policy (attempts counted by the emulator), and a create whose response is lost. Lifecycle tests
run on OpenAI's API and on Azure's (an ``AzureOpenAI`` client, and the ``/openai/v1`` form)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest
from airflow.sdk import ObjectStoragePath

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.hooks.batch import IDEMPOTENCY_KEY, OpenAIBatchHook, read_snapshot, snapshot_of
from airflow_provider_batch.hooks.retry import RetryPolicy, is_transient, retry_after_seconds
from airflow_provider_batch.status import PollFailure
from tests.batch_testing import DIALECTS, connection

FAST_RETRIES = {"max_retries": 4, "retry_initial_wait": 0.01, "retry_max_wait": 0.5, "retry_max_total": 30}
TERMINAL = {"completed", "failed", "expired", "cancelled"}
ALL_FORMS = (*DIALECTS, "azure-v1")


def use_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


@pytest.fixture
def hook_for(monkeypatch: pytest.MonkeyPatch, dialect: str) -> Callable[..., OpenAIBatchHook]:
    """A hook on a connection (env var) that points at the given emulator, written for the test's
    ``dialect``."""

    def make(server: EmulatorProcess, conn_id: str = "batch_emulator", **extra: object) -> OpenAIBatchHook:
        password = server.api_key or "sk-emulator-key"
        fields = connection(server, dialect, password, **{**FAST_RETRIES, **extra})
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
        return OpenAIBatchHook(conn_id=conn_id)

    return make


def write_requests(path: Path, count: int = 3) -> Path:
    with path.open("w") as out:
        for index in range(count):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {index}"}]}
            line = {"custom_id": f"r{index}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            out.write(json.dumps(line) + "\n")
    return path


def wait_terminal(hook: OpenAIBatchHook, batch_id: str, timeout: float = 30) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = hook.get_batch(batch_id)
        if batch.status in TERMINAL:
            return batch
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} did not finish in {timeout} s")


# connection ------------------------------------------------------------------------------------


def test_connection_builds_configured_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(
        monkeypatch,
        "shaped",
        conn_type="openai_batch",
        host="http://127.0.0.1:9/v1",
        password="sk-secret-value",
        extra={
            "organization": "org-1",
            "project": "proj-1",
            "timeout": 12,
            "default_headers": {"X-Team": "data"},
        },
    )
    hook = OpenAIBatchHook(conn_id="shaped")
    client = hook.get_conn()
    assert isinstance(client, openai.OpenAI)
    assert str(client.base_url) == "http://127.0.0.1:9/v1/"
    assert (client.organization, client.project, client.timeout, client.max_retries) == (
        "org-1",
        "proj-1",
        12,
        0,
    )
    assert client.default_headers["X-Team"] == "data"
    assert "sk-secret-value" not in repr(hook.config)


def test_official_openai_connection_type_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(
        monkeypatch,
        "legacy",
        conn_type="openai",
        password="sk-x",
        extra={"base_url": "http://127.0.0.1:9/v1"},
    )
    assert str(OpenAIBatchHook(conn_id="legacy").get_conn().base_url) == "http://127.0.0.1:9/v1/"


OFFICIAL_KEY = "sk-official-form-0123456789"


@pytest.mark.parametrize(
    "fields",
    [
        # The official provider's quick start: the key as the password, the server as the host.
        pytest.param({"password": OFFICIAL_KEY, "host": "{base_url}"}, id="password-and-host"),
        # Its connection page: everything in openai_client_kwargs, as that provider passes it on.
        pytest.param(
            {
                "extra": {
                    "openai_client_kwargs": {"timeout": 10, "api_key": OFFICIAL_KEY, "base_url": "{base_url}"}
                }
            },
            id="openai-client-kwargs",
        ),
        # Both, as a gateway user might: the client kwargs win, as they do there.
        pytest.param(
            {
                "password": "sk-not-this-one-0123456789",
                "host": "http://127.0.0.1:9/v1",
                "extra": {"openai_client_kwargs": {"api_key": OFFICIAL_KEY, "base_url": "{base_url}"}},
            },
            id="client-kwargs-win",
        ),
    ],
)
def test_a_connection_written_for_the_official_provider_works_unchanged(
    make_emulator: Callable[..., EmulatorProcess], monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any]
) -> None:
    server = make_emulator(api_key=OFFICIAL_KEY)  # any other key is refused: the key really travels
    written = json.loads(json.dumps(fields).replace("{base_url}", server.base_url))
    use_connection(monkeypatch, "official_form", conn_type="openai", **written)
    hook = OpenAIBatchHook(conn_id="official_form")

    assert hook.test_connection()[0], "the key and the base URL reached the emulator"
    assert str(hook.get_conn().base_url) == f"{server.base_url}/"
    if "openai_client_kwargs" in written.get("extra", {}):
        assert hook.get_conn().timeout == written["extra"]["openai_client_kwargs"].get("timeout", 600.0)


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        (
            {"openai_client_kwargs": {"http_client": "x", "websocket_base_url": "y"}},
            "http_client, websocket_base_url cannot be applied",
        ),
        ({"openai_client_kwargs": ["timeout", 10]}, "'openai_client_kwargs' must be an object"),
        (
            {"auth_type": "workload_identity", "identity_provider_id": "p"},
            "auth_type='workload_identity' is not supported",
        ),
        ({"timeout": 30, "openai_client_kwargs": {"timeout": 10}}, "'timeout' is set twice"),
    ],
)
def test_official_settings_that_cannot_be_honoured_are_refused(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any], complaint: str
) -> None:
    use_connection(monkeypatch, "refused", conn_type="openai", password=OFFICIAL_KEY, extra=extra)
    with pytest.raises(ValueError, match=re.escape(complaint)) as raised:
        OpenAIBatchHook(conn_id="refused").get_conn()
    assert "connection 'refused'" in str(raised.value)
    assert OFFICIAL_KEY not in str(raised.value)


def test_client_kwargs_max_retries_and_default_query_are_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = {"max_retries": 1, "default_query": {"tenant": "t1"}, "organization": "org-1", "project": "p"}
    use_connection(
        monkeypatch,
        "tuned",
        conn_type="openai",
        password=OFFICIAL_KEY,
        extra={"openai_client_kwargs": kwargs},
    )
    hook = OpenAIBatchHook(conn_id="tuned")
    assert hook.retry_policy.max_attempts == 2
    client = hook.get_conn()
    assert (client.organization, client.project, client.max_retries) == ("org-1", "p", 0)
    assert client._custom_query == {"tenant": "t1"}


async def test_azure_connection_builds_azure_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(
        monkeypatch,
        "azure",
        conn_type="openai_batch",
        host="https://example-resource.openai.azure.com",
        password="azure-key-123",
        extra={"api_type": "azure", "api_version": "2024-10-21"},
    )
    sync_client = OpenAIBatchHook(conn_id="azure").get_conn()
    async_client = await OpenAIBatchHook(conn_id="azure").aget_conn()
    assert isinstance(sync_client, openai.AzureOpenAI)
    assert isinstance(async_client, openai.AsyncAzureOpenAI)
    assert str(sync_client.base_url).startswith("https://example-resource.openai.azure.com/openai")
    assert sync_client._custom_query["api-version"] == "2024-10-21"


def test_azure_connection_without_api_version_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(
        monkeypatch,
        "azure_bad",
        conn_type="openai_batch",
        host="https://r.openai.azure.com",
        extra={"api_type": "azure"},
    )
    with pytest.raises(ValueError, match="api_version"):
        OpenAIBatchHook(conn_id="azure_bad").get_conn()


async def test_async_clients_are_shared_per_loop_and_config(
    emulator: EmulatorProcess, hook_for: Callable[..., OpenAIBatchHook]
) -> None:
    first = await hook_for(emulator).aget_conn()
    second = await OpenAIBatchHook(conn_id="batch_emulator").aget_conn()
    assert first is second
    assert isinstance(first, openai.AsyncOpenAI)


async def test_concurrent_async_calls_share_a_bounded_pool(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook]
) -> None:
    """A thousand triggers share one client: its pool is capped, so calls beyond the cap queue
    for a free connection instead of opening more (each costs CPU on every request)."""
    server = make_emulator("--latency", "0.3")
    hook = hook_for(server, max_connections=2)
    async with hook.async_client():
        started = time.monotonic()
        failures = await asyncio.gather(*(hook.apoll_batch(f"batch_{n}") for n in range(6)))
        elapsed = time.monotonic() - started
    assert [failure.http_status for failure in failures] == [404] * 6
    # 6 calls of at least 0.3 s through 2 connections: 3 rounds; unbounded, all 6 overlap.
    assert elapsed >= 0.85


@pytest.mark.parametrize("value", [0, -3])
def test_max_connections_below_one_is_rejected(monkeypatch: pytest.MonkeyPatch, value: int) -> None:
    use_connection(monkeypatch, "tiny_pool", conn_type="openai_batch", extra={"max_connections": value})
    with pytest.raises(ValueError, match="max_connections"):
        OpenAIBatchHook(conn_id="tiny_pool").get_conn()


@pytest.mark.parametrize("dialect", ALL_FORMS)
def test_test_connection(dialect_emulator: EmulatorProcess, hook_for: Callable[..., OpenAIBatchHook]) -> None:
    assert hook_for(dialect_emulator).test_connection()[0] is True


def test_azure_connection_through_host(
    azure_emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Azure endpoint may be the connection's host instead of extra ``azure_endpoint``."""
    use_connection(
        monkeypatch,
        "azure_host",
        conn_type="openai_batch",
        host=azure_emulator.root_url,
        password="azure-key",
        extra={"api_type": "azure", "api_version": "2024-10-21"},
    )
    hook = OpenAIBatchHook(conn_id="azure_host")
    assert hook.test_connection() == (True, "Connection successfully tested: the Batch API answered.")
    assert isinstance(hook.get_conn(), openai.AzureOpenAI)


def test_test_connection_reports_a_bad_key_without_echoing_it(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook], monkeypatch
) -> None:
    server = make_emulator(api_key="sk-the-right-key")
    use_connection(
        monkeypatch, "wrong_key", conn_type="openai_batch", host=server.base_url, password="sk-wrong-key"
    )
    ok, message = OpenAIBatchHook(conn_id="wrong_key").test_connection()
    assert not ok
    assert "401" in message
    assert "sk-wrong-key" not in message


# files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ALL_FORMS)
def test_upload_from_path_object_storage_and_file_object(
    dialect_emulator: EmulatorProcess, hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    hook = hook_for(dialect_emulator)
    source = write_requests(tmp_path / "requests.jsonl")
    expected = source.read_bytes()

    from_path = hook.upload_file(source, expires_after_seconds=7200)
    assert (from_path.filename, from_path.bytes, from_path.purpose) == (
        "requests.jsonl",
        len(expected),
        "batch",
    )
    assert from_path.expires_at - from_path.created_at == 7200

    from_storage = hook.upload_file(ObjectStoragePath(f"file://{source}"))
    memory = ObjectStoragePath("memory://hook-tests/requests.jsonl")
    memory.write_bytes(expected)
    from_memory = hook.upload_file(memory)
    from_handle = hook.upload_file(io.BytesIO(expected), filename="handle.jsonl")

    for uploaded in (from_path, from_storage, from_memory, from_handle):
        assert uploaded.status == "processed"
        buffer = io.BytesIO()
        assert hook.download_file(uploaded.id, buffer) == len(expected)
        assert buffer.getvalue() == expected


@pytest.mark.parametrize("dialect", DIALECTS)
def test_download_to_path_and_object_storage_then_delete(
    dialect_emulator: EmulatorProcess, hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    hook = hook_for(dialect_emulator)
    source = write_requests(tmp_path / "requests.jsonl", count=50)
    uploaded = hook.upload_file(source)

    hook.download_file(uploaded.id, tmp_path / "copy.jsonl")
    assert (tmp_path / "copy.jsonl").read_bytes() == source.read_bytes()
    remote = ObjectStoragePath("memory://hook-tests/copy.jsonl")
    hook.download_file(uploaded.id, remote)
    assert remote.read_bytes() == source.read_bytes()

    assert hook.delete_file(uploaded.id) is True
    with pytest.raises(openai.NotFoundError):
        hook.download_file(uploaded.id, io.BytesIO())


# batches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", ALL_FORMS)
def test_batch_round_trip_tags_the_idempotency_key(
    dialect_emulator: EmulatorProcess, hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    hook = hook_for(dialect_emulator)
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl"))
    batch = hook.create_batch(
        uploaded.id,
        "/v1/chat/completions",
        metadata={"dag_id": "d"},
        idempotency_key="key-round-trip",
        output_expires_after_seconds=3600,
    )
    assert batch.metadata == {"dag_id": "d", IDEMPOTENCY_KEY: "key-round-trip"}
    finished = wait_terminal(hook, batch.id)
    assert finished.status == "completed"
    assert finished.request_counts.completed == 3
    assert hook.find_batch_by_metadata(IDEMPOTENCY_KEY, "key-round-trip").id == batch.id
    assert hook.find_batch_by_metadata(IDEMPOTENCY_KEY, "no-such-key") is None
    output = io.BytesIO()
    hook.download_file(finished.output_file_id, output)
    assert sorted(json.loads(line)["custom_id"] for line in output.getvalue().splitlines()) == [
        "r0",
        "r1",
        "r2",
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_upload_waits_until_the_file_is_processed(
    dialect: str,
    make_emulator: Callable[..., EmulatorProcess],
    hook_for: Callable[..., OpenAIBatchHook],
    tmp_path: Path,
) -> None:
    """Azure answers an upload ``pending`` and refuses a batch on it until it is ``processed``; the
    hook's upload returns only then, so a create right after it succeeds."""
    server = make_emulator("--file-processing-delay", "0.6")
    hook = hook_for(server)
    started = time.monotonic()
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl", count=1))
    elapsed = time.monotonic() - started
    assert uploaded.status == "processed"
    assert hook.create_batch(uploaded.id, "/v1/chat/completions").status == "validating"
    looks = server.stats()["requests"].get("GET /v1/files/{id}", 0)
    if dialect == "azure":
        assert elapsed >= 0.6
        assert 1 <= looks <= 4  # polled from 0.1 s, doubling: not hammered, not 5 s late
    else:
        assert looks == 0  # OpenAI answers processed at once


@pytest.mark.parametrize("dialect", DIALECTS)
def test_failed_lines_and_failed_batches(
    dialect_emulator: EmulatorProcess, hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    hook = hook_for(dialect_emulator)
    source = write_requests(tmp_path / "requests.jsonl", count=2)
    failing = {"model": "gpt-4o-mini", "messages": [], "emulator": {"status_code": 429, "code": "rate_limit"}}
    with source.open("a") as out:
        line = {"custom_id": "r-bad", "method": "POST", "url": "/v1/chat/completions", "body": failing}
        out.write(json.dumps(line) + "\n")
    uploaded = hook.upload_file(source)

    partial = wait_terminal(hook, hook.create_batch(uploaded.id, "/v1/chat/completions").id)
    assert (partial.status, partial.request_counts.completed, partial.request_counts.failed) == (
        "completed",
        2,
        1,
    )
    errors = io.BytesIO()
    hook.download_file(partial.error_file_id, errors)
    assert [json.loads(line)["response"]["status_code"] for line in errors.getvalue().splitlines()] == [429]

    failed = wait_terminal(
        hook,
        hook.create_batch(
            uploaded.id, "/v1/chat/completions", metadata={"emulator_fail_validation": "token_limit_exceeded"}
        ).id,
    )
    assert failed.status == "failed"
    assert [error.code for error in failed.errors.data] == ["token_limit_exceeded"]
    snapshot = hook.poll_batch(failed.id)
    assert (snapshot.output_file_id, snapshot.error_file_id) == (None, None)  # "" on Azure: no file


@pytest.mark.parametrize("dialect", ALL_FORMS)
def test_cancel_and_async_surface(
    dialect_emulator: EmulatorProcess, hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    hook = hook_for(dialect_emulator)
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl", count=20))
    batch = hook.create_batch(uploaded.id, "/v1/chat/completions", metadata={"emulator_line_delay": "0.2"})

    async def observe_and_cancel() -> tuple[object, object]:
        async_hook = OpenAIBatchHook(conn_id="batch_emulator")
        seen = await async_hook.aget_batch(batch.id)
        cancelled = await async_hook.acancel_batch(batch.id)
        return seen, cancelled

    import asyncio

    seen, cancelled = asyncio.run(observe_and_cancel())
    assert seen.id == batch.id
    assert cancelled.status in {"cancelling", "cancelled"}
    finished = wait_terminal(hook, batch.id)
    assert finished.status == "cancelled"
    assert finished.request_counts.completed < 20


def test_list_batches_walks_every_page(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    server = make_emulator()
    hook = hook_for(server)
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl", count=1))
    created = [hook.create_batch(uploaded.id, "/v1/chat/completions").id for _ in range(7)]
    server.reset_stats()
    listed = [batch.id for batch in hook.list_batches(page_size=3)]
    assert listed == list(reversed(created))
    assert server.stats()["requests"]["GET /v1/batches"] == 3


# retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_transient_errors_are_retried_and_counted(
    make_emulator: Callable[..., EmulatorProcess],
    hook_for: Callable[..., OpenAIBatchHook],
    tmp_path: Path,
) -> None:
    server = make_emulator()
    hook = hook_for(server)
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl", count=1))
    batch = hook.create_batch(uploaded.id, "/v1/chat/completions")
    server.configure(
        faults={"rate": 1.0, "kinds": ["500", "503", "drop"], "count": 3, "routes": "GET /v1/batches/"}
    )
    server.reset_stats()
    assert hook.get_batch(batch.id).id == batch.id
    stats = server.stats()
    assert stats["requests"]["GET /v1/batches/{id}"] == 4  # three faults, then the answer
    assert stats["total_faults"] == 3


def test_retry_after_is_honoured(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook]
) -> None:
    server = make_emulator("--retry-after", "0.4")
    hook = hook_for(server, retry_initial_wait=0.001)
    server.configure(faults={"rate": 1.0, "kinds": ["429"], "count": 1})
    started = time.monotonic()
    list(hook.list_batches())
    assert time.monotonic() - started >= 0.4
    assert server.stats()["requests"]["GET /v1/batches"] == 2


def test_other_client_errors_fail_at_once(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook]
) -> None:
    server = make_emulator()
    hook = hook_for(server)
    with pytest.raises(openai.NotFoundError, match="No such batch"):
        hook.get_batch("batch_missing")
    assert server.stats()["requests"]["GET /v1/batches/{id}"] == 1


def test_retries_stop_at_the_attempt_budget(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook]
) -> None:
    server = make_emulator()
    hook = hook_for(server, max_retries=2)
    server.configure(faults={"rate": 1.0, "kinds": ["500"]})
    with pytest.raises(openai.InternalServerError):
        hook.get_batch("batch_anything")
    assert server.stats()["requests"]["GET /v1/batches/{id}"] == 3


async def test_async_calls_share_the_retry_policy(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    server = make_emulator()
    hook = hook_for(server)
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl", count=1))
    batch = hook.create_batch(uploaded.id, "/v1/chat/completions")
    server.configure(faults={"rate": 1.0, "kinds": ["429", "500"], "count": 2})
    server.reset_stats()
    assert (await OpenAIBatchHook(conn_id="batch_emulator").aget_batch(batch.id)).id == batch.id
    assert server.stats()["requests"]["GET /v1/batches/{id}"] == 3


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_polls_read_the_same_snapshot_as_the_sdk_model(
    dialect_emulator: EmulatorProcess, hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    """Polls read the raw JSON instead of the SDK's pydantic ``Batch``; both must agree."""
    hook = hook_for(dialect_emulator)
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl", count=3))
    batch = wait_terminal(hook, hook.create_batch(uploaded.id, "/v1/chat/completions").id)
    expected = snapshot_of(hook.get_batch(batch.id))
    assert expected.status == "completed"
    assert expected.usage
    assert expected.request_counts
    assert hook.poll_batch(batch.id) == expected
    assert await OpenAIBatchHook(conn_id="batch_emulator").apoll_batch(batch.id) == expected


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b"[]", b'{"object": "batch"}'])
def test_a_body_that_is_not_a_batch_is_a_failed_observation(body: bytes) -> None:
    observed = read_snapshot(SimpleNamespace(content=body))
    assert isinstance(observed, PollFailure)
    assert observed.retryable
    assert "not a batch object" in observed.message


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_create_whose_response_is_lost_yields_one_batch(
    make_emulator: Callable[..., EmulatorProcess],
    hook_for: Callable[..., OpenAIBatchHook],
    tmp_path: Path,
) -> None:
    server = make_emulator()
    hook = hook_for(server)
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl", count=1))
    # The server creates the batch, then drops the connection before answering.
    server.configure(faults={"rate": 1.0, "kinds": ["drop_after"], "count": 1, "routes": "POST /v1/batches$"})
    batch = hook.create_batch(uploaded.id, "/v1/chat/completions", idempotency_key="lost-response")
    tagged = [b for b in hook.list_batches() if (b.metadata or {}).get(IDEMPOTENCY_KEY) == "lost-response"]
    assert [b.id for b in tagged] == [batch.id]
    assert server.stats()["requests"]["POST /v1/batches"] == 1
    assert server.stats()["total_faults"] == 1


def test_a_create_that_failed_before_reaching_the_server_is_retried(
    make_emulator: Callable[..., EmulatorProcess], hook_for: Callable[..., OpenAIBatchHook], tmp_path: Path
) -> None:
    server = make_emulator()
    hook = hook_for(server)
    uploaded = hook.upload_file(write_requests(tmp_path / "requests.jsonl", count=1))
    server.configure(
        faults={"rate": 1.0, "kinds": ["503", "drop"], "count": 2, "routes": "POST /v1/batches$"}
    )
    batch = hook.create_batch(uploaded.id, "/v1/chat/completions", idempotency_key="retried")
    tagged = [b.id for b in hook.list_batches() if (b.metadata or {}).get(IDEMPOTENCY_KEY) == "retried"]
    assert tagged == [batch.id]
    assert server.stats()["requests"]["POST /v1/batches"] == 3


# policy units (pure functions, no server needed) -------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        (400, False),
        (401, False),
        (404, False),
        (409, False),
        (408, True),
        (429, True),
        (500, True),
        (503, True),
    ],
)
def test_transient_statuses(status: int, transient: bool) -> None:
    import httpx

    response = httpx.Response(status, request=httpx.Request("GET", "http://x"))
    error = openai.APIStatusError("boom", response=response, body=None)
    assert is_transient(error) is transient


def test_wait_prefers_retry_after_and_caps_it() -> None:
    import httpx

    policy = RetryPolicy(initial_wait=1, max_wait=10)
    response = httpx.Response(429, headers={"retry-after": "300"}, request=httpx.Request("GET", "http://x"))
    error = openai.RateLimitError("slow down", response=response, body=None)
    assert retry_after_seconds(error) == 300
    assert policy.wait_before(1, error) == 10
    assert 0.5 <= policy.wait_before(1, None) <= 1
    assert 4 <= policy.wait_before(4, None) <= 8
