"""``airflow_provider_batch.answers``: answers read out of response bodies, and structured outputs checked.

Bodies are written the way the endpoints return them (field sets of the openai SDK 3.x response types and
the API reference, Azure's additions included), with plain values and no I/O.
"""

from __future__ import annotations

import base64
import datetime
import logging
import random
import struct
from typing import Any

import jsonschema
import msgspec
import pydantic
import pytest

from airflow_provider_batch import answers
from airflow_provider_batch.answers import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    IMAGE_EDITS,
    IMAGE_GENERATIONS,
    INVALID_OUTPUT,
    MODERATIONS,
    REASON_LIMIT,
    RESPONSES,
    Answer,
    ExpectedOutput,
    OutputCheck,
    RequestInfo,
    ToolCall,
    answer_row,
    check_output,
    check_user_schema,
    endpoint_of,
    extract_answer,
    read_request,
)

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["customer", "items"],
    "additionalProperties": False,
}
VALID_ORDER = '{"customer": "Ada", "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}'


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


# Bodies, shaped like the API's ------------------------------------------------------------------------------


def chat_usage(
    prompt: int = 120, completion: int = 40, cached: int = 64, reasoning: int = 0
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_body(message: dict[str, Any], finish_reason: str = "stop", **extra: Any) -> bytes:
    return encode(
        {
            "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
            "object": "chat.completion",
            "created": 1741570283,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "annotations": [], **message},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": chat_usage(),
            "service_tier": "default",
            "system_fingerprint": "fp_f9f4fb6dbf",
            **extra,
        }
    )


def responses_body(output: list[dict[str, Any]], status: str = "completed", **extra: Any) -> bytes:
    return encode(
        {
            "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
            "object": "response",
            "created_at": 1741476542,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "model": "o4-mini-2025-04-16",
            "output": output,
            "parallel_tool_calls": True,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 36,
                "input_tokens_details": {"cached_tokens": 12},
                "output_tokens": 87,
                "output_tokens_details": {"reasoning_tokens": 64},
                "total_tokens": 123,
            },
            **extra,
        }
    )


REASONING_ITEM = {
    "type": "reasoning",
    "id": "rs_6820f383d7c08191846711c5df8233bc0ac5ba57aafcbac7",
    "summary": [{"type": "summary_text", "text": "The user wants an order."}],
    "content": [{"type": "reasoning_text", "text": "Thinking about the order, not an answer."}],
    "encrypted_content": None,
}


def message_item(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "message",
        "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
        "status": "completed",
        "role": "assistant",
        "content": list(parts),
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def embeddings_body(vectors: list[list[float]], order: list[int] | None = None, b64: bool = False) -> bytes:
    indices = order if order is not None else list(range(len(vectors)))
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(struct.pack(f"<{len(vectors[index])}f", *vectors[index])).decode()
            if b64
            else vectors[index],
        }
        for index in indices
    ]
    return encode(
        {
            "object": "list",
            "data": data,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": 8, "total_tokens": 8},
        }
    )


MODERATION_CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence", "violence/graphic")


def moderation_result(*flagged: str) -> dict[str, Any]:
    return {
        "flagged": bool(flagged),
        "categories": {name: name in flagged for name in MODERATION_CATEGORIES},
        "category_scores": {name: 0.9 if name in flagged else 0.001 for name in MODERATION_CATEGORIES},
        "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
    }


def request_line(url: str, body: dict[str, Any], custom_id: str = "req-1") -> bytes:
    return encode({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def chat_request(
    response_format: dict[str, Any] | None = None, text: str = "Order two A-1 and one B-7"
) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if response_format is not None:
        body["response_format"] = response_format
    return request_line(CHAT, body)


def chat_schema_request(schema: dict[str, Any] = ORDER_SCHEMA) -> RequestInfo:
    return read_request(
        chat_request(
            {"type": "json_schema", "json_schema": {"name": "order", "strict": True, "schema": schema}}
        )
    )


# Endpoints --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("/v1/chat/completions", CHAT),
        ("/chat/completions", CHAT),  # Azure's classic examples
        ("/openai/deployments/gpt-4o-batch/chat/completions?api-version=2024-10-21", CHAT),
        ("/v1/completions", COMPLETIONS),
        ("/v1/responses", RESPONSES),
        ("/openai/v1/responses/", RESPONSES),
        ("/v1/embeddings", EMBEDDINGS),
        ("/v1/moderations", MODERATIONS),
        ("/v1/images/generations", IMAGE_GENERATIONS),
        ("/v1/images/edits", IMAGE_EDITS),
        ("/v1/videos", None),
        ("", None),
        (None, None),
    ],
)
def test_endpoint_is_matched_on_the_url_suffix(url: str | None, endpoint: str | None) -> None:
    assert endpoint_of(url) == endpoint


