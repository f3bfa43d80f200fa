"""``airflow_provider_batch.results`` against real output and error files produced by the emulator.

Three batches run once per module: a chat batch whose lines fail with 429, 500 and 400 through the per-line
directive, a Responses batch (the other usage shape), and a chat batch expired after two lines. Their files
are downloaded the way the provider will (``with_streaming_response``), so the parser meets the server's
real line shapes, shuffled order included. Edge cases the emulator never writes (duplicates, malformed
lines) are made by editing copies of those real files.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import msgspec
import pytest
from airflow.sdk import ObjectStoragePath
from airflow.sdk.io import attach
from openai import OpenAI
from openai.types import Batch

from airflow_provider_batch.emulator.process import EmulatorProcess
from airflow_provider_batch.results import (
    BatchResult,
    IdSample,
    MalformedLine,
    TokenUsage,
    iter_results,
    summarize,
    write_joined,
)

TERMINAL = {"completed", "failed", "expired", "cancelled"}
CHAT = "/v1/chat/completions"
FAILURES = {1: {"status_code": 429}, 4: {"status_code": 500}, 7: {"status_code": 400, "code": "bad_prompt"}}
"""Chat batch lines that fail, by index, with the emulator's per-line directive."""


@dataclass(frozen=True)
class Landed:
    """A finished batch and its files on local disk."""

    batch: Batch
    input: Path
    output: Path | None
    error: Path | None
    ids: list[str]


def request_line(custom_id: str, endpoint: str, directive: dict[str, Any] | None = None) -> dict[str, Any]:
    if endpoint == CHAT:
        body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": custom_id}]}
    else:
        body = {"model": "gpt-4o-mini", "input": f"Say {custom_id}", "instructions": "Be brief."}
    if directive:
        body["emulator"] = directive
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def download(client: OpenAI, file_id: str | None, target: Path) -> Path | None:
    if not file_id:
        return None
    with client.files.with_streaming_response.content(file_id) as response, target.open("wb") as out:
        for block in response.iter_bytes():
            out.write(block)
    return target


def run_batch(
    client: OpenAI,
    directory: Path,
    requests: list[dict[str, Any]],
    endpoint: str = CHAT,
    metadata: dict[str, str] | None = None,
) -> Landed:
    directory.mkdir()
    source = write_jsonl(directory / "input.jsonl", requests)
    uploaded = client.files.create(file=source, purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h", metadata=metadata
    )
    deadline = time.monotonic() + 15
    while batch.status not in TERMINAL:
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    return Landed(
        batch=batch,
        input=source,
        output=download(client, batch.output_file_id, directory / "output.jsonl"),
        error=download(client, batch.error_file_id, directory / "error.jsonl"),
        ids=[request["custom_id"] for request in requests],
    )


@pytest.fixture(scope="module")
def client(emulator: EmulatorProcess) -> OpenAI:
    return emulator.client(max_retries=0)


