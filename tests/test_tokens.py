"""Token estimates: which encoding a model uses, the counting rules per endpoint against the tokenizer's
exact counts, the output bounds, the tally of a file, and that nothing touches the network."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import splintr

from airflow_provider_batch import tokens
from airflow_provider_batch.requests import _Checker
from airflow_provider_batch.tokens import (
    CL100K_BASE,
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    IMAGE_PART_TOKENS,
    O200K_BASE,
    Encoding,
    ModelTokens,
    RequestTokens,
    TokenTally,
    count_tokens,
    counter,
    encoding_for_model,
    estimate_request,
)

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
MODERATIONS = "/v1/moderations"

TEXTS = [
    "",
    "Hello, world!",
    "I'M sure they've done it; it'S fine.",
    "def f(x):\n    return x ** 2  # square\n",
    '{"key": [1, 2.5, null, "日本語"], "emoji": "👨\u200d👩\u200d👧\u200d👦"}',
    "東京都は日本の首都です。한국어 문장.",
    "e\u0301te\u0301 — Ελληνικά, Привет",
    "1234567890 3.14159 +1 (555) 123-4567",
    "   \t\t\n\n\r\n   trailing   ",
    "a" * 5_000,
    "🙂" * 300,
    "text <|endoftext|> more <|endofprompt|> and <|im_start|>",
    "<|",
]


@pytest.fixture(scope="module")
def encode() -> dict[str, Any]:
    """The tokenizer itself, loaded apart from the module under test: ``encode_ordinary`` per encoding."""
    return {
        name: splintr.Tokenizer.from_pretrained(name).encode_ordinary for name in (O200K_BASE, CL100K_BASE)
    }


def cookbook(encode: Any, messages: list[dict[str, str]]) -> int:
    """``num_tokens_from_messages`` from the OpenAI cookbook, as written there, for string-valued messages."""
    num_tokens = 0
    for message in messages:
        num_tokens += 3
        for key, value in message.items():
            num_tokens += len(encode(value))
            if key == "name":
                num_tokens += 1
    num_tokens += 3
    return num_tokens


# Encodings ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", O200K_BASE),
        ("gpt-4o-mini", O200K_BASE),
        ("gpt-4o-2024-08-06", O200K_BASE),
        ("chatgpt-4o-latest", O200K_BASE),
        ("gpt-4.1", O200K_BASE),
        ("gpt-4.1-nano", O200K_BASE),
        ("gpt-4.5-preview", O200K_BASE),
        ("gpt-5", O200K_BASE),
        ("gpt-5-mini", O200K_BASE),
        ("gpt-5.1", O200K_BASE),
        ("o1", O200K_BASE),
        ("o1-mini", O200K_BASE),
        ("o3", O200K_BASE),
        ("o3-pro", O200K_BASE),
        ("o4-mini", O200K_BASE),
        ("ft:gpt-4o-mini:acme::abc123", O200K_BASE),
        ("gpt-4", CL100K_BASE),
        ("gpt-4-turbo", CL100K_BASE),
        ("gpt-4-0613", CL100K_BASE),
        ("gpt-3.5-turbo", CL100K_BASE),
        ("gpt-35-turbo", CL100K_BASE),
        ("ft:gpt-3.5-turbo:acme::abc123", CL100K_BASE),
        ("text-embedding-3-small", CL100K_BASE),
        ("text-embedding-3-large", CL100K_BASE),
        ("text-embedding-ada-002", CL100K_BASE),
        ("davinci-002", CL100K_BASE),
    ],
)
def test_known_models_use_their_encoding(model: str, encoding: str) -> None:
    assert encoding_for_model(model) == Encoding(encoding, known=True)


@pytest.mark.parametrize(
    "model", ["my-azure-deployment", "llama-3-70b", "omni-moderation-latest", "", None, 42]
)
def test_unknown_models_are_counted_with_o200k_base_and_marked_approximate(model: Any) -> None:
    assert encoding_for_model(model) == Encoding(O200K_BASE, known=False)
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}]}
    assert estimate_request(CHAT, body) == RequestTokens(8, None, approximate=True)


@pytest.mark.parametrize("encoding", [O200K_BASE, CL100K_BASE])
def test_counts_are_the_tokenizers_ordinary_counts(encode: dict[str, Any], encoding: str) -> None:
    count = counter(encoding)
    for text in TEXTS:
        assert count(text) == len(encode[encoding](text)), text[:40]
        assert count(text) == len(encode[encoding](text)), "the memo returns the same count"


def test_special_token_spellings_count_as_ordinary_text() -> None:
    assert count_tokens("<|endoftext|>", "gpt-4o") == 7
    assert count_tokens("<|endoftext|>", "gpt-4") == 7


def test_unsupported_encodings_are_refused() -> None:
    with pytest.raises(ValueError, match="o200k_base"):
        counter("p50k_base")


def test_the_memo_starts_over_past_its_size(monkeypatch: pytest.MonkeyPatch, encode: dict[str, Any]) -> None:
    monkeypatch.setattr(tokens, "MEMO_CHARS", 10)
    count = tokens._Counter(O200K_BASE)
    for text in TEXTS * 2:
        assert count(text) == len(encode[O200K_BASE](text))
    assert count._held <= 10 + max(map(len, TEXTS))


# Chat completions ----------------------------------------------------------------------------------------

CHAT_CASES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "You answer in one short paragraph."},
        {"role": "user", "content": TEXTS[2]},
    ],
    [
        {"role": "system", "content": TEXTS[5]},
        {"role": "user", "name": "alice", "content": TEXTS[3]},
        {"role": "assistant", "content": TEXTS[4]},
        {"role": "user", "name": "bob_2", "content": TEXTS[11]},
    ],
    [{"role": "developer", "content": TEXTS[8]}, {"role": "user", "content": TEXTS[9]}],
    [{"role": "tool", "tool_call_id": "call_abc123", "content": TEXTS[7]}],
    [{"role": "user", "content": ""}],
]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4"])
@pytest.mark.parametrize("messages", CHAT_CASES)
def test_chat_messages_count_as_the_cookbook_counts(
    encode: dict[str, Any], model: str, messages: list[dict[str, str]]
) -> None:
    expected = cookbook(encode[encoding_for_model(model).name], messages)
    assert estimate_request(CHAT, {"model": model, "messages": messages}) == RequestTokens(expected, None)


def test_each_message_costs_three_tokens_a_name_one_more_and_the_reply_three() -> None:
    def chat(*messages: dict[str, str]) -> int:
        return estimate_request(CHAT, {"model": "gpt-4o", "messages": list(messages)}).input

    # "user" and "Hello" are one token each in o200k_base.
    assert chat() == 3
    assert chat({"role": "user", "content": "Hello"}) == 3 + 1 + 1 + 3
    assert chat({"role": "user", "content": "Hello"}, {"role": "user", "content": "Hello"}) == 3 + 2 * 5
    assert chat({"role": "user", "content": "Hello", "name": "Hello"}) == 8 + 1 + 1


def test_chat_content_parts_count_their_text_and_bound_images(encode: dict[str, Any]) -> None:
    text = [{"type": "text", "text": TEXTS[2]}, {"type": "text", "text": TEXTS[5]}]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
    expected = 3 + 1 + len(encode[O200K_BASE](TEXTS[2])) + len(encode[O200K_BASE](TEXTS[5])) + 3
    assert estimate_request(CHAT, body) == RequestTokens(expected, None)

    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "high"}}
    body["messages"] = [{"role": "user", "content": [*text, image, image]}]
    assert estimate_request(CHAT, body) == RequestTokens(
        expected + 2 * IMAGE_PART_TOKENS, None, approximate=True
    )

    body["messages"] = [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAA"}}]}
    ]
    assert estimate_request(CHAT, body) == RequestTokens(3 + 1 + 3, None, approximate=True)


def test_tools_and_schemas_count_as_their_json_and_are_approximate(encode: dict[str, Any]) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    schema = {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
    body = {
        "model": "gpt-4o",
        "messages": messages,
        "tools": tools,
        "response_format": {"type": "json_schema", "json_schema": schema},
    }
    compact = [json.dumps(value, separators=(",", ":"), ensure_ascii=False) for value in (tools, schema)]
    expected = 8 + sum(len(encode[O200K_BASE](text)) for text in compact)
    assert estimate_request(CHAT, body) == RequestTokens(expected, None, approximate=True)

    plain = {"model": "gpt-4o", "messages": messages, "response_format": {"type": "json_object"}}
    assert estimate_request(CHAT, plain) == RequestTokens(8, None)


def test_tool_calls_in_assistant_messages_count_as_their_json() -> None:
    call = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]
    body = {"model": "gpt-4o", "messages": [{"role": "assistant", "content": None, "tool_calls": call}]}
    estimate = estimate_request(CHAT, body)
    assert estimate.approximate
    assert estimate.input == 3 + 1 + count_tokens(json.dumps(call, separators=(",", ":")), "gpt-4o") + 3


@pytest.mark.parametrize(
    ("fields", "max_output"),
    [
        ({}, None),
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 300}, 300),
        ({"max_completion_tokens": 300, "max_tokens": 100}, 300),
        ({"max_tokens": 100, "n": 3}, 300),
        ({"max_tokens": 0}, 0),
        ({"max_tokens": True}, None),
        ({"max_tokens": -1}, None),
        ({"max_tokens": "100"}, None),
        ({"max_tokens": 100, "n": 0}, 100),
    ],
)
def test_chat_output_is_bounded_by_its_cap_times_n(fields: dict[str, Any], max_output: int | None) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello"}], **fields}
    assert estimate_request(CHAT, body) == RequestTokens(8, max_output)


def test_malformed_messages_count_nothing_and_are_approximate() -> None:
    assert estimate_request(CHAT, {"model": "gpt-4o", "messages": "Hello"}) == RequestTokens(3, None, True)
    assert estimate_request(CHAT, {"model": "gpt-4o", "messages": ["Hello"]}) == RequestTokens(3, None, True)
    assert estimate_request(CHAT, {"model": "gpt-4o", "messages": [{"content": 5}]}) == RequestTokens(
        6, None, True
    )


# Responses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", TEXTS[1:6])
def test_a_responses_string_input_is_one_user_message(encode: dict[str, Any], text: str) -> None:
    expected = cookbook(encode[O200K_BASE], [{"role": "user", "content": text}])
    body = {"model": "gpt-5-mini", "input": text, "max_output_tokens": 500}
    assert estimate_request(RESPONSES, body) == RequestTokens(expected, 500)


def test_responses_items_and_instructions_count_as_messages(encode: dict[str, Any]) -> None:
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": TEXTS[2]}]},
        {"role": "assistant", "content": TEXTS[5]},
        {"type": "message", "role": "user", "content": TEXTS[4]},
    ]
    body = {"model": "o4-mini", "instructions": TEXTS[3], "input": items}
    messages = [
        {"role": "developer", "content": TEXTS[3]},
        {"role": "user", "content": TEXTS[2]},
        {"role": "assistant", "content": TEXTS[5]},
        {"role": "user", "content": TEXTS[4]},
    ]
    assert estimate_request(RESPONSES, body) == RequestTokens(cookbook(encode[O200K_BASE], messages), None)


def test_responses_images_files_and_tool_outputs() -> None:
    image = {"type": "input_image", "image_url": "https://example.com/a.png"}
    pdf = {"type": "input_file", "file_id": "file-abc"}
    content = [{"type": "input_text", "text": "Hello"}, image, pdf]
    body = {"model": "gpt-4.1", "input": [{"role": "user", "content": content}]}
    assert estimate_request(RESPONSES, body) == RequestTokens(8 + IMAGE_PART_TOKENS, None, approximate=True)

    output = {"type": "function_call_output", "call_id": "call_1", "output": "Hello"}
    estimate = estimate_request(RESPONSES, {"model": "gpt-4.1", "input": [output]})
    assert estimate == RequestTokens(3 + count_tokens("call_1", "gpt-4.1") + 1 + 3, None)


# Completions, embeddings, moderations ------------------------------------------------------------------


def test_completion_prompts_and_their_output_bound(encode: dict[str, Any]) -> None:
    one = len(encode[CL100K_BASE](TEXTS[2]))
    two = len(encode[CL100K_BASE](TEXTS[5]))
    model = "davinci-002"
    assert estimate_request(COMPLETIONS, {"model": model, "prompt": TEXTS[2]}) == RequestTokens(
        one, COMPLETIONS_DEFAULT_MAX_TOKENS
    )
    body = {"model": model, "prompt": [TEXTS[2], TEXTS[5]], "max_tokens": 50, "n": 2}
    assert estimate_request(COMPLETIONS, body) == RequestTokens(one + two, 50 * 2 * 2)
    body = {"model": model, "prompt": [1, 2, 3, 4], "max_tokens": 10, "best_of": 3}
    assert estimate_request(COMPLETIONS, body) == RequestTokens(4, 30)
    body = {"model": model, "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 10}
    assert estimate_request(COMPLETIONS, body) == RequestTokens(5, 20)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TEXTS[2], [TEXTS[2]]),
        ([TEXTS[1], TEXTS[5], TEXTS[6]], [TEXTS[1], TEXTS[5], TEXTS[6]]),
        ([101, 102, 103], 3),
        ([[101, 102], [103], [104, 105, 106]], 6),
        ([], 0),
    ],
)
def test_embedding_inputs_count_their_tokens_and_produce_nothing(
    encode: dict[str, Any], value: object, expected: list[str] | int
) -> None:
    count = (
        expected if isinstance(expected, int) else sum(len(encode[CL100K_BASE](text)) for text in expected)
    )
    body = {"model": "text-embedding-3-small", "input": value}
    assert estimate_request(EMBEDDINGS, body) == RequestTokens(count, 0)


def test_moderation_inputs() -> None:
    texts = {"model": "omni-moderation-latest", "input": ["Hello", "Hello"]}
    assert estimate_request(MODERATIONS, texts) == RequestTokens(2, 0, approximate=True)
    parts = [
        {"type": "text", "text": "Hello"},
        {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
    ]
    assert estimate_request(MODERATIONS, {"input": parts}) == RequestTokens(1 + IMAGE_PART_TOKENS, 0, True)


def test_image_endpoints_are_not_counted() -> None:
    body = {"model": "gpt-image-1", "prompt": "A cat"}
    assert estimate_request("/v1/images/generations", body) == RequestTokens(0, None, approximate=True)


# The tally ----------------------------------------------------------------------------------------


def corpus() -> list[tuple[str, dict[str, Any]]]:
    """Request bodies of every counted endpoint, plain values."""
    bodies: list[tuple[str, dict[str, Any]]] = []
    for index, messages in enumerate(CHAT_CASES):
        bodies.append(
            (CHAT, {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 10 * index or None})
        )
    for text in TEXTS:
        bodies.append((RESPONSES, {"model": "gpt-5", "input": text, "instructions": "Be brief."}))
        bodies.append((COMPLETIONS, {"model": "davinci-002", "prompt": text, "max_tokens": 7}))
        bodies.append((EMBEDDINGS, {"model": "text-embedding-3-large", "input": [text, text[:10]]}))
    return bodies


@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES, COMPLETIONS, EMBEDDINGS])
def test_a_line_and_its_body_give_the_same_estimate(endpoint: str) -> None:
    for _, body in (pair for pair in corpus() if pair[0] == endpoint):
        line = json.dumps({"custom_id": "a", "method": "POST", "url": endpoint, "body": body}).encode()
        from_line, from_body = TokenTally(endpoint), TokenTally(endpoint)
        assert from_line.add_line(line) == from_body.add(body) == estimate_request(endpoint, body)
        assert from_line.models == from_body.models


def test_the_tally_adds_up_per_model() -> None:
    tally = TokenTally(CHAT)
    hello = [{"role": "user", "content": "Hello"}]
    tally.add({"model": "gpt-4o", "messages": hello, "max_tokens": 100})
    tally.add({"model": "gpt-4o", "messages": hello * 2})
    tally.add({"model": "gpt-4", "messages": hello, "max_completion_tokens": 5, "n": 2})
    tally.add({"model": "local-model", "messages": hello, "max_tokens": 1})
    tally.add({"messages": hello})
    assert tally.add("not a body") is None
    assert tally.models == {
        "gpt-4o": ModelTokens(requests=2, input=8 + 13, max_output=100, uncapped=1, approximate=0),
        "gpt-4": ModelTokens(requests=1, input=8, max_output=10, uncapped=0, approximate=0),
        "local-model": ModelTokens(requests=1, input=8, max_output=1, uncapped=0, approximate=1),
        None: ModelTokens(requests=1, input=8, max_output=0, uncapped=1, approximate=1),
    }
    assert tally.total == ModelTokens(requests=5, input=45, max_output=111, uncapped=2, approximate=2)


@pytest.mark.parametrize(
    "line",
    [b"not json", b"[1, 2]", b'{"custom_id": "a"}', b'{"body": "text"}', b'{"body": null}', b'{"body": {'],
)
def test_lines_without_an_object_body_are_not_counted(line: bytes) -> None:
    tally = TokenTally(CHAT)
    assert tally.add_line(line) is None
    assert tally.models == {}


def test_a_line_with_unknown_fields_of_any_type_is_counted() -> None:
    line = {"custom_id": "a", "method": "POST", "url": CHAT, "extra": [1, {"x": None}]}
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "Hello"}],
        "temperature": 0.2,
        "seed": 1,
    }
    tally = TokenTally(CHAT)
    assert tally.add_line(json.dumps({**line, "body": body}).encode()) == RequestTokens(8, None)


# No network ----------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every connection and name lookup from Python fails, and the encoders load again under that rule."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[:2]!r}")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    counter.cache_clear()
    yield
    counter.cache_clear()


def test_encoders_load_and_count_without_the_network(no_network: None, encode: dict[str, Any]) -> None:
    for body, model in (
        ({"role": "user", "content": TEXTS[5]}, "gpt-4o"),
        ({"role": "user", "content": "x"}, "gpt-4"),
    ):
        estimate = estimate_request(CHAT, {"model": model, "messages": [body]})
        assert estimate.input == cookbook(encode[encoding_for_model(model).name], [body])


def test_a_process_without_any_network_counts(tmp_path: Any) -> None:
    """In a fresh process in an empty network namespace (no interface, not even loopback), with empty
    home and cache directories and proxies pointing nowhere: nothing can be fetched, and counting works."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-n", "true"], check=False).returncode:
        pytest.skip("needs unshare -n (root or user namespaces) to take the network away")
    script = (
        "from airflow_provider_batch.tokens import count_tokens\n"
        "text = 'Hello, world! 日本語 🙂'\n"
        "print(count_tokens(text, 'gpt-4o'), count_tokens(text, 'gpt-4'))\n"
    )
    env = {
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "tiktoken"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PYTHONPATH": ":".join(sys.path),
    }
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["7", "9"]