# Chat -------------------------------------------------------------------------------------------------------


def test_chat_text_finish_reason_and_usage() -> None:
    body = chat_body({"content": "Two A-1 and one B-7.", "refusal": None}, finish_reason="length")

    assert extract_answer(body, CHAT) == Answer(
        text="Two A-1 and one B-7.",
        finish_reason="length",
        input_tokens=120,
        output_tokens=40,
        cached_tokens=64,
        reasoning_tokens=0,
    )


def test_chat_content_parts_are_joined_and_azure_fields_skipped() -> None:
    body = chat_body(
        {
            "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}],
            "refusal": None,
        },
        prompt_filter_results=[{"prompt_index": 0, "content_filter_results": {"hate": {"filtered": False}}}],
    )

    answer = extract_answer(body, CHAT)

    assert answer.text == "Hello, world"
    assert answer.refusal is None


def test_chat_refusal() -> None:
    body = chat_body({"content": None, "refusal": "I'm sorry, I can't help with that."})

    answer = extract_answer(body, CHAT)

    assert (answer.text, answer.refusal) == (None, "I'm sorry, I can't help with that.")


def test_chat_function_tool_calls_in_order_and_others_skipped() -> None:
    body = chat_body(
        {
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_custom", "type": "custom", "custom": {"name": "sql", "input": "SELECT 1"}},
                {
                    "id": "call_def",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
                },
            ],
        },
        finish_reason="tool_calls",
    )

    answer = extract_answer(body, CHAT)

    assert answer.tool_calls == [
        ToolCall(id="call_abc", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCall(id="call_def", name="get_time", arguments='{"tz": "CET"}'),
    ]
    assert (answer.text, answer.finish_reason) == (None, "tool_calls")


def test_chat_legacy_function_call() -> None:
    body = chat_body(
        {"content": None, "function_call": {"name": "lookup", "arguments": '{"id": 7}'}},
        finish_reason="function_call",
    )

    assert extract_answer(body, CHAT).tool_calls == [ToolCall(id=None, name="lookup", arguments='{"id": 7}')]


def test_chat_without_choices_has_only_usage() -> None:
    body = encode({"object": "chat.completion", "choices": [], "usage": chat_usage()})

    answer = extract_answer(body, CHAT)

    assert answer.text is None
    assert answer.input_tokens == 120


# Responses --------------------------------------------------------------------------------------------------


def test_responses_output_text_skips_reasoning_and_collects_function_calls() -> None:
    body = responses_body(
        [
            REASONING_ITEM,
            message_item(output_text("Paris is "), output_text("sunny.")),
            {
                "type": "function_call",
                "id": "fc_12345xyz",
                "call_id": "call_12345xyz",
                "name": "get_weather",
                "arguments": '{"location": "Paris, France"}',
                "status": "completed",
            },
            message_item(output_text(" Take a hat.")),
        ]
    )

    assert extract_answer(body, RESPONSES) == Answer(
        text="Paris is sunny. Take a hat.",
        finish_reason="completed",
        tool_calls=[
            ToolCall(id="call_12345xyz", name="get_weather", arguments='{"location": "Paris, France"}')
        ],
        input_tokens=36,
        output_tokens=87,
        cached_tokens=12,
        reasoning_tokens=64,
    )


def test_responses_refusal_part() -> None:
    body = responses_body([message_item({"type": "refusal", "refusal": "I can't assist with that."})])

    answer = extract_answer(body, RESPONSES)

    assert (answer.text, answer.refusal) == (None, "I can't assist with that.")


def test_responses_incomplete_gives_the_reason() -> None:
    body = responses_body(
        [REASONING_ITEM, message_item(output_text('{"customer": "A'))],
        status="incomplete",
        incomplete_details={"reason": "max_output_tokens"},
    )

    answer = extract_answer(body, RESPONSES)

    assert (answer.text, answer.finish_reason) == ('{"customer": "A', "max_output_tokens")


def test_responses_only_reasoning_has_no_text() -> None:
    body = responses_body([REASONING_ITEM], status="incomplete", incomplete_details=None)

    answer = extract_answer(body, RESPONSES)

    assert (answer.text, answer.finish_reason) == (None, "incomplete")


# Completions ------------------------------------------------------------------------------------------------


def test_legacy_completions() -> None:
    body = encode(
        {
            "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
            "object": "text_completion",
            "created": 1589478378,
            "model": "gpt-3.5-turbo-instruct",
            "choices": [
                {"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None, "finish_reason": "length"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }
    )

    assert extract_answer(body, COMPLETIONS) == Answer(
        text="\n\nThis is indeed a test", finish_reason="length", input_tokens=5, output_tokens=7
    )


# Embeddings -------------------------------------------------------------------------------------------------

VECTORS = [[0.25, -0.5, 0.125], [1.0, 0.0, -1.0], [0.5, 0.5, 0.5]]
"""Exactly representable in float32, so the base64 path compares with ``==``."""


@pytest.mark.parametrize("b64", [False, True], ids=["floats", "base64"])
def test_single_input_embedding(b64: bool) -> None:
    request = read_request(request_line(EMBEDDINGS, {"model": "text-embedding-3-small", "input": "hello"}))

    answer, reason = answer_row(request, True, msgspec.Raw(embeddings_body(VECTORS[:1], b64=b64)))

    assert answer == Answer(embedding=VECTORS[0], input_tokens=8)
    assert reason is None


@pytest.mark.parametrize("b64", [False, True], ids=["floats", "base64"])
def test_multi_input_embeddings_come_back_in_input_order(b64: bool) -> None:
    request = read_request(request_line(EMBEDDINGS, {"model": "m", "input": ["a", "b", "c"]}))

    answer, _ = answer_row(request, True, msgspec.Raw(embeddings_body(VECTORS, order=[2, 0, 1], b64=b64)))

    assert answer.embeddings == VECTORS
    assert answer.embedding is None


def test_a_list_of_one_input_is_still_multi_input() -> None:
    request = read_request(request_line(EMBEDDINGS, {"model": "m", "input": ["only"]}))

    answer, _ = answer_row(request, True, msgspec.Raw(embeddings_body(VECTORS[:1])))

    assert (answer.embedding, answer.embeddings) == (None, [VECTORS[0]])


def test_base64_embedding_is_little_endian_float32() -> None:
    values = [0.1, -2.5, 3.0e-7]
    packed = base64.b64encode(struct.pack("<3f", *values)).decode()
    body = encode({"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": packed}]})

    embedding = extract_answer(body, EMBEDDINGS).embedding

    assert embedding == list(struct.unpack("<3f", struct.pack("<3f", *values)))
    assert embedding is not None
    assert embedding[1] == -2.5


def test_unreadable_base64_gives_no_vectors_rather_than_shifted_ones() -> None:
    body = encode(
        {
            "object": "list",
            "data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": "not base64!"}],
        }
    )

    answer = extract_answer(body, EMBEDDINGS)

    assert (answer.embedding, answer.embeddings) == (None, None)


