"""Validation: the asynchronous checks of the input file (the batch turns ``failed`` with
``errors.data``) and the synchronous 400s of ``POST /batches``."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.tokens import estimate_request
from tests.emulator.helpers import (
    CHAT,
    MODEL,
    assert_error,
    chat_line,
    chat_lines,
    create_batch,
    request_line,
    run_batch,
    sdk,
    upload,
    wait_for_status,
)

EMBEDDINGS = "/v1/embeddings"
TOKEN_LIMIT_MESSAGE = (
    "Enqueued token limit reached for {model} in organization org-emulator. Limit: {limit} enqueued tokens."
    " Please try again once some in_progress batches have been completed."
)


def _without(field: str) -> dict[str, Any]:
    line = chat_line("x")
    del line[field]
    return line


def _embedding_line(custom_id: str, inputs: Any) -> dict[str, Any]:
    return request_line(custom_id, {"model": "text-embedding-3-small", "input": inputs}, url=EMBEDDINGS)


# (lines, endpoint, expected errors.data): each case one code, with its exact line, param and message.
ASYNC_CASES: dict[str, tuple[list[Any], str, list[dict[str, Any]]]] = {
    "invalid_json_line": (
        [chat_line("a"), '{"custom_id": "b", "method": "POST",'],
        CHAT,
        [
            {
                "code": "invalid_json_line",
                "line": 2,
                "param": None,
                "message": "This line is not parseable as valid JSON.",
            }
        ],
    ),
    "invalid_json_line-bad-utf8": (
        [b'{"custom_id": "\xff\xfe", "method": "POST", "url": "/v1/chat/completions", "body": {}}'],
        CHAT,
        [
            {
                "code": "invalid_json_line",
                "line": 1,
                "param": None,
                "message": "This line is not parseable as valid JSON.",
            }
        ],
    ),
    "invalid_json_line-too-deep": (
        [chat_line("a"), "[" * 100_000 + "]" * 100_000],
        CHAT,
        [
            {
                "code": "invalid_json_line",
                "line": 2,
                "param": None,
                "message": "This line is not parseable as valid JSON.",
            }
        ],
    ),
    "invalid_json_line-not-an-object": (
        [chat_line("a"), chat_line("b"), "[1, 2, 3]"],
        CHAT,
        [
            {
                "code": "invalid_json_line",
                "line": 3,
                "param": None,
                "message": "This line is valid JSON but not a JSON object.",
            }
        ],
    ),
    "line-numbers-count-blank-lines": (
        [chat_line("a"), "", "   ", "nope"],
        CHAT,
        [
            {
                "code": "invalid_json_line",
                "line": 4,
                "param": None,
                "message": "This line is not parseable as valid JSON.",
            }
        ],
    ),
    **{
        f"missing_required_parameter-{field}": (
            [chat_line("ok"), _without(field)],
            CHAT,
            [
                {
                    "code": "missing_required_parameter",
                    "line": 2,
                    "param": field,
                    "message": f"Missing required parameter: '{field}'.",
                }
            ],
        )
        for field in ("custom_id", "method", "url", "body")
    },
    **{
        f"invalid_type-{field}": (
            [{**chat_line("x"), field: value}],
            CHAT,
            [
                {
                    "code": "invalid_type",
                    "line": 1,
                    "param": field,
                    "message": f"Invalid type for '{field}': expected {expected}, but got {got} instead.",
                }
            ],
        )
        for field, value, expected, got in (
            ("custom_id", 7, "a string", "an integer"),
            ("method", None, "a string", "null"),
            ("url", ["/v1/chat/completions"], "a string", "an array"),
            ("body", "hello", "an object", "a string"),
        )
    },
    "invalid_method": (
        [{**chat_line("a"), "method": "GET"}],
        CHAT,
        [
            {
                "code": "invalid_method",
                "line": 1,
                "param": "method",
                "message": "Invalid value for 'method': only 'POST' is supported, got 'GET'.",
            }
        ],
    ),
    "url_mismatch": (
        [chat_line("a"), {**chat_line("b"), "url": "/v1/completions"}],
        CHAT,
        [
            {
                "code": "url_mismatch",
                "line": 2,
                "param": "url",
                "message": "The url '/v1/completions' does not match the batch endpoint"
                " '/v1/chat/completions'.",
            }
        ],
    ),
    "model_mismatch": (
        [chat_line("a"), chat_line("b"), chat_line("c", model="gpt-4o")],
        CHAT,
        [
            {
                "code": "model_mismatch",
                "line": 3,
                "param": "body.model",
                "message": f"The model 'gpt-4o' differs from the model '{MODEL}' used on line 1;"
                " all requests in a batch must use the same model.",
            }
        ],
    ),
    "duplicate_custom_id": (
        [chat_line("a"), chat_line("b"), chat_line("a")],
        CHAT,
        [
            {
                "code": "duplicate_custom_id",
                "line": 3,
                "param": "custom_id",
                "message": "The custom_id 'a' is already used on line 1; custom_id values must be"
                " unique within a batch.",
            }
        ],
    ),
    "empty_file": (
        ["", "  "],
        CHAT,
        [
            {
                "code": "empty_file",
                "line": None,
                "param": None,
                "message": "The batch input file is empty; it must contain at least one request.",
            }
        ],
    ),
    "too_many_embedding_inputs": (
        [_embedding_line("a", ["x"] * 25_000), _embedding_line("b", ["y"] * 25_001)],
        EMBEDDINGS,
        [
            {
                "code": "too_many_embedding_inputs",
                "line": None,
                "param": "body.input",
                "message": "The batch contains 50,001 embedding inputs; an embeddings batch may"
                " contain at most 50,000 inputs across all requests.",
            }
        ],
    ),
    "several-errors-in-one-file": (
        [chat_line("a"), "garbage", {**chat_line("c"), "method": "PUT", "url": "/v1/embeddings"}],
        CHAT,
        [
            {
                "code": "invalid_json_line",
                "line": 2,
                "param": None,
                "message": "This line is not parseable as valid JSON.",
            },
            {
                "code": "invalid_method",
                "line": 3,
                "param": "method",
                "message": "Invalid value for 'method': only 'POST' is supported, got 'PUT'.",
            },
            {
                "code": "url_mismatch",
                "line": 3,
                "param": "url",
                "message": "The url '/v1/embeddings' does not match the batch endpoint"
                " '/v1/chat/completions'.",
            },
        ],
    ),
}


def _assert_failed(batch: openai.types.Batch, expected: list[dict[str, Any]]) -> None:
    assert batch.status == "failed", batch
    assert batch.failed_at is not None
    assert batch.in_progress_at is None
    assert (batch.output_file_id, batch.error_file_id) == (None, None)
    assert batch.errors is not None
    assert [error.model_dump() for error in batch.errors.data] == expected


@pytest.mark.parametrize(("lines", "endpoint", "expected"), ASYNC_CASES.values(), ids=ASYNC_CASES.keys())
def test_async_validation(emulator: EmulatorProcess, lines: list[Any], endpoint: str, expected: list) -> None:
    _assert_failed(run_batch(sdk(emulator), lines, endpoint=endpoint), expected)


def test_embedding_token_arrays_count_as_one_input(emulator: EmulatorProcess) -> None:
    """The counterpart of too_many_embedding_inputs: an array of token ids is one input."""
    lines = [_embedding_line("a", list(range(30_000))), _embedding_line("b", list(range(30_000)))]
    assert run_batch(sdk(emulator), lines, endpoint=EMBEDDINGS).status == "completed"


def test_too_many_tasks(emulator: EmulatorProcess) -> None:
    # 50,001 minimal lines (about 4 MB), built as one bytes object rather than 50,001 dicts.
    template = '{"custom_id":"%d","method":"POST","url":"/v1/moderations","body":{"input":"x"}}\n'
    content = "".join(template % i for i in range(50_001)).encode()
    client = sdk(emulator)
    file = upload(client, content)
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/moderations", completion_window="24h")
    _assert_failed(
        wait_for_status(client, batch.id, timeout=30),
        [
            {
                "code": "too_many_tasks",
                "line": 50_001,
                "param": None,
                "message": "The batch input file contains more than the maximum of 50,000 requests.",
            }
        ],
    )


def test_token_limit_forced_by_metadata(emulator: EmulatorProcess) -> None:
    batch = run_batch(
        sdk(emulator), chat_lines(2), metadata={"emulator_fail_validation": "token_limit_exceeded"}
    )
    message = TOKEN_LIMIT_MESSAGE.format(model=MODEL, limit="2,000,000")
    _assert_failed(batch, [{"code": "token_limit_exceeded", "line": None, "param": None, "message": message}])


def test_other_codes_can_be_forced_by_metadata(emulator: EmulatorProcess) -> None:
    batch = run_batch(sdk(emulator), chat_lines(1), metadata={"emulator_fail_validation": "quota_exceeded"})
    message = "Validation failed with quota_exceeded (forced by emulator_fail_validation)."
    _assert_failed(batch, [{"code": "quota_exceeded", "line": None, "param": None, "message": message}])


def test_enqueued_token_limit(make_emulator) -> None:
    """``--enqueued-token-limit``: unfinished batches of a model count against the quota."""
    client = sdk(make_emulator("--enqueued-token-limit", "100"))
    text = "lorem ipsum dolor sit amet " * 10
    line = chat_line("a", text)
    tokens = estimate_request(CHAT, line["body"]).input  # the provider's own estimate
    assert 50 < tokens <= 100  # (tests/emulator/test_enqueued_tokens.py has the rest)

    # Alone, one line fits; two do not.
    message = TOKEN_LIMIT_MESSAGE.format(model=MODEL, limit="100")
    failed = run_batch(client, [line, chat_line("b", text)])
    _assert_failed(
        failed, [{"code": "token_limit_exceeded", "line": None, "param": None, "message": message}]
    )

    slow = create_batch(client, [line], metadata={"emulator_line_delay": "0.5"})
    wait_for_status(client, slow.id, "in_progress")
    # While the slow batch holds its tokens, a second one-line batch of the same model is over the quota...
    _assert_failed(
        run_batch(client, [line]),
        [{"code": "token_limit_exceeded", "line": None, "param": None, "message": message}],
    )
    # ...but another model has its own quota.
    assert run_batch(client, [chat_line("c", text, model="gpt-4o")]).status == "completed"
    # Once the slow batch is done, its tokens are released.
    assert wait_for_status(client, slow.id).status == "completed"
    assert run_batch(client, [line]).status == "completed"


# Synchronous errors of POST /batches ------------------------------------------------------------


@pytest.fixture(scope="module")
def input_file_id(emulator: EmulatorProcess) -> str:
    return upload(sdk(emulator), b"".join(json.dumps(line).encode() + b"\n" for line in chat_lines(1))).id


SYNC_CASES: dict[str, tuple[dict[str, Any], str | None, str | None, str | None]] = {
    # name: (create arguments, param, code, message or None to skip the exact text)
    "invalid-endpoint": (
        {"endpoint": "/v1/audio/speech"},
        "endpoint",
        "invalid_value",
        "Invalid value for 'endpoint': '/v1/audio/speech'. Supported values are: /v1/responses,"
        " /v1/chat/completions, /v1/embeddings, /v1/completions, /v1/moderations, /v1/images/generations,"
        " /v1/images/edits, /v1/videos.",
    ),
    "endpoint-not-a-string": (
        {"endpoint": 42},
        "endpoint",
        "invalid_type",
        "Invalid type for 'endpoint': expected a non-empty string, but got an integer instead.",
    ),
    "endpoint-null": ({"endpoint": None}, "endpoint", "missing_required_parameter", None),
    "completion-window-48h": (
        {"completion_window": "48h"},
        "completion_window",
        "invalid_value",
        "Invalid value for 'completion_window': '48h'. Supported values are: '24h'.",
    ),
    "unknown-input-file": (
        {"input_file_id": "file-doesnotexist"},
        "input_file_id",
        None,
        "Cannot find file file-doesnotexist.",
    ),
    "metadata-17-keys": (
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        "metadata",
        "object_above_max_properties",
        "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but got an"
        " object with 17 properties instead.",
    ),
    "metadata-key-65-chars": (
        {"metadata": {"k" * 65: "v"}},
        "metadata",
        "string_above_max_length",
        None,
    ),
    "metadata-value-513-chars": (
        {"metadata": {"note": "v" * 513}},
        "metadata.note",
        "string_above_max_length",
        "Invalid 'metadata.note': string too long. Expected a string with maximum length 512, but got a"
        " string with length 513 instead.",
    ),
    "metadata-non-string-value": (
        {"metadata": {"attempt": 3}},
        "metadata.attempt",
        "invalid_type",
        "Invalid type for 'metadata.attempt': expected a string, but got an integer instead.",
    ),
    "metadata-not-an-object": ({"metadata": ["a"]}, "metadata", "invalid_type", None),
    "output-expires-after-too-short": (
        {"output_expires_after": {"anchor": "created_at", "seconds": 3599}},
        "output_expires_after.seconds",
        "invalid_value",
        "Invalid 'output_expires_after.seconds': must be between 3600 and 2592000, got 3599.",
    ),
    "output-expires-after-too-long": (
        {"output_expires_after": {"anchor": "created_at", "seconds": 2_592_001}},
        "output_expires_after.seconds",
        "invalid_value",
        None,
    ),
    "output-expires-after-bad-anchor": (
        {"output_expires_after": {"anchor": "completed_at", "seconds": 3600}},
        "output_expires_after.anchor",
        "invalid_value",
        None,
    ),
    "output-expires-after-float": (
        {"output_expires_after": {"anchor": "created_at", "seconds": 3600.5}},
        "output_expires_after.seconds",
        "invalid_type",
        None,
    ),
    "output-expires-after-not-an-object": (
        {"output_expires_after": 3600},
        "output_expires_after",
        "invalid_type",
        None,
    ),
    "unknown-argument": (
        {"extra_body": {"priority": "high"}},
        "priority",
        None,
        "Unrecognized request argument supplied: priority",
    ),
}


@pytest.mark.parametrize(("changes", "param", "code", "message"), SYNC_CASES.values(), ids=SYNC_CASES.keys())
def test_create_rejects_bad_arguments(
    emulator: EmulatorProcess,
    input_file_id: str,
    changes: dict[str, Any],
    param: str,
    code: str | None,
    message: str | None,
) -> None:
    arguments: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": CHAT, "completion_window": "24h"}
    arguments.update(changes)
    client = sdk(emulator)
    newest = client.batches.list(limit=1).data
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(**arguments)
    assert_error(caught.value.response, 400, param=param, code=code, message=message)
    assert client.batches.list(limit=1).data == newest  # nothing was created


@pytest.mark.parametrize("field", ["input_file_id", "endpoint", "completion_window"])
def test_create_without_a_required_field(emulator: EmulatorProcess, input_file_id: str, field: str) -> None:
    # The SDK always sends its required arguments, so a truly missing field goes through httpx.
    body = {"input_file_id": input_file_id, "endpoint": CHAT, "completion_window": "24h"}
    del body[field]
    assert_error(
        httpx.post(f"{emulator.base_url}/batches", json=body),
        400,
        message=f"Missing required parameter: '{field}'.",
        param=field,
        code="missing_required_parameter",
    )


def test_input_file_must_have_purpose_batch(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    file = upload(client, b'{"custom_id": "a"}\n', purpose="user_data")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(input_file_id=file.id, endpoint=CHAT, completion_window="24h")
    assert_error(
        caught.value.response,
        400,
        param="input_file_id",
        message=f"The file {file.id} has purpose 'user_data'; a batch input file must be uploaded with"
        " purpose 'batch'.",
    )


def test_metadata_at_the_limits_is_accepted(emulator: EmulatorProcess, input_file_id: str) -> None:
    metadata = {f"{i:02d}".ljust(64, "k"): "v" * 512 for i in range(16)}
    batch = sdk(emulator).batches.create(
        input_file_id=input_file_id, endpoint=CHAT, completion_window="24h", metadata=metadata
    )
    assert batch.metadata == metadata