def test_importing_the_module_loads_no_tokenizer() -> None:
    script = "import sys, airflow_provider_batch.tokens; print('splintr' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# Sampling -----------------------------------------------------------------------------------------


def chat_lines(count: int) -> list[bytes]:
    """Chat request lines of varied lengths and scripts, with and without an output cap."""
    lines = []
    for index in range(count):
        text = TEXTS[1 + index % 8] * (1 + index % 5)
        body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}
        if index % 3:
            body["max_tokens"] = index
        lines.append(json.dumps({"custom_id": str(index), "body": body}, ensure_ascii=False).encode())
    return lines


def test_sampling_every_line_is_the_exact_count() -> None:
    exact, sampled = TokenTally(CHAT), TokenTally(CHAT, sample_every=1)
    for line in chat_lines(50):
        exact.add_line(line)
        sampled.add_line(line)
    assert sampled.models == exact.models
    assert exact.total.extrapolated == 0


def test_sampled_counts_extrapolate_input_and_keep_output_bounds_exact() -> None:
    lines = chat_lines(300)
    exact, sampled = TokenTally(CHAT), TokenTally(CHAT, sample_every=10)
    results = [sampled.add_line(line) for line in lines]
    for line in lines:
        exact.add_line(line)
    counted = [index for index, result in enumerate(results) if result is not None]
    assert counted[0] == 0
    assert 15 <= len(counted) <= 45
    truth, estimate = exact.models["gpt-4o"], sampled.models["gpt-4o"]
    assert (estimate.requests, estimate.extrapolated) == (300, 300 - len(counted))
    assert (estimate.max_output, estimate.uncapped) == (truth.max_output, truth.uncapped)
    assert abs(estimate.input - truth.input) / truth.input < 0.15