@pytest.mark.parametrize(
    ("given", "single"),
    [
        ("a sentence", True),
        ([1820, 25977, 374], True),  # one token array
        (["one", "two"], False),
        ([[1820, 25977], [374]], False),  # several token arrays
        ([], False),
        (42, None),  # not an input the API takes
    ],
)
def test_embeddings_request_tells_one_input_from_several(given: Any, single: bool | None) -> None:
    request = read_request(
        request_line(EMBEDDINGS, {"model": "m", "input": given, "encoding_format": "base64"})
    )

    assert request.single_input is single


def test_embeddings_without_a_request_count_vectors() -> None:
    assert extract_answer(embeddings_body(VECTORS[:1])).embedding == VECTORS[0]
    assert extract_answer(embeddings_body(VECTORS[:2])).embeddings == VECTORS[:2]


# Moderations and images -------------------------------------------------------------------------------------


def test_moderations_flag_any_result_and_list_categories_sorted() -> None:
    body = encode(
        {
            "id": "modr-0d9740456c391e43c445bf0f010940c7",
            "model": "omni-moderation-latest",
            "results": [
                moderation_result(),
                moderation_result("violence", "harassment"),
                moderation_result("hate", "violence"),
            ],
        }
    )

    answer = extract_answer(body, MODERATIONS)

    assert (answer.flagged, answer.categories) == (True, ["harassment", "hate", "violence"])


