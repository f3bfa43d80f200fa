"""The echo engine: deterministic, well-formed answers for every endpoint, through the synchronous
endpoints (the SDK's own resources) and through batches, plus the per-line test directive."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import struct
from typing import Any

import httpx
import openai
import pytest

from airflow_provider_batch.emulator.process import EmulatorProcess
from tests.emulator.helpers import (
    MODEL,
    assert_error,
    async_create_batch,
    async_download,
    async_sdk,
    async_wait_for_status,
    chat_line,
    parse_jsonl,
    request_line,
    results,
    run_batch,
    sdk,
)

EMBEDDING_MODEL = "text-embedding-3-small"


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# Synchronous endpoints through the SDK -----------------------------------------------------------


def test_chat_completions(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    completion = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL
    [choice] = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "echo: What is 2+2?",
        "stop",
    )
    assert completion.usage is not None
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    again = client.chat.completions.create(model=MODEL, messages=messages)  # type: ignore[arg-type]
    assert (again.id, again.choices, again.usage) == (completion.id, completion.choices, completion.usage)


def test_chat_options(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    user = [{"role": "user", "content": "tell me a long story about a cat"}]
    three = client.chat.completions.create(model=MODEL, messages=user, n=3)  # type: ignore[arg-type]
    assert [c.index for c in three.choices] == [0, 1, 2]
    capped = client.chat.completions.create(model=MODEL, messages=user, max_completion_tokens=2)  # type: ignore[arg-type]
    assert capped.choices[0].finish_reason == "length"
    assert capped.choices[0].message.content == "echo: te"  # about four characters per token
    as_json = client.chat.completions.create(
        model=MODEL,
        messages=user,  # type: ignore[arg-type]
        response_format={"type": "json_object"},
    )
    assert json.loads(as_json.choices[0].message.content or "") == {
        "echo": "tell me a long story about a cat"
    }


def test_completions(emulator: EmulatorProcess) -> None:
    completion = sdk(emulator).completions.create(model="gpt-3.5-turbo-instruct", prompt=["one", "two"])
    assert completion.object == "text_completion"
    assert [c.text for c in completion.choices] == ["echo: one", "echo: two"]


def test_responses(emulator: EmulatorProcess) -> None:
    response = sdk(emulator).responses.create(model=MODEL, input="hello there", instructions="Be brief.")
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    assert response.output_text == "echo: hello there"
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_moderations(emulator: EmulatorProcess) -> None:
    moderation = sdk(emulator).moderations.create(input=["first text", "second text"])
    assert moderation.model == "omni-moderation-latest"
    assert len(moderation.results) == 2
    for result in moderation.results:
        assert result.flagged is False
        assert result.categories.violence is False
        assert result.category_scores.harassment == 0.0


@pytest.mark.parametrize(
    ("options", "length"),
    [({}, 1536), ({"dimensions": 64}, 64), ({"model": "text-embedding-3-large"}, 3072)],
)
def test_embedding_length(emulator: EmulatorProcess, options: dict[str, Any], length: int) -> None:
    arguments = {"model": EMBEDDING_MODEL, "input": "the cat sat on the mat", **options}
    embedding = sdk(emulator).embeddings.create(**arguments).data[0].embedding
    assert len(embedding) == length
    assert math.isclose(math.sqrt(sum(v * v for v in embedding)), 1.0, rel_tol=1e-4)  # normalised


def test_embeddings_are_deterministic_and_meaningful(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    texts = ["the cat sat on the mat", "a cat sat on a mat", "quarterly revenue grew by ten percent"]
    vectors = [
        d.embedding for d in client.embeddings.create(model=EMBEDDING_MODEL, input=texts, dimensions=256).data
    ]
    again = client.embeddings.create(model=EMBEDDING_MODEL, input=texts[0], dimensions=256).data[0].embedding
    assert again == vectors[0]
    # Texts that share words are clearly closer than unrelated ones.
    related, unrelated = _cosine(vectors[0], vectors[1]), _cosine(vectors[0], vectors[2])
    assert related > unrelated + 0.3, (related, unrelated)


def test_embedding_base64_decodes_to_the_float_vector(emulator: EmulatorProcess) -> None:
    body = {"model": EMBEDDING_MODEL, "input": ["hello world", [1, 2, 3]], "dimensions": 32}
    with httpx.Client(base_url=emulator.base_url) as http:
        floats = http.post("/embeddings", json={**body, "encoding_format": "float"}).json()
        packed = http.post("/embeddings", json={**body, "encoding_format": "base64"}).json()
    for as_float, as_base64 in zip(floats["data"], packed["data"], strict=True):
        decoded = struct.unpack("<32f", base64.b64decode(as_base64["embedding"]))
        assert decoded == pytest.approx(as_float["embedding"], abs=1e-6)
    assert packed["usage"] == floats["usage"]
    # The SDK asks for base64 by default and decodes it itself.
    decoded_by_sdk = sdk(emulator).embeddings.create(**body).data  # type: ignore[arg-type]
    assert len(decoded_by_sdk) == 2
    for from_sdk, as_float in zip(decoded_by_sdk, floats["data"], strict=True):
        assert from_sdk.embedding == pytest.approx(as_float["embedding"], abs=1e-6)


# Through batches -------------------------------------------------------------------------------

BATCH_BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"},
    "/v1/responses": {"model": MODEL, "input": "hi"},
    "/v1/embeddings": {"model": EMBEDDING_MODEL, "input": "hi there", "dimensions": 8},
    "/v1/moderations": {"model": "omni-moderation-latest", "input": "hi"},
}
OBJECTS = {
    "/v1/chat/completions": "chat.completion",
    "/v1/completions": "text_completion",
    "/v1/responses": "response",
    "/v1/embeddings": "list",
}
VOLATILE = {"created", "created_at"}  # wall-clock fields


async def test_every_endpoint_through_a_batch_matches_the_synchronous_answer(
    emulator: EmulatorProcess,
) -> None:
    async with async_sdk(emulator) as client, httpx.AsyncClient(base_url=emulator.root_url) as http:

        async def one(endpoint: str, body: dict[str, Any]) -> None:
            batch = await async_create_batch(
                client, [request_line("only", body, url=endpoint)], endpoint=endpoint
            )
            batch = await async_wait_for_status(client, batch.id)
            assert batch.status == "completed", (endpoint, batch)
            assert batch.model == body["model"]
            assert batch.error_file_id is None
            [line] = parse_jsonl(await async_download(client, batch.output_file_id))
            answer = line["response"]["body"]
            assert answer.get("object") == OBJECTS.get(endpoint), endpoint
            direct = (await http.post(endpoint, json=body)).json()
            assert {k: v for k, v in answer.items() if k not in VOLATILE} == {
                k: v for k, v in direct.items() if k not in VOLATILE
            }, endpoint

        await asyncio.gather(*(one(endpoint, body) for endpoint, body in BATCH_BODIES.items()))


def test_embeddings_batch_with_base64(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    body = {"model": EMBEDDING_MODEL, "input": "hi there", "dimensions": 8}
    lines = [
        request_line("float", body, url="/v1/embeddings"),
        request_line("base64", {**body, "encoding_format": "base64"}, url="/v1/embeddings"),
    ]
    output, _ = results(client, run_batch(client, lines, endpoint="/v1/embeddings"))
    by_id = {line["custom_id"]: line["response"]["body"]["data"][0]["embedding"] for line in output}
    assert struct.unpack("<8f", base64.b64decode(by_id["base64"])) == pytest.approx(by_id["float"], abs=1e-6)


def test_lines_the_engine_rejects_become_error_lines(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = [
        chat_line("good"),
        request_line("no-messages", {"model": MODEL}),
        request_line("bad-messages", {"model": MODEL, "messages": "hello"}),
    ]
    batch = run_batch(client, lines)
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 3, "completed": 1, "failed": 2}
    output, errors = results(client, batch)
    assert [line["custom_id"] for line in output] == ["good"]
    by_id = {line["custom_id"]: line for line in errors}
    for custom_id, param in (("no-messages", "messages"), ("bad-messages", "messages")):
        line = by_id[custom_id]
        assert line["error"] is None
        assert line["response"]["status_code"] == 400
        assert line["response"]["request_id"].startswith("req_")
        assert line["response"]["body"]["error"]["type"] == "invalid_request_error"
        assert line["response"]["body"]["error"]["param"] == param


def test_per_line_directive(emulator: EmulatorProcess) -> None:
    client = sdk(emulator)
    lines = [
        chat_line("ok"),
        chat_line("limited", emulator={"status_code": 429}),
        chat_line("busy", emulator={"status_code": 503, "message": "Try later.", "code": "overloaded"}),
        chat_line("missing", emulator={"status_code": 404}),
        chat_line("not-an-error", emulator={"status_code": 200}),  # ignored: only 4xx/5xx are directives
        chat_line("not-a-number", emulator={"status_code": "429"}),  # ignored as well
    ]
    batch = run_batch(client, lines)
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 3, "failed": 3}
    output, errors = results(client, batch)
    assert sorted(line["custom_id"] for line in output) == ["not-a-number", "not-an-error", "ok"]
    by_id = {line["custom_id"]: line for line in errors}
    expected = {
        "limited": (429, "requests", "rate_limit_exceeded", "Emulated failure with status 429."),
        "busy": (503, "server_error", "overloaded", "Try later."),
        "missing": (404, "invalid_request_error", None, "Emulated failure with status 404."),
    }
    assert set(by_id) == set(expected)
    for custom_id, (status, kind, code, message) in expected.items():
        line = by_id[custom_id]
        assert (line["error"], line["response"]["status_code"]) == (None, status)
        assert line["response"]["body"] == {
            "error": {"message": message, "type": kind, "param": None, "code": code}
        }
    # Only the lines that ran count towards usage.
    usage = sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in output)
    assert batch.usage.input_tokens == usage


def test_directive_on_the_synchronous_endpoint(emulator: EmulatorProcess) -> None:
    client = sdk(emulator, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"emulator": {"status_code": 429}},
        )
    assert_error(caught.value.response, 429, type="requests", code="rate_limit_exceeded")
