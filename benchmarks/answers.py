"""Answer extraction per result row (``airflow_provider_batch.answers``): microseconds per row.

A merge writes about a million rows in some 30 s, i.e. ~30 µs per row for everything; whatever
``answer_row`` costs is added to each row. Measured here, in one process, best of ``--repeat`` timings of
``--rows`` calls each (the best, because the figure wanted is the code's cost, not the machine's noise):

* a 4 KB chat body (a ~3.3 KB answer): with no schema asked, with ``json_object``, with a JSON Schema
  (compiled once; a valid answer is confirmed by the compiled fast path), with a Pydantic model as the
  caller's schema; and, for scale, what ``jsonschema`` alone takes to validate that answer;
* a 1536-dimension embedding, as a JSON array of floats and as ``encoding_format: "base64"``;
* ``read_request`` on 4 KB chat request lines without and with a schema (the row writer reads every
  input line anyway);

next to two references: the usage-only decode results.py already does per successful row, and a bare
``msgspec.json.decode`` of the whole body into Python objects.

    .venv/bin/python benchmarks/answers.py [--rows 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import base64
import random
import struct
import time
from collections.abc import Callable
from typing import Any

import jsonschema
import msgspec
import pydantic

from airflow_provider_batch.answers import answer_row, read_request, token_counts

WORDS = ("batch", "request", "model", "token", "window", "output", "error", "retry", "airflow", "trigger")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string"},
                    "qty": {"type": "integer", "minimum": 1},
                    "note": {"type": "string"},
                },
                "required": ["sku", "qty", "note"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["summary", "items"],
    "additionalProperties": False,
}


class Item(pydantic.BaseModel):
    sku: str
    qty: int
    note: str


class Order(pydantic.BaseModel):
    summary: str
    items: list[Item]


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def structured_answer(rng: random.Random, target: int) -> str:
    """A JSON answer matching ``SCHEMA``, about ``target`` characters long."""
    order: dict[str, Any] = {"summary": words(rng, 20), "items": []}
    while len(msgspec.json.encode(order)) < target:
        order["items"].append(
            {"sku": f"SKU-{rng.randrange(10_000)}", "qty": rng.randrange(1, 9), "note": words(rng, 8)}
        )
    return msgspec.json.encode(order).decode()


def chat_body(content: str) -> msgspec.Raw:
    return msgspec.Raw(
        msgspec.json.encode(
            {
                "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
                "object": "chat.completion",
                "created": 1741570283,
                "model": "gpt-4o-mini-2024-07-18",
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": content,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 812,
                    "completion_tokens": 830,
                    "total_tokens": 1642,
                    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
                },
                "service_tier": "default",
                "system_fingerprint": "fp_f9f4fb6dbf",
            }
        )
    )


def chat_request(rng: random.Random, response_format: dict[str, Any] | None) -> bytes:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Extract the order."},
            {"role": "user", "content": words(rng, 600)},
        ],
    }
    if response_format is not None:
        body["response_format"] = response_format
    return msgspec.json.encode(
        {"custom_id": "request-000001", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def embedding_body(rng: random.Random, b64: bool) -> msgspec.Raw:
    vector = [rng.uniform(-0.1, 0.1) for _ in range(1536)]
    value: Any = (
        base64.b64encode(struct.pack("<1536f", *vector)).decode() if b64 else [round(v, 9) for v in vector]
    )
    return msgspec.Raw(
        msgspec.json.encode(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": value}],
                "model": "text-embedding-3-small",
                "usage": {"prompt_tokens": 9, "total_tokens": 9},
            }
        )
    )


def best_us_per_call(run: Callable[[], object], rows: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(rows):
            run()
        best = min(best, time.perf_counter() - started)
    return best / rows * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rng = random.Random(7)
    prose = chat_body(words(rng, 470))
    answer_text = structured_answer(rng, 3300)
    structured = chat_body(answer_text)
    plain_line = chat_request(rng, None)
    schema_line = chat_request(
        rng, {"type": "json_schema", "json_schema": {"name": "order", "strict": True, "schema": SCHEMA}}
    )
    plain = read_request(plain_line)
    with_schema = read_request(schema_line)
    with_object = read_request(chat_request(rng, {"type": "json_object"}))
    single = read_request(
        msgspec.json.encode(
            {"custom_id": "e-1", "url": "/v1/embeddings", "body": {"model": "m", "input": "x"}}
        )
    )
    validator = jsonschema.Draft202012Validator(SCHEMA)
    floats, packed = embedding_body(rng, False), embedding_body(rng, True)
    for request, body in ((with_schema, structured), (None, structured)):  # compile and check once
        _, reason = answer_row(request, True, body, user_schema=Order if request is None else None)
        assert reason is None, reason

    cases: dict[str, tuple[int, Callable[[], object]]] = {
        "chat, no schema": (len(prose), lambda: answer_row(plain, True, prose)),
        "chat, json_object": (len(structured), lambda: answer_row(with_object, True, structured)),
        "chat, JSON Schema": (len(structured), lambda: answer_row(with_schema, True, structured)),
        "chat, Pydantic model": (
            len(structured),
            lambda: answer_row(plain, True, structured, user_schema=Order),
        ),
        "chat, jsonschema alone": (
            len(structured),
            lambda: validator.is_valid(msgspec.json.decode(answer_text)),
        ),
        "embedding 1536, floats": (len(floats), lambda: answer_row(single, True, floats)),
        "embedding 1536, base64": (len(packed), lambda: answer_row(single, True, packed)),
        "read_request, no schema": (len(plain_line), lambda: read_request(plain_line)),
        "read_request, schema": (len(schema_line), lambda: read_request(schema_line)),
        "ref: usage-only decode": (len(prose), lambda: token_counts(prose)),
        "ref: bare decode, chat": (len(prose), lambda: msgspec.json.decode(prose)),
        "ref: bare decode, emb.": (len(floats), lambda: msgspec.json.decode(floats)),
    }
    print(f"best of {args.repeat} runs of {args.rows:,} rows each")
    print(f"{'case':<26}{'body bytes':>12}{'µs per row':>12}{'s per 1M rows':>15}")
    for name, (size, run) in cases.items():
        slow = name == "chat, jsonschema alone"  # a millisecond a call: fewer calls say as much
        micros = best_us_per_call(run, max(args.rows // 50, 20) if slow else args.rows, args.repeat)
        print(f"{name:<26}{size:>12,}{micros:>12.2f}{micros:>15.1f}")


if __name__ == "__main__":
    main()