def test_moderations_nothing_flagged() -> None:
    body = encode({"id": "modr-1", "model": "omni-moderation-latest", "results": [moderation_result()]})

    answer = extract_answer(body, MODERATIONS)

    assert (answer.flagged, answer.categories) == (False, [])


def test_images_give_urls_or_references_never_base64() -> None:
    payload = base64.b64encode(b"\x89PNG" + b"\0" * 3000).decode()
    body = encode(
        {
            "created": 1713833628,
            "data": [
                {"b64_json": payload, "revised_prompt": "a red fox"},
                {"url": "https://files.example/img-2.png"},
                {"b64_json": payload},
            ],
            "usage": {
                "input_tokens": 50,
                "input_tokens_details": {"text_tokens": 10, "image_tokens": 40},
                "output_tokens": 4160,
                "total_tokens": 4210,
            },
        }
    )

    answer = extract_answer(body, IMAGE_EDITS)

    assert answer.images == ["b64_json:data[0]", "https://files.example/img-2.png", "b64_json:data[2]"]
    assert (answer.input_tokens, answer.output_tokens) == (50, 4160)
    assert payload not in repr(answer)


# Odd bodies never raise -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"choices": [{"message": {"content": "cut',
        b"null",
        b"[]",
        b'"a string"',
        b"{}",
        b'{"choices": "none"}',
        b'{"choices": [{"message": {"content": 5}}]}',
        b'{"choices": [{"message": null, "finish_reason": null}]}',
        b'{"output": [{"type": "message", "content": [{"type": "output_text", "text": 1}]}]}',
        b'{"data": [{"embedding": {"x": 1}}]}',
        b'{"results": [{"flagged": "yes"}]}',
        b'{"error": {"message": "Invalid model", "type": "invalid_request_error", "code": null}}',
    ],
)
@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES, EMBEDDINGS, MODERATIONS, IMAGE_GENERATIONS, None])
def test_odd_bodies_give_an_empty_answer(body: bytes, endpoint: str | None) -> None:
    assert extract_answer(body, endpoint) == Answer()


def test_an_odd_body_keeps_its_readable_usage() -> None:
    body = encode({"choices": {"oops": True}, "usage": chat_usage(prompt=9, completion=1, cached=0)})

    assert extract_answer(body, CHAT) == Answer(
        input_tokens=9, output_tokens=1, cached_tokens=0, reasoning_tokens=0
    )


def test_unknown_endpoint_gives_usage_only() -> None:
    body = encode({"id": "video_1", "object": "video", "status": "queued", "progress": 0})

    assert extract_answer(body, "/v1/videos") == Answer()
    assert extract_answer(body) == Answer()


@pytest.mark.parametrize(
    ("body", "field", "value"),
    [
        (chat_body({"content": "hi"}), "text", "hi"),
        (responses_body([message_item(output_text("hi"))]), "text", "hi"),
        (encode({"object": "text_completion", "choices": [{"text": "hi", "index": 0}]}), "text", "hi"),
        (encode({"choices": [{"message": {"content": "hi"}}]}), "text", "hi"),  # no ``object``: shape tells
        (encode({"choices": [{"text": "hi"}]}), "text", "hi"),
        (encode({"id": "modr-1", "results": [moderation_result("hate")]}), "flagged", True),
        (encode({"data": [{"url": "https://x/1.png"}]}), "images", ["https://x/1.png"]),
    ],
)
def test_endpoint_is_told_by_the_body_without_a_request(body: bytes, field: str, value: Any) -> None:
    answer, reason = answer_row(None, True, msgspec.Raw(body))

    assert getattr(answer, field) == value
    assert reason is None


# Failed lines -----------------------------------------------------------------------------------------------