@pytest.fixture(scope="module")
def chat(client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> Landed:
    requests = [request_line(f"req-{i}", CHAT, FAILURES.get(i)) for i in range(9)]
    landed = run_batch(client, tmp_path_factory.mktemp("chat") / "batch", requests)
    assert landed.batch.status == "completed"
    return landed


@pytest.fixture(scope="module")
def responses(client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> Landed:
    requests = [
        request_line(f"resp-{i}", "/v1/responses", {"status_code": 429} if i == 2 else None) for i in range(4)
    ]
    landed = run_batch(client, tmp_path_factory.mktemp("responses") / "batch", requests, "/v1/responses")
    assert landed.batch.status == "completed"
    return landed


@pytest.fixture(scope="module")
def expired(client: OpenAI, tmp_path_factory: pytest.TempPathFactory) -> Landed:
    requests = [request_line(f"exp-{i}", CHAT) for i in range(6)]
    metadata = {"emulator_expire_after_lines": "2", "emulator_line_delay": "0.01"}
    landed = run_batch(client, tmp_path_factory.mktemp("expired") / "batch", requests, metadata=metadata)
    assert landed.batch.status == "expired"
    return landed


@pytest.fixture(scope="module")
def memory_store() -> Iterator[str]:
    """fsspec's in-memory filesystem attached to Airflow's object storage under ``memory://``."""
    memory = fsspec.filesystem("memory")
    attach(protocol="memory", fs=memory)
    yield "memory://results-tests"
    if memory.exists("/results-tests"):
        memory.rm("/results-tests", recursive=True)


def results_of(path: Path | None) -> list[BatchResult]:
    assert path is not None
    parsed = list(iter_results(path))
    assert all(isinstance(item, BatchResult) for item in parsed), parsed
    return [item for item in parsed if isinstance(item, BatchResult)]


def raw_lines(path: Path | None) -> list[dict[str, Any]]:
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def joined_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_id(results: list[BatchResult]) -> dict[str, BatchResult]:
    return {result.custom_id: result for result in results}


# Per-line parsing -------------------------------------------------------------------------------------------


def test_http_failures_have_error_null_and_fail_by_status_code(chat: Landed) -> None:
    raw = raw_lines(chat.error)
    assert all(line["error"] is None and line["response"]["status_code"] >= 400 for line in raw)

    failed = by_id(results_of(chat.error))
    assert set(failed) == {"req-1", "req-4", "req-7"}
    assert {i: failed[i].status_code for i in failed} == {"req-1": 429, "req-4": 500, "req-7": 400}
    assert not any(result.ok for result in failed.values())
    assert failed["req-1"].error_code == "rate_limit_exceeded"
    assert failed["req-1"].error_message == "Emulated failure with status 429."
    assert failed["req-4"].error_code == "server_error"  # code is null in 5xx bodies: the type stands in
    assert failed["req-7"].error_code == "bad_prompt"
    assert failed["req-7"].decode_body()["error"]["type"] == "invalid_request_error"
    raw_by_id = {line["custom_id"]: line for line in raw}
    assert all(result.request_id == raw_by_id[i]["response"]["request_id"] for i, result in failed.items())


class ChatUsage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int


class ChatCompletion(msgspec.Struct):
    object: str
    usage: ChatUsage


def test_success_lines_are_ok_and_bodies_decode_lazily(chat: Landed) -> None:
    succeeded = results_of(chat.output)
    assert sorted(result.custom_id for result in succeeded) == [
        f"req-{i}" for i in range(9) if i not in FAILURES
    ]
    assert all(r.ok and r.status_code == 200 and r.error_code is r.error_message is None for r in succeeded)
    assert all(isinstance(result.body, msgspec.Raw) for result in succeeded)
    typed = succeeded[0].decode_body(ChatCompletion)
    assert typed.object == "chat.completion"
    assert typed.usage.completion_tokens > 0
    first_line = raw_lines(chat.output)[0]
    assert succeeded[0].decode_body() == first_line["response"]["body"]
    assert succeeded[0].line == 1


def test_expired_lines_carry_the_top_level_error(expired: Landed) -> None:
    failed = results_of(expired.error)
    assert sorted(result.custom_id for result in failed) == ["exp-2", "exp-3", "exp-4", "exp-5"]
    for result in failed:
        assert (result.ok, result.status_code, result.request_id) == (False, None, None)
        assert result.error_code == "batch_expired"
        assert result.error_message == (
            "This request could not be executed before the completion window expired."
        )
        assert result.decode_body() is None

    summary = summarize(output_file=expired.output, error_file=expired.error)
    counts = expired.batch.request_counts
    assert counts is not None
    assert (summary.succeeded, summary.expired, summary.failed) == (2, 4, 4)
    assert (summary.succeeded, summary.failed) == (counts.completed, counts.failed)
    assert summary.failed_by_status == {}


@pytest.mark.parametrize(
    ("change", "ok", "bucket"),
    [
        ({"error": {"code": "server_glitch", "message": "x"}}, False, ("other_errors", {"server_glitch": 1})),
        ({"status_code": 299}, True, ("succeeded", 1)),
        ({"status_code": 300}, False, ("failed_by_status", {300: 1})),
        ({"status_code": 199}, False, ("failed_by_status", {199: 1})),
        ({"response": None}, False, ("other_errors", {"no_response": 1})),
    ],
)
def test_ok_needs_a_null_error_and_a_2xx_status(
    chat: Landed, tmp_path: Path, change: dict[str, Any], ok: bool, bucket: tuple[str, Any]
) -> None:
    line = raw_lines(chat.output)[0]
    if "status_code" in change:
        line["response"]["status_code"] = change["status_code"]
    else:
        line.update(change)
    source = write_jsonl(tmp_path / "edited.jsonl", [line])

    [result] = results_of(source)
    assert result.ok is ok
    summary = summarize(output_file=source)
    assert getattr(summary, bucket[0]) == bucket[1]
    assert summary.lines == 1


# Summary ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chat", "responses", "expired"])
def test_usage_totals_equal_the_batch_usage(name: str, request: pytest.FixtureRequest) -> None:
    landed: Landed = request.getfixturevalue(name)
    summary = summarize(output_file=landed.output, error_file=landed.error)
    assert landed.batch.usage is not None
    assert summary.usage.to_dict() == landed.batch.usage.model_dump()
    assert summary.usage.input_tokens > 0
    assert summary.usage.output_tokens > 0


def test_usage_reads_both_shapes_and_their_details(chat: Landed, responses: Landed, tmp_path: Path) -> None:
    chat_line, responses_line = raw_lines(chat.output)[0], raw_lines(responses.output)[0]
    chat_line["response"]["body"]["usage"] = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 64},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    responses_line["response"]["body"]["usage"] = {
        "input_tokens": 10,
        "input_tokens_details": {"cached_tokens": 2},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 1},
        "total_tokens": 15,
    }
    embeddings_like = {**chat_line, "custom_id": "emb"}
    embeddings_like["response"] = {
        **chat_line["response"],
        "body": {"usage": {"prompt_tokens": 7, "total_tokens": 7}},
    }
    source = write_jsonl(tmp_path / "output.jsonl", [chat_line, responses_line, embeddings_like])

    usage = summarize(output_file=source).usage
    assert usage == TokenUsage(
        input_tokens=117, cached_tokens=66, output_tokens=45, reasoning_tokens=31, total_tokens=162
    )


