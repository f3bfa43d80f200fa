"""The Azure dialect (``--dialect azure``): Azure's routes and ``api-version``, the ``api-key``
header, deployment names as models, both endpoint forms, uploads that are ``pending`` for a while,
``""`` for missing result files, the quota of files without expiry and fail-fast token limits.

Clients are the official SDK's: ``AzureOpenAI`` on the classic routes, ``OpenAI`` on the v1 routes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.tokens import estimate_request
from tests.emulator.helpers import (
    assert_azure_error,
    chat_line,
    chat_lines,
    checked,
    create_batch,
    jsonl,
    results,
    retrieve_batch,
    retrieve_file,
    run_batch,
    sdk,
    upload,
    wait_for_status,
    wait_until,
)

AZURE = ("--dialect", "azure")
VERSION = "api-version=2024-10-21"
DEPLOYMENT = "my-gpt-4o-mini-batch"
KEY = "azure-key-0123456789"
TOKENS_PER_LINE = estimate_request("/v1/chat/completions", chat_line("req-0", "question 0")["body"]).input
"""The emulator's count of a line's input tokens: the provider's own estimate."""


def processed(client: openai.OpenAI, file_id: str) -> None:
    wait_until(lambda: retrieve_file(client, file_id).status == "processed", what=f"{file_id} processed")


# the first line and the clients -----------------------------------------------------------------


def test_first_line_is_the_azure_endpoint(tmp_path: Path) -> None:
    environment = {**os.environ, "BATCH_EMULATOR_DIALECT": "azure"}  # every flag has its variable
    command = [
        sys.executable,
        "-m",
        "airflow_provider_batch.emulator",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", first), first
        client = openai.AzureOpenAI(azure_endpoint=first, api_version="2024-10-21", api_key="any")
        assert client.batches.list().data == []
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


def test_unknown_dialect_is_a_usage_error(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "airflow_provider_batch.emulator", "--port", "0", "--dialect", "bedrock"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "argument --dialect: invalid choice: 'bedrock'" in result.stderr
    assert result.stdout == ""


def test_process_helpers_follow_the_dialect(make_emulator: Callable[..., EmulatorProcess]) -> None:
    server = make_emulator(*AZURE)
    assert server.dialect == "azure"
    assert server.base_url == f"{server.root_url}/openai/v1"
    assert isinstance(server.client(), openai.AzureOpenAI)
    assert isinstance(server.async_client(), openai.AsyncAzureOpenAI)
    assert str(server.client().base_url) == f"{server.root_url}/openai/"
    assert server.admin("GET", "settings")["azure"]["max_files_without_expiry"] == 500


# a batch end to end, in both endpoint forms -------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("/chat/completions", "/chat/completions"),
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/chat/completions", "/v1/chat/completions"),
        ("/v1/chat/completions", "/chat/completions"),
    ],
)
def test_batch_on_a_deployment_through_azure_openai(
    make_emulator: Callable[..., EmulatorProcess], endpoint: str, url: str
) -> None:
    server = make_emulator(*AZURE, "--file-processing-delay", "1", api_key=KEY)
    client = sdk(server)
    lines = [{**chat_line(f"req-{i}", f"question {i}", model=DEPLOYMENT), "url": url} for i in range(3)]
    lines.append({**chat_line("boom", model=DEPLOYMENT, emulator={"status_code": 500}), "url": url})
    file = upload(client, jsonl(lines))
    assert (file.status, file.expires_at) == ("pending", None)  # Azure keeps files without expiry
    processed(client, file.id)
    batch = checked(
        client.batches.with_raw_response.create(
            input_file_id=file.id,
            endpoint=endpoint,  # type: ignore[arg-type]
            completion_window="24h",
        ),
        "Batch",
    )
    assert (batch.status, batch.endpoint, batch.output_file_id, batch.error_file_id) == (
        "validating",
        endpoint,
        "",
        "",
    )
    done = wait_for_status(client, batch.id)
    assert done.status == "completed", done.errors
    assert done.model == DEPLOYMENT
    output, errors = results(client, done)
    assert sorted(line["custom_id"] for line in output) == ["req-0", "req-1", "req-2"]
    assert all(line["response"]["body"]["model"] == DEPLOYMENT for line in output)
    assert [(line["custom_id"], line["response"]["status_code"]) for line in errors] == [("boom", 500)]
    assert retrieve_file(client, done.output_file_id).expires_at is None


def test_an_empty_result_file_is_an_empty_string(make_emulator: Callable[..., EmulatorProcess]) -> None:
    server = make_emulator(*AZURE, "--file-processing-delay", "0")
    client = sdk(server)
    done = run_batch(client, chat_lines(2))
    assert done.status == "completed"
    assert done.output_file_id
    assert done.error_file_id == ""
    raw = httpx.get(f"{server.root_url}/openai/batches/{done.id}?{VERSION}", headers={"api-key": "x"}).json()
    assert raw["error_file_id"] == ""