def test_sampled_completions_bound_every_prompt_of_a_skipped_line() -> None:
    line = json.dumps({"body": {"model": "davinci-002", "prompt": ["a", "b", "c"], "max_tokens": 5}}).encode()
    sampled = TokenTally(COMPLETIONS, sample_every=1_000_000)
    assert sampled.add_line(line) is not None  # the first line is counted
    assert sampled.add_line(line) is None  # the next ones, almost surely not
    assert sampled.models["davinci-002"] == ModelTokens(
        requests=2, input=6, max_output=30, uncapped=0, approximate=0, extrapolated=1
    )


def test_skipped_lines_without_an_object_body_are_not_counted() -> None:
    sampled = TokenTally(CHAT, sample_every=1_000_000)
    sampled.add_line(b'{"body": {"model": "gpt-4o", "messages": []}}')
    for line in (b"not json", b'{"body": 5}', b'{"custom_id": "a"}'):
        sampled.add_line(b'{"body": {"model": "gpt-4o", "messages": []}}')
        sampled.add_line(line)
    assert sampled.total == ModelTokens(requests=4, input=12, uncapped=4, extrapolated=3)


def request_lines(endpoint: str, bodies: list[dict[str, Any]]) -> list[bytes]:
    """Complete request lines, in the shape the validator's typed decode reads."""
    return [
        json.dumps(
            {"custom_id": str(index), "method": "POST", "url": endpoint, "body": body}, ensure_ascii=False
        ).encode()
        for index, body in enumerate(bodies)
    ]