def test_summary_counts_match_the_batch_request_counts(chat: Landed) -> None:
    summary = summarize(output_file=chat.output, error_file=chat.error, input_file=chat.input)
    counts = chat.batch.request_counts
    assert counts is not None
    assert summary.failed_by_status == {429: 1, 500: 1, 400: 1}
    assert (summary.lines, summary.succeeded, summary.failed) == (
        counts.total,
        counts.completed,
        counts.failed,
    )
    assert (summary.expired, summary.cancelled, summary.other_errors) == (0, 0, {})
    assert summary.requests == 9
    assert summary.missing == summary.unknown == summary.duplicates == IdSample()
    assert summary.malformed_total == 0


def test_summary_groups_failures_by_code_and_names_the_first_failed_ids(chat: Landed) -> None:
    summary = summarize(output_file=chat.output, error_file=chat.error, id_limit=2)
    assert sum(summary.errors_by_code.values()) == summary.failed == 3
    assert summary.errors_by_code == {"rate_limit_exceeded": 1, "server_error": 1, "bad_prompt": 1}
    failed_in_file_order = [line["custom_id"] for line in raw_lines(chat.error)]
    assert summary.failed_ids == IdSample(3, tuple(failed_in_file_order[:2]))


def test_missing_and_unknown_ids_against_the_input(chat: Landed, tmp_path: Path) -> None:
    requests = [*raw_lines(chat.input)[1:], request_line("req-extra", CHAT)]
    edited_input = write_jsonl(tmp_path / "input.jsonl", requests)

    summary = summarize(output_file=chat.output, error_file=chat.error, input_file=edited_input)
    assert summary.requests == 9
    assert summary.missing == IdSample(1, ("req-extra",))
    assert summary.unknown == IdSample(1, ("req-0",))