def test_a_url_in_another_endpoint_still_mismatches(make_emulator: Callable[..., EmulatorProcess]) -> None:
    server = make_emulator(*AZURE, "--file-processing-delay", "0")
    lines = [{**chat_line("a"), "url": "/embeddings"}]
    failed = run_batch(sdk(server), lines, endpoint="/chat/completions")
    assert failed.status == "failed"
    assert [error.code for error in failed.errors.data] == ["url_mismatch"]


def test_the_v1_routes_take_a_plain_openai_client(make_emulator: Callable[..., EmulatorProcess]) -> None:
    server = make_emulator(*AZURE, "--file-processing-delay", "0.2", api_key=KEY)
    client = sdk(server, plain=True)  # OpenAI(base_url=".../openai/v1"), key as a bearer token
    file = upload(client, jsonl(chat_lines(2)))
    assert file.status == "pending"
    processed(client, file.id)
    batch = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert wait_for_status(client, batch.id).status == "completed"
    # The same batch through the classic routes: one resource behind both forms.
    assert retrieve_batch(sdk(server), batch.id).status == "completed"


# api-version, routes, keys -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> EmulatorProcess:
    with EmulatorProcess(tmp_path_factory.mktemp("azure"), *AZURE, api_key=KEY) as server:
        yield server


def get(server: EmulatorProcess, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{server.root_url}{path}", headers={"api-key": KEY, **headers})


@pytest.mark.parametrize("version", ["2024-07-01-preview", "2024-10-21", "2025-04-01-preview", "2026-01-01"])
def test_classic_routes_take_a_dated_version_with_batches(
    azure_server: EmulatorProcess, version: str
) -> None:
    response = get(azure_server, f"/openai/batches?api-version={version}")
    assert response.status_code == 200, response.text


def test_classic_routes_without_api_version_are_not_found(azure_server: EmulatorProcess) -> None:
    for path in ("/openai/batches", "/openai/files", "/openai/batches/batch_x"):
        assert_azure_error(get(azure_server, path), 404, "404", "Resource not found")


@pytest.mark.parametrize(
    "query",
    [
        "api-version=2024-06-01",  # before the batch API
        "api-version=2023-05-15",
        "api-version=2024-10-21x",
        "api-version=latest",  # the v1 routes' word, not the classic ones'
        "api-version=",
    ],
)
def test_an_unsupported_api_version_is_a_400(azure_server: EmulatorProcess, query: str) -> None:
    assert_azure_error(
        get(azure_server, f"/openai/batches?{query}"), 400, "BadRequest", "API version not supported"
    )


@pytest.mark.parametrize(
    ("query", "status"), [("", 200), ("?api-version=preview", 200), (f"?{VERSION}", 400)]
)
def test_v1_routes_need_no_dated_version(azure_server: EmulatorProcess, query: str, status: int) -> None:
    response = get(azure_server, f"/openai/v1/batches{query}")
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    "path",
    [
        "/v1/batches",  # OpenAI's routes are not Azure's
        f"/openai/deployments/{DEPLOYMENT}/batches?{VERSION}",  # files and batches are not deployment-scoped
        f"/openai/deployments/{DEPLOYMENT}/files?{VERSION}",
        f"/openai/fine_tuning/jobs?{VERSION}",
        "/",
    ],
)
def test_other_paths_are_not_found_in_azure_shape(azure_server: EmulatorProcess, path: str) -> None:
    assert_azure_error(get(azure_server, path), 404, "404", "Resource not found")


MISSING_KEY = (
    "Access denied due to missing subscription key. Make sure to include subscription key when making"
    " requests to an API."
)
WRONG_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key"
    " for an active subscription and use a correct regional API endpoint for your resource."
)


@pytest.mark.parametrize(
    ("path", "headers", "message"),
    [
        (f"/openai/batches?{VERSION}", {}, MISSING_KEY),
        (
            f"/openai/batches?{VERSION}",
            {"Authorization": f"Bearer {KEY}"},
            MISSING_KEY,
        ),  # classic: api-key only
        (f"/openai/batches?{VERSION}", {"api-key": "wrong-key-42"}, WRONG_KEY),
        ("/openai/v1/batches", {}, MISSING_KEY),
        ("/openai/v1/batches", {"Authorization": "Bearer wrong-key-42"}, WRONG_KEY),
        ("/openai/v1/batches", {"api-key": "wrong-key-42"}, WRONG_KEY),
    ],
)
def test_the_key_is_checked(
    azure_server: EmulatorProcess, path: str, headers: dict[str, str], message: str
) -> None:
    response = httpx.get(f"{azure_server.root_url}{path}", headers=headers)
    assert_azure_error(response, 401, "401", message)
    assert "wrong-key-42" not in response.text  # never echoed: error bodies end up in logs


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (f"/openai/batches?{VERSION}", {"api-key": KEY}),
        ("/openai/v1/batches", {"api-key": KEY}),
        ("/openai/v1/batches", {"Authorization": f"Bearer {KEY}"}),
    ],
)
def test_the_right_key_opens_each_form(
    azure_server: EmulatorProcess, path: str, headers: dict[str, str]
) -> None:
    assert httpx.get(f"{azure_server.root_url}{path}", headers=headers).status_code == 200