def varied_bodies(endpoint: str) -> list[dict[str, Any]]:
    """Bodies of one model with every kind of output cap, including ones of the wrong type."""
    caps: list[dict[str, Any]] = [
        {},
        {"max_tokens": 7},
        {"max_completion_tokens": 9, "max_tokens": 3, "n": 2},
        {"max_output_tokens": 11},
        {"max_tokens": "5"},
        {"max_tokens": True, "n": 0},
        {"max_tokens": 4, "best_of": 3},
        {"max_tokens": -1, "n": [2]},
    ]
    bodies = []
    for index in range(240):
        text = TEXTS[1 + index % 8] * (1 + index % 3)
        body: dict[str, Any] = {"model": "gpt-4o", **caps[index % len(caps)]}
        if endpoint == CHAT:
            body["messages"] = [{"role": "user", "content": text}]
        elif endpoint == RESPONSES:
            body["input"] = text
        elif endpoint == COMPLETIONS:
            body["prompt"] = [text, "b"] if index % 2 else text if index % 3 else [1, 2, 3]
        else:
            body["input"] = [text, text[:5]]
        bodies.append(body)
    return bodies


@pytest.mark.parametrize("sample_every", [1, 4])
@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES, COMPLETIONS, EMBEDDINGS])
def test_the_validator_hands_the_tally_what_its_decode_read(endpoint: str, sample_every: int) -> None:
    """Fed by the validator, which passes the model and caps it decoded, a tally gives what it gives from
    the raw lines alone, line by line and in total: the same lines counted, the same exact output bounds."""
    lines = request_lines(endpoint, varied_bodies(endpoint))
    alone, fed = (
        TokenTally(endpoint, sample_every=sample_every),
        TokenTally(endpoint, sample_every=sample_every),
    )
    checker = _Checker(endpoint, 20, tokens=fed)
    for number, line in enumerate(lines, start=1):
        expected = alone.add_line(line)
        checker.check_line(number, line)
        assert checker.line_tokens == expected
    assert checker.finish(0).valid
    assert fed.models == alone.models
    if sample_every > 1:
        assert 0 < fed.total.extrapolated < len(lines)


def test_a_skipped_line_bounds_its_output_from_the_validators_fields() -> None:
    lines = request_lines(
        COMPLETIONS, [{"model": "davinci-002", "prompt": ["a", "b", "c"], "max_tokens": 5}] * 2
    )
    tally = TokenTally(COMPLETIONS, sample_every=1_000_000)
    checker = _Checker(COMPLETIONS, 20, tokens=tally)
    checker.check_line(1, lines[0])
    assert checker.line_tokens is not None  # the first line is counted
    checker.check_line(2, lines[1])
    assert checker.line_tokens is None  # the next one, almost surely not
    assert tally.models["davinci-002"] == ModelTokens(
        requests=2, input=6, max_output=30, uncapped=0, approximate=0, extrapolated=1
    )


def test_sample_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TokenTally(CHAT, sample_every=0)