def test_summary_dict_is_json_and_capped(chat: Landed, tmp_path: Path) -> None:
    extra = [request_line(f"extra-{i}", CHAT) for i in range(5)]
    edited_input = write_jsonl(tmp_path / "input.jsonl", raw_lines(chat.input) + extra)

    summary = summarize(output_file=chat.output, error_file=chat.error, input_file=edited_input, id_limit=2)
    as_dict = json.loads(json.dumps(summary.to_dict()))
    assert as_dict["missing"] == {"total": 5, "ids": ["extra-0", "extra-1"]}
    assert as_dict["failed_by_status"] == {"400": 1, "429": 1, "500": 1}
    assert (as_dict["requests"], as_dict["lines"], as_dict["succeeded"], as_dict["failed"]) == (14, 9, 6, 3)
    assert chat.batch.usage is not None
    assert as_dict["usage"] == chat.batch.usage.model_dump()
    assert as_dict["malformed"] == {"total": 0, "lines": []}


def test_summary_without_input_leaves_input_fields_empty(chat: Landed) -> None:
    summary = summarize(error_file=chat.error)
    assert (summary.requests, summary.missing, summary.unknown) == (None, None, None)
    assert (summary.lines, summary.succeeded) == (3, 0)
    assert summary.to_dict()["missing"] is None


# Join -------------------------------------------------------------------------------------------------------


def test_join_follows_input_order_although_results_are_shuffled(chat: Landed, tmp_path: Path) -> None:
    file_order = [line["custom_id"] for line in raw_lines(chat.output) + raw_lines(chat.error)]
    assert file_order != chat.ids  # failures sit between successes in the input, not in the files
    assert sorted(file_order) == sorted(chat.ids)

    target = tmp_path / "joined.jsonl"
    summary = write_joined(
        input_file=chat.input, destination=target, output_file=chat.output, error_file=chat.error
    )
    rows = joined_rows(target)
    assert [row["custom_id"] for row in rows] == chat.ids
    assert [row["line"] for row in rows] == list(range(1, 10))
    assert [row["ok"] for row in rows] == [i not in FAILURES for i in range(9)]
    assert [row["status_code"] for row in rows] == [
        FAILURES.get(i, {"status_code": 200})["status_code"] for i in range(9)
    ]
    assert list(rows[0]) == [
        "custom_id", "line", "ok", "status_code", "error_code", "error_message",
        "text", "refusal", "finish_reason", "tool_calls", "parsed", "embedding", "embeddings", "flagged",
        "categories", "images", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens",
        "round", "batch_id", "request", "body",
    ]  # fmt: skip

    results = by_id(results_of(chat.output) + results_of(chat.error))
    for raw_row, row in zip(target.read_bytes().splitlines(), rows, strict=True):
        result = results[row["custom_id"]]
        assert bytes(result.body) in raw_row  # the body is copied verbatim, not re-encoded
        assert (row["error_code"], row["error_message"]) == (result.error_code, result.error_message)
    assert summary == summarize(output_file=chat.output, error_file=chat.error, input_file=chat.input)


def test_join_marks_expired_and_missing_rows(expired: Landed, tmp_path: Path) -> None:
    edited_input = write_jsonl(
        tmp_path / "input.jsonl", [*raw_lines(expired.input), request_line("lost", CHAT)]
    )
    target = tmp_path / "joined.jsonl"
    summary = write_joined(
        input_file=edited_input, destination=target, output_file=expired.output, error_file=expired.error
    )
    rows = joined_rows(target)
    assert [(row["custom_id"], row["ok"], row["error_code"]) for row in rows] == [
        ("exp-0", True, None),
        ("exp-1", True, None),
        *[(f"exp-{i}", False, "batch_expired") for i in range(2, 6)],
        ("lost", False, "missing"),
    ]
    assert (rows[-1]["body"], rows[-1]["status_code"], rows[-1]["line"]) == (None, None, 7)
    assert summary.missing == IdSample(1, ("lost",))
    assert (summary.requests, summary.expired, summary.succeeded) == (7, 4, 2)