def test_failed_lines_carry_usage_only_and_are_never_checked() -> None:
    request = chat_schema_request()
    error_body = encode(
        {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
    )

    assert answer_row(request, False, msgspec.Raw(error_body)) == (Answer(), None)
    assert answer_row(request, False, msgspec.Raw(b"null")) == (Answer(), None)  # expired: no response
    odd_failure = chat_body({"content": "partial"})  # a 5xx from a proxy that still sent a body
    assert answer_row(request, False, msgspec.Raw(odd_failure)) == (
        Answer(input_tokens=120, output_tokens=40, cached_tokens=64, reasoning_tokens=0),
        None,
    )


# Requests ---------------------------------------------------------------------------------------------------


def test_read_chat_request_with_a_json_schema() -> None:
    line = chat_request(
        {"type": "json_schema", "json_schema": {"name": "order", "strict": True, "schema": ORDER_SCHEMA}}
    )

    request = read_request(line)

    assert (request.custom_id, request.url, request.endpoint) == ("req-1", CHAT, CHAT)
    assert request.expected is not None
    assert request.expected.name == "order"
    assert request.expected.schema is not None
    assert msgspec.json.decode(request.expected.schema) == ORDER_SCHEMA
    assert msgspec.json.decode(request.body) == msgspec.json.decode(line)["body"]
    assert bytes(request.body) in line  # the bytes as written, not re-encoded


def test_read_responses_request_with_a_json_schema() -> None:
    body = {
        "model": "o4-mini",
        "input": [{"role": "user", "content": [{"type": "input_text", "text": "Order two A-1"}]}],
        "text": {"format": {"type": "json_schema", "name": "order", "strict": True, "schema": ORDER_SCHEMA}},
    }

    request = read_request(request_line("/openai/v1/responses", body))

    assert request.endpoint == RESPONSES
    assert request.expected == ExpectedOutput(schema=encode(ORDER_SCHEMA), name="order")


@pytest.mark.parametrize(
    "line",
    [
        chat_request({"type": "json_object"}),
        request_line(RESPONSES, {"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}),
        chat_request({"type": "json_schema", "json_schema": {"name": "anything"}}),
    ],
)
def test_json_object_asks_for_any_object(line: bytes) -> None:
    expected = read_request(line).expected

    assert expected is not None
    assert expected.schema is None


@pytest.mark.parametrize(
    "line",
    [
        chat_request(),
        chat_request({"type": "text"}),
        chat_request(text='Please answer with "response_format" set'),  # mentioned, not asked for
        chat_request({"type": "json_schema", "json_schema": "not an object"}),  # the API rejects this line
        request_line(RESPONSES, {"model": "m", "input": "x", "text": {"format": {"type": "text"}}}),
        request_line(RESPONSES, {"model": "m", "input": "x", "text": "format"}),
        request_line(COMPLETIONS, {"model": "m", "prompt": "x", "response_format": {"type": "json_object"}}),
    ],
)
def test_requests_that_ask_for_no_structure(line: bytes) -> None:
    assert read_request(line).expected is None


@pytest.mark.parametrize(
    "line",
    [b"not json", b'{"url": "/v1/chat/completions", "body": {}}', b'{"custom_id": 7, "body": {}}', b"[]"],
)
def test_unreadable_request_lines_raise_like_the_results_input_decoding(line: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        read_request(line)


def test_request_without_url_or_body() -> None:
    request = read_request(b'{"custom_id": "t-1"}')

    assert (request.url, request.endpoint, request.expected, bytes(request.body)) == (
        None,
        None,
        None,
        b"null",
    )


# Structured outputs -----------------------------------------------------------------------------------------


def text_answer(text: str | None, **fields: Any) -> Answer:
    return Answer(text=text, **fields)


def test_a_matching_output_is_parsed() -> None:
    request = chat_schema_request()

    answer, reason = answer_row(request, True, msgspec.Raw(chat_body({"content": VALID_ORDER})))

    assert reason is None
    assert answer.parsed == {"customer": "Ada", "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '{"customer": "Ada", "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 0}]}',
            "does not match the schema: $.items[1].qty: 0 is less than the minimum of 1",
        ),
        ('{"items": []}', "does not match the schema: $: 'customer' is a required property"),
        ('{"customer": 5, "items": []}', "does not match the schema: $.customer: 5 is not of type 'string'"),
        (
            '{"customer": "Ada", "items": [], "note": 1}',
            "does not match the schema: $: Additional properties",
        ),
        ('{"customer": "Ada", "items": [', "does not parse as JSON: Input data was truncated"),
        ("Sure! Here is the order: {}", "does not parse as JSON: JSON is malformed"),
        ("", "does not parse as JSON"),
    ],
)
def test_an_output_that_does_not_match_is_invalid(text: str, reason: str) -> None:
    answer, got = answer_row(chat_schema_request(), True, msgspec.Raw(chat_body({"content": text})))

    assert got is not None
    assert got.startswith(reason)
    assert answer.parsed is None
    assert answer.text == text  # kept, so the bad output can still be read