def test_a_wrong_key_fails_the_azure_client(azure_server: EmulatorProcess) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk(azure_server, api_key="wrong-key-42").batches.list()


def test_statistics_and_fault_routes_name_the_v1_route(make_emulator: Callable[..., EmulatorProcess]) -> None:
    server = make_emulator(*AZURE)
    server.configure(faults={"rate": 1.0, "kinds": ["503"], "count": 1, "routes": "^GET /v1/batches$"})
    assert get(server, f"/openai/batches?{VERSION}").status_code == 503
    assert get(server, "/openai/v1/batches").status_code == 200
    assert server.stats()["requests"] == {"GET /v1/batches": 2}


# the quota of files without expiry ------------------------------------------------------------------------


def test_files_without_expiry_are_capped(make_emulator: Callable[..., EmulatorProcess]) -> None:
    server = make_emulator(*AZURE, "--file-processing-delay", "0", "--max-files-without-expiry", "3")
    client = sdk(server)
    done = run_batch(client, chat_lines(1))  # its input and its output file: two without expiry
    assert retrieve_file(client, done.output_file_id).expires_at is None
    kept = upload(client, jsonl(chat_lines(1)))  # the third
    with pytest.raises(openai.BadRequestError) as refused:
        upload(client, jsonl(chat_lines(1)))
    assert_azure_error(
        refused.value.response,
        400,
        "quotaExceeded",
        "The quota for files without expiry is reached. The maximum is 3.",
    )
    # Files that expire do not count, and deleting one frees a place.
    expiring = upload(
        client, jsonl(chat_lines(1)), expires_after={"anchor": "created_at", "seconds": 1_209_600}
    )
    assert expiring.expires_at == expiring.created_at + 1_209_600
    client.files.delete(kept.id)
    assert upload(client, jsonl(chat_lines(1))).expires_at is None


def test_the_quota_is_azure_only(make_emulator: Callable[..., EmulatorProcess]) -> None:
    server = make_emulator("--max-files-without-expiry", "0")
    assert upload(sdk(server), b"x", filename="notes.txt", purpose="user_data").expires_at is None


# enqueued tokens: fail fast at create, or fail in validating -----------------------------------------------


def test_token_limit_fails_fast_at_create(make_emulator: Callable[..., EmulatorProcess]) -> None:
    limit = TOKENS_PER_LINE * 3
    server = make_emulator(
        *AZURE,
        "--file-processing-delay",
        "0",
        "--enqueued-token-limit",
        str(limit),
        "--token-limit-fail-fast",
    )
    client = sdk(server)
    lines = [chat_line(f"req-{i}", f"question {i}", model=DEPLOYMENT) for i in range(2)]
    running = create_batch(client, lines, metadata={"emulator_line_delay": "5"})
    wait_for_status(client, running.id, "in_progress")  # its tokens are enqueued from here on

    file = upload(client, jsonl(lines))
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert_azure_error(
        refused.value.response,
        400,
        "token_limit_exceeded",
        f"The number of enqueued tokens has surpassed the configured limit of {limit:,} for the deployment"
        f" '{DEPLOYMENT}'. Please either increase the limit or try again once the current jobs have"
        " finished.",
    )
    assert [batch.id for batch in client.batches.list()] == [running.id]  # nothing was created

    # Without fail-fast, the same batch is created and fails in validating, with the same message.
    server.configure(azure={"token_limit_fail_fast": False})
    failed = wait_for_status(
        client,
        client.batches.create(
            input_file_id=file.id, endpoint="/chat/completions", completion_window="24h"
        ).id,
    )
    assert failed.status == "failed"
    assert [(e.code, e.message) for e in failed.errors.data] == [
        ("token_limit_exceeded", refused.value.body["message"])  # type: ignore[index]
    ]
    client.batches.cancel(running.id)


def test_a_pending_upload_is_refused_then_processed_after_the_delay(
    make_emulator: Callable[..., EmulatorProcess],
) -> None:
    server = make_emulator(*AZURE, "--file-processing-delay", "60")
    client = sdk(server)
    file = upload(client, jsonl(chat_lines(1)))
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=file.id, endpoint="/chat/completions", completion_window="24h")
    assert_azure_error(
        refused.value.response,
        400,
        "BadRequest",
        f"The input file '{file.id}' is in 'pending' state. Only files with status 'Processed' are accepted"
        " for batch inferencing. Please check the file status and try again",
    )
    assert retrieve_file(client, file.id).status == "pending"

    server.configure(azure={"file_processing_delay": 0.5})
    started = time.monotonic()
    file = upload(client, jsonl(chat_lines(1)))
    assert file.status == "pending"
    processed(client, file.id)
    assert time.monotonic() - started >= 0.5
    server.configure(azure={"file_processing_delay": 0})
    assert upload(client, jsonl(chat_lines(1))).status == "processed"