def test_join_without_an_output_file(chat: Landed, tmp_path: Path) -> None:
    """OpenAI leaves ``output_file_id`` null when nothing succeeded; the error file alone still joins."""
    target = tmp_path / "joined.jsonl"
    summary = write_joined(input_file=chat.input, destination=target, error_file=chat.error)
    rows = joined_rows(target)
    assert [row["error_code"] for row in rows] == [
        {1: "rate_limit_exceeded", 4: "server_error", 7: "bad_prompt"}.get(i, "missing") for i in range(9)
    ]
    assert summary.missing is not None
    assert summary.missing.total == 6


def test_a_reply_that_misses_its_schema_is_a_counted_failure_with_its_reason(
    client: OpenAI, tmp_path: Path
) -> None:
    """The emulator answers each ``json_schema`` request with a valid instance, except where a directive
    makes it reply text that does not parse or does not match: those rows fail as ``invalid_output``,
    and the summary moves them from the successes to the failures (keeping their billed usage)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "count", "schema": schema}}
    directives = {1: {"output": "invalid_json"}, 2: {"output": "schema_mismatch"}}
    requests = [request_line(f"s-{i}", CHAT, directives.get(i)) for i in range(4)]
    for request in requests:
        request["body"]["response_format"] = response_format
    landed = run_batch(client, tmp_path / "batch", requests)
    assert landed.batch.request_counts.completed == 4, "the API counts every reply a success"

    target = tmp_path / "joined.jsonl"
    summary = write_joined(input_file=landed.input, destination=target, output_file=landed.output)

    rows = joined_rows(target)
    assert [row["ok"] for row in rows] == [True, False, False, True]
    assert [row["error_code"] for row in rows] == [None, "invalid_output", "invalid_output", None]
    assert all(isinstance(rows[i]["parsed"]["n"], int) for i in (0, 3))
    assert (summary.succeeded, summary.errors_by_code, summary.other_errors) == (
        2,
        {"invalid_output": 2},
        {"invalid_output": 2},
    )
    assert summary.failed_ids.ids == ("s-1", "s-2")
    assert summary.usage.total_tokens == landed.batch.usage.total_tokens


def test_duplicates_are_reported_and_a_success_wins(chat: Landed, tmp_path: Path) -> None:
    successes, failures = raw_lines(chat.output), raw_lines(chat.error)
    fake_failure = {**failures[0], "custom_id": "req-0"}  # seen before req-0's real success line
    output = write_jsonl(tmp_path / "output.jsonl", [fake_failure, *successes])
    req_1 = next(line for line in failures if line["custom_id"] == "req-1")
    error = write_jsonl(tmp_path / "error.jsonl", [*failures, req_1])

    target = tmp_path / "joined.jsonl"
    summary = write_joined(input_file=chat.input, destination=target, output_file=output, error_file=error)
    assert summary.duplicates == IdSample(2, ("req-0", "req-1"))
    assert summary.lines == 11  # every line counts; the duplicates list says which ids repeat
    rows = joined_rows(target)
    assert len(rows) == 9
    assert (rows[0]["custom_id"], rows[0]["ok"], rows[0]["status_code"]) == ("req-0", True, 200)
    assert (rows[1]["custom_id"], rows[1]["ok"], rows[1]["status_code"]) == ("req-1", False, 429)


def test_malformed_lines_are_reported_without_aborting(chat: Landed, tmp_path: Path) -> None:
    assert chat.output is not None
    good = chat.output.read_bytes().splitlines()
    broken = [
        good[0],
        b"{not json",
        b"",
        good[1],
        b'{"response": null}',
        b'{"custom_id": 7}',
        b"  ",
        *good[2:],
    ]
    output = tmp_path / "output.jsonl"
    output.write_bytes(b"\n".join(broken))  # no final newline either

    parsed = list(iter_results(output))
    malformed = [item for item in parsed if isinstance(item, MalformedLine)]
    assert [(m.file, m.line) for m in malformed] == [(str(output), 2), (str(output), 5), (str(output), 6)]
    assert "custom_id" in malformed[1].reason
    assert [item.line for item in parsed if isinstance(item, BatchResult)] == [
        1,
        4,
        *range(8, 8 + len(good) - 2),
    ]

    requests = raw_lines(chat.input)
    input_lines = (
        [json.dumps(r).encode() for r in requests[:3]]
        + [b"[1, 2]"]
        + [json.dumps(r).encode() for r in requests[3:]]
    )
    bad_input = tmp_path / "input.jsonl"
    bad_input.write_bytes(b"\n".join(input_lines) + b"\n")
    target = tmp_path / "joined.jsonl"
    summary = write_joined(
        input_file=bad_input, destination=target, output_file=output, error_file=chat.error
    )
    assert (summary.succeeded, summary.lines, summary.requests) == (6, 9, 9)
    assert summary.malformed_total == 4
    assert [(m.file, m.line) for m in summary.malformed] == [
        ("output", 2),
        ("output", 5),
        ("output", 6),
        ("input", 4),
    ]
    rows = joined_rows(target)
    assert len(rows) == 10
    assert {key: value for key, value in rows[3].items() if value is not None} == {
        "line": 4,
        "ok": False,
        "error_code": "malformed_input",
        "error_message": "This input line has no readable custom_id.",
        "round": 1,
    }
    assert [row["custom_id"] for row in rows if row["custom_id"]] == chat.ids


# Sources and destinations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_object_storage_sources_and_destination(
    chat: Landed, tmp_path: Path, scheme: str, memory_store: str
) -> None:
    reference = tmp_path / "reference.jsonl"
    expected = write_joined(
        input_file=chat.input, destination=reference, output_file=chat.output, error_file=chat.error
    )
    root = ObjectStoragePath(
        f"file://{tmp_path}/store" if scheme == "file" else f"{memory_store}/{tmp_path.name}"
    )
    paths = {}
    for name, local in (("input", chat.input), ("output", chat.output), ("error", chat.error)):
        assert local is not None
        paths[name] = root / f"{name}.jsonl"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_bytes(local.read_bytes())
    destination = root / "out" / "joined.jsonl"
    destination.parent.mkdir(parents=True, exist_ok=True)

    summary = write_joined(
        input_file=paths["input"],
        destination=destination,
        output_file=paths["output"],
        error_file=paths["error"],
    )
    assert summary == expected
    assert destination.read_bytes() == reference.read_bytes()
    assert (
        summarize(output_file=paths["output"], error_file=paths["error"], input_file=paths["input"])
        == expected
    )
    assert [r.custom_id for r in iter_results(paths["error"]) if isinstance(r, BatchResult)] == [
        r.custom_id for r in results_of(chat.error)
    ]


class OneWay(io.RawIOBase):
    """A stream that cannot seek, like an HTTP body: the join must spool it to disk."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


def test_file_object_sources(chat: Landed, tmp_path: Path) -> None:
    assert chat.output is not None
    assert chat.error is not None
    reference = tmp_path / "reference.jsonl"
    expected = write_joined(
        input_file=chat.input, destination=reference, output_file=chat.output, error_file=chat.error
    )
    prefixed = tmp_path / "prefixed.jsonl"
    prefixed.write_bytes(b"a header the caller has already read\n" + chat.output.read_bytes())
    target = tmp_path / "joined.jsonl"
    with prefixed.open("rb") as output, io.BufferedReader(OneWay(chat.error.read_bytes())) as error:
        output.readline()  # a file object is read from where the caller left it
        assert not error.seekable()
        summary = write_joined(
            input_file=io.BytesIO(chat.input.read_bytes()),
            destination=target,
            output_file=output,
            error_file=error,
        )
    assert summary == expected
    assert target.read_bytes() == reference.read_bytes()