def test_json_object_accepts_any_object_and_nothing_else() -> None:
    expected = ExpectedOutput()

    assert check_output(text_answer('{"free": ["form"]}'), expected) == OutputCheck({"free": ["form"]}, None)
    assert check_output(text_answer("[1, 2]"), expected) == OutputCheck(
        None, "does not match the schema: $: expected a JSON object, got an array"
    )


def test_a_refusal_is_invalid_output() -> None:
    request = read_request(
        request_line(
            RESPONSES,
            {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "schema": ORDER_SCHEMA}}},
        )
    )
    body = responses_body([message_item({"type": "refusal", "refusal": "I can't assist with that."})])

    answer, reason = answer_row(request, True, msgspec.Raw(body))

    assert reason == "refused: I can't assist with that."
    assert answer.refusal == "I can't assist with that."


def test_no_text_is_invalid_but_tool_calls_are_not_checked() -> None:
    expected = ExpectedOutput()
    calls = [ToolCall(id="call_1", name="lookup", arguments="{}")]

    assert (
        check_output(Answer(finish_reason="stop"), expected).reason
        == "no text to check: the reply has no output text"
    )
    assert check_output(Answer(tool_calls=calls), expected) == OutputCheck(None, None)


def test_nothing_asked_nothing_checked() -> None:
    answer, reason = answer_row(
        read_request(chat_request()), True, msgspec.Raw(chat_body({"content": "not json"}))
    )

    assert (answer.parsed, reason) == (None, None)
    assert check_output(text_answer("not json"), None) == OutputCheck(None, None)


def test_reasons_are_bounded() -> None:
    schema = {"type": "object", "properties": {"note": {"type": "string", "maxLength": 3}}}
    long_note = "x" * 5000

    _, reason = check_output(text_answer(encode({"note": long_note}).decode()), None, user_schema=schema)

    assert reason is not None
    assert reason.startswith("does not match the schema: $.note: ")
    assert len(reason) <= REASON_LIMIT


def test_user_schema_replaces_the_request_schema() -> None:
    strict_customer = {
        "type": "object",
        "properties": {"customer": {"const": "Grace"}},
        "required": ["customer"],
    }
    request = chat_schema_request()

    answer, reason = answer_row(
        request, True, msgspec.Raw(chat_body({"content": VALID_ORDER})), user_schema=strict_customer
    )

    assert reason == "does not match the schema: $.customer: 'Grace' was expected"
    assert answer.parsed is None


def test_user_schema_without_a_request() -> None:
    _, reason = answer_row(
        None, True, msgspec.Raw(chat_body({"content": VALID_ORDER})), user_schema=ORDER_SCHEMA
    )

    assert reason is None


@pytest.mark.parametrize(
    ("user_schema", "error", "message"),
    [
        ({"type": "no-such-type"}, ValueError, "not a valid JSON Schema: 'no-such-type' is not valid"),
        (
            {"properties": {"a": {"minimum": "one"}}},
            ValueError,
            "not a valid JSON Schema: 'one' is not of type",
        ),
        (int, TypeError, "JSON Schema dict or a Pydantic model class"),
        ("order.json", TypeError, "JSON Schema dict or a Pydantic model class"),
    ],
)
def test_a_bad_user_schema_fails_at_once(user_schema: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        check_user_schema(user_schema)
    with pytest.raises(error, match=message):
        check_output(text_answer("{}"), None, user_schema=user_schema)


def test_good_user_schemas_pass_the_early_check() -> None:
    check_user_schema(ORDER_SCHEMA)
    check_user_schema(Order)


class Item(pydantic.BaseModel):
    sku: str
    qty: int


class Order(pydantic.BaseModel):
    customer: str
    items: list[Item]
    due: datetime.date = datetime.date(2026, 1, 31)

    @pydantic.field_validator("customer")
    @classmethod
    def known_customer(cls, value: str) -> str:
        if value not in {"Ada", "Grace"}:
            raise ValueError(f"unknown customer {value!r}")
        return value


def test_pydantic_model_validates_and_dumps_json_values() -> None:
    answer, reason = answer_row(
        None, True, msgspec.Raw(chat_body({"content": VALID_ORDER})), user_schema=Order
    )

    assert reason is None
    assert answer.parsed == {
        "customer": "Ada",
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
        "due": "2026-01-31",  # JSON-native, so the row stays encodable
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            '{"customer": "Eve", "items": []}',
            "does not match the schema: $.customer: Value error, unknown customer 'Eve'",
        ),
        (
            '{"customer": "Ada", "items": [{"sku": "A-1"}]}',
            "does not match the schema: $.items[0].qty: Field required",
        ),
        ('{"customer": "Ada", "items": [}', "does not parse as JSON: Invalid JSON"),
    ],
)
def test_pydantic_model_reasons(text: str, reason: str) -> None:
    _, got = answer_row(
        chat_schema_request(), True, msgspec.Raw(chat_body({"content": text})), user_schema=Order
    )

    assert got is not None
    assert got.startswith(reason)


def test_one_validator_per_distinct_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    answers._schema_checker.cache_clear()
    built: list[Any] = []

    class Recording(answers._JsonSchemaChecker):
        def __init__(self, validator: Any) -> None:
            built.append(validator.schema)
            super().__init__(validator)

    monkeypatch.setattr(answers, "_JsonSchemaChecker", Recording)
    other = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    requests = [chat_schema_request() for _ in range(50)] + [chat_schema_request(other) for _ in range(50)]
    reasons = [answer_row(r, True, msgspec.Raw(chat_body({"content": VALID_ORDER})))[1] for r in requests]

    assert built == [ORDER_SCHEMA, other]
    assert reasons.count(None) == 50


def test_a_schema_with_an_unresolvable_ref_is_parsed_only(caplog: pytest.LogCaptureFixture) -> None:
    answers._schema_checker.cache_clear()  # a checker left by an earlier run would not warn again
    request = chat_schema_request({"$ref": "https://schemas.example/order.json"})
    body = msgspec.Raw(chat_body({"content": VALID_ORDER}))

    with caplog.at_level(logging.WARNING, logger="airflow_provider_batch.answers"):
        results = [answer_row(request, True, body) for _ in range(3)]
        _, not_json = answer_row(request, True, msgspec.Raw(chat_body({"content": "nope"})))

    assert [reason for _, reason in results] == [None, None, None]
    assert results[0][0].parsed == msgspec.json.decode(VALID_ORDER)
    assert not_json is not None
    assert not_json.startswith("does not parse as JSON")
    assert len([r for r in caplog.records if "cannot be checked" in r.message]) == 1


# Rows -------------------------------------------------------------------------------------------------------


def test_answer_encodes_as_flat_row_columns() -> None:
    answer = Answer(text="hi", tool_calls=[ToolCall(id="c", name="f", arguments="{}")], input_tokens=3)

    assert msgspec.to_builtins(answer) == {
        "text": "hi",
        "refusal": None,
        "finish_reason": None,
        "tool_calls": [{"id": "c", "name": "f", "arguments": "{}"}],
        "parsed": None,
        "embedding": None,
        "embeddings": None,
        "flagged": None,
        "categories": None,
        "images": None,
        "input_tokens": 3,
        "output_tokens": None,
        "cached_tokens": None,
        "reasoning_tokens": None,
    }


def test_invalid_output_code() -> None:
    assert INVALID_OUTPUT == "invalid_output"


# The fast path beside jsonschema ----------------------------------------------------------------------------

NODE_SCHEMA: dict[str, Any] = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2, "maxLength": 5},
                "weight": {"type": ["number", "null"], "minimum": 0, "exclusiveMaximum": 10},
                "kind": {"enum": ["leaf", 1, True, None]},
                "flag": {"const": False},
                "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 3},
                "meta": {
                    "anyOf": [
                        {"type": "integer"},
                        {"type": "object", "additionalProperties": {"type": "string"}},
                    ]
                },
            },
            "required": ["name"],
            "additionalProperties": False,
        }
    },
    "allOf": [{"$ref": "#/$defs/node"}, {"required": ["kind"]}],
}
FAST_SCHEMAS: list[Any] = [
    ORDER_SCHEMA,
    NODE_SCHEMA,
    {"type": "integer", "minimum": 1},
    {"items": {"type": "string"}},
    True,
]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """JSON values near the schemas' edges: names and numbers they mention, JSON-type look-alikes (1, 1.0,
    True), nesting."""
    choice = rng.randrange(10 if depth < 3 else 6)
    if choice == 0:
        return rng.choice([None, True, False])
    if choice == 1:
        return rng.choice([0, 1, 2, -1, 10, 9])
    if choice == 2:
        return rng.choice([0.0, 1.0, 2.0, 9.5, 10.0, -0.5])
    if choice in (3, 4, 5):
        return rng.choice(["", "a", "ab", "abcde", "abcdef", "Ab", "leaf", "A-1", "Ada"])
    if choice in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["name", "weight", "kind", "flag", "children", "meta", "customer", "items", "sku", "qty", "x"]
    return {key: random_value(rng, depth + 1) for key in rng.sample(keys, rng.randrange(6))}


def test_fast_path_never_accepts_what_jsonschema_rejects() -> None:
    rng = random.Random(1)
    agreed = 0
    for schema in FAST_SCHEMAS:
        fast = answers._fast_validator(schema)
        assert fast is not None
        validator = jsonschema.Draft202012Validator(schema)
        for _ in range(3000):
            value = random_value(rng)
            if fast(value):
                assert validator.is_valid(value), (schema, value)
                agreed += 1
    assert agreed > 1000  # the fast path does answer, not only decline


@pytest.mark.parametrize(
    ("schema", "value", "fast_says"),
    [
        (NODE_SCHEMA, {"name": "ab", "kind": "leaf", "children": [{"name": "cd", "kind": None}]}, True),
        (NODE_SCHEMA, {"name": "ab", "kind": 1, "meta": {"k": "v"}, "weight": None}, True),
        (NODE_SCHEMA, {"name": "ab", "kind": True, "flag": False}, True),
        (NODE_SCHEMA, {"name": "ab"}, False),  # allOf: kind required
        (NODE_SCHEMA, {"name": "ab", "kind": "leaf", "children": [{"name": "X", "kind": 1}]}, False),
        (NODE_SCHEMA, {"name": "ab", "kind": 1.0}, False),  # jsonschema accepts 1.0 == 1: it decides
        (NODE_SCHEMA, {"name": "ab", "kind": "leaf", "flag": 0}, False),  # 0 is not false in JSON
        (NODE_SCHEMA, {"name": "ab", "kind": "leaf", "weight": 10}, False),
        ({"type": "integer"}, 2.0, False),  # valid for jsonschema; the fast path leaves it to it
        ({"type": "integer"}, True, False),
        ({"type": "number"}, False, False),
    ],
)
def test_fast_path_cases(schema: Any, value: Any, fast_says: bool) -> None:
    fast = answers._fast_validator(schema)

    assert fast is not None
    assert fast(value) is fast_says
    if fast_says:
        assert jsonschema.Draft202012Validator(schema).is_valid(value)


@pytest.mark.parametrize(
    "schema",
    [
        {"oneOf": [{"type": "string"}, {"type": "integer"}]},
        {"not": {"type": "string"}},
        {"$id": "https://example.com/s", "type": "object"},
        {"type": "object", "patternProperties": {"^x": {"type": "string"}}},
        {"type": "array", "items": [{"type": "string"}]},
        {"type": "number", "exclusiveMinimum": True, "minimum": 0},
        {"$ref": "https://example.com/other.json"},
        {"$ref": "#/$defs/missing"},
        {"type": "number", "multipleOf": 0.1},
        {"enum": [{"a": 1}]},
        {"type": "string", "pattern": "("},
        {"type": "any"},
    ],
)
def test_fast_path_declines_what_it_does_not_compile_exactly(schema: Any) -> None:
    assert answers._fast_validator(schema) is None


def test_valid_output_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_expected(errors: Any) -> Any:
        raise AssertionError("jsonschema was asked about a valid output")

    answers._schema_checker.cache_clear()
    request = chat_schema_request()
    monkeypatch.setattr(answers, "best_match", not_expected)

    answer, reason = answer_row(request, True, msgspec.Raw(chat_body({"content": VALID_ORDER})))

    assert reason is None
    assert answer.parsed is not None


def test_schema_outside_the_fast_path_is_still_checked() -> None:
    schema = {"oneOf": [{"type": "object", "required": ["a"]}, {"type": "object", "required": ["b"]}]}
    request = chat_schema_request(schema)

    assert answer_row(request, True, msgspec.Raw(chat_body({"content": '{"a": 1}'})))[1] is None
    _, reason = answer_row(request, True, msgspec.Raw(chat_body({"content": '{"a": 1, "b": 2}'})))
    assert reason is not None
    assert reason.startswith("does not match the schema: $: ")
